"""Independent reader check of the GCS sink's output.

Reads every record of the archived topics with kafka-python (not librdkafka) and decodes the
protobuf with a hand-written wire-format parser (tests/lib/sfproto.py, not prost), then reads
every Parquet object back from fake-gcs-server with pyarrow's GCS filesystem and runs a DuckDB
query over local copies.
Checks: the same (partition, offset) set per topic (no gaps, no duplicates), equal values, each
object's rows inside the offset range and hour directory its name states.

  check.py wait   --bootstrap B --topics T,... --group G [--timeout S]
  check.py verify --bootstrap B --topics T,... --endpoint URL --bucket NAME --prefix P
                  --kinds T=reading,... [--download DIR]
Exit 0 when every check passes; prints one line per check ("ok ..." / "FAIL ...").
"""

import argparse
import collections
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sfproto import (FEATURE_KIND, SENSOR, TRIGGER_KIND, decode, field_double,  # noqa: E402
                     field_int64, field_string, packed_varints)


def null0(v):
    return None if v == 0 else v


def expected_row(kind, key, value, headers=()):
    """The columns the sink must have written for one record (subset, by name)."""
    if kind == "raw":
        # Dead-letter, late: the original bytes and the reason headers, undecoded.
        h = {k: v.decode() for k, v in headers if v is not None}
        src_off = h.get("sensorflow.source.offset")
        return {"key": key, "value": value, "reason": h.get("sensorflow.reason"),
                "source_topic": h.get("sensorflow.source.topic"),
                "source_offset": None if src_off is None else int(src_off),
                "processor": h.get("sensorflow.processor")}
    f = decode(value)
    client = key.decode()
    if kind == "reading":
        return {"client_id": client, "event_time": field_int64(f, 1), "value": field_double(f, 2),
                "sensor": SENSOR[field_int64(f, 3)], "ingest_time": null0(field_int64(f, 4))}
    if kind == "feature":
        return {"client_id": client, "kind": FEATURE_KIND[field_int64(f, 2)],
                "event_time": field_int64(f, 3), "source_partition": field_int64(f, 4),
                "source_offset": field_int64(f, 5), "bin": field_int64(f, 6),
                "value": field_double(f, 7), "window_count": field_int64(f, 8)}
    if kind == "prediction":
        vec = packed_varints(f.get(3, []))
        row = {"client_id": client, "event_time": field_int64(f, 2),
               "probability": field_double(f, 4), "alert": bool(field_int64(f, 5)),
               "model_name": field_string(f, 6), "trigger": TRIGGER_KIND[field_int64(f, 8)],
               "source_topic": field_string(f, 9), "source_offset": field_int64(f, 11),
               "threshold": field_double(f, 15)}
        for name, v in zip(["f_sx", "f_sy", "f_fa_bin", "f_fi_bin", "f_fd_bin"], vec):
            row[name] = v
        return row
    raise ValueError(f"unknown kind {kind}")


# --- Kafka side ------------------------------------------------------------------------------


def kafka_consumer(bootstrap):
    from kafka import KafkaConsumer
    return KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                         auto_offset_reset="earliest", consumer_timeout_ms=5000)


def end_offsets(bootstrap, topics):
    from kafka import TopicPartition
    c = kafka_consumer(bootstrap)
    tps = [TopicPartition(t, p) for t in topics for p in sorted(c.partitions_for_topic(t) or [])]
    ends = c.end_offsets(tps)
    c.close()
    return ends


def committed(bootstrap, group, tps):
    from kafka import KafkaAdminClient
    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    offs = a.list_group_offsets({group: None}).get(group, {})
    a.close()
    return {tp: (offs[tp].offset if tp in offs else 0) for tp in tps}


def read_topic(bootstrap, topic):
    from kafka import TopicPartition
    c = kafka_consumer(bootstrap)
    parts = sorted(c.partitions_for_topic(topic) or [])
    tps = [TopicPartition(topic, p) for p in parts]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    ends = c.end_offsets(tps)
    out = {}
    deadline = time.time() + 300
    while time.time() < deadline and any(c.position(tp) < ends[tp] for tp in tps):
        for tp, msgs in c.poll(timeout_ms=1000, max_records=5000).items():
            for m in msgs:
                out[(m.partition, m.offset)] = (m.key, m.value, m.timestamp, m.headers or ())
    c.close()
    return out


def cmd_wait(a):
    topics = a.topics.split(",")
    deadline = time.time() + a.timeout
    stable_since, last = None, None
    while time.time() < deadline:
        ends = end_offsets(a.bootstrap, topics)
        com = committed(a.bootstrap, a.group, list(ends))
        behind = sum(max(0, ends[tp] - com[tp]) for tp in ends)
        total = sum(ends.values())
        if behind == 0 and total == last:
            stable_since = stable_since or time.time()
            if time.time() - stable_since >= a.stable:
                print(f"ok sink group {a.group} committed all {total} records of {topics}")
                return 0
        else:
            stable_since = None
        last = total
        print(f"   waiting: {behind} of {total} records not committed by {a.group}", flush=True)
        time.sleep(2)
    print(f"FAIL sink group {a.group} did not catch up within {a.timeout} s")
    return 1


# --- object side -----------------------------------------------------------------------------


def parse_name(name):
    stem = name.rsplit("/", 1)[-1][: -len(".parquet")]
    rest, last = stem.rsplit("-", 1)
    rest, first = rest.rsplit("-", 1)
    topic, part = rest.rsplit("-", 1)
    return topic, int(part), int(first), int(last)


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def ms(dt):
    """Exact Unix milliseconds of an aware datetime (no float rounding)."""
    return None if dt is None else (dt - EPOCH) // datetime.timedelta(milliseconds=1)


def hour_dir(ms):
    d = datetime.datetime.fromtimestamp((ms or 0) / 1000, tz=datetime.timezone.utc)
    return d.strftime("date=%Y-%m-%d/hour=%H")


def cmd_verify(a):
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    failures = []

    def check(ok, msg):
        print(("ok   " if ok else "FAIL ") + msg, flush=True)
        if not ok:
            failures.append(msg)

    host = a.endpoint.split("://", 1)[-1]
    fs = pafs.GcsFileSystem(anonymous=True, endpoint_override=host, scheme="http")
    kinds = dict(kv.split("=") for kv in a.kinds.split(","))
    base = f"{a.bucket}/{a.prefix}".rstrip("/")
    for topic in a.topics.split(","):
        kind = kinds.get(topic, "raw")
        produced = read_topic(a.bootstrap, topic)
        sel = pafs.FileSelector(f"{base}/topic={topic}", recursive=True, allow_not_found=True)
        files = [i.path for i in fs.get_file_info(sel)
                 if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
        stray = [i.path for i in fs.get_file_info(sel)
                 if i.type == pafs.FileType.File and not i.path.endswith(".parquet")]
        check(not stray, f"{topic}: no partial or temporary objects ({len(stray)})")
        seen = collections.Counter()
        rows = {}
        bad_place = 0
        for path in files:
            t, part, first, last = parse_name(path)
            table = pq.read_table(path, filesystem=fs)
            d = table.to_pydict()
            for i in range(table.num_rows):
                p, o = d["kafka_partition"][i], d["kafka_offset"][i]
                ts = d["kafka_timestamp"][i]
                ts_ms = ms(ts)
                if t != topic or p != part or not first <= o <= last or hour_dir(ts_ms) not in path:
                    bad_place += 1
                seen[(p, o)] += 1
                rows[(p, o)] = {k: d[k][i] for k in d}
        check(bad_place == 0, f"{topic}: every row sits in the object its name and hour directory state ({bad_place} misplaced)")
        dups = sum(1 for v in seen.values() if v > 1)
        check(dups == 0, f"{topic}: no record stored twice ({dups} duplicated) in {len(files)} objects")
        missing = sorted(set(produced) - set(seen))
        extra = sorted(set(seen) - set(produced))
        check(not missing and not extra,
              f"{topic}: {len(seen)} rows == {len(produced)} records, no gaps per partition "
              f"(missing {missing[:5]}{'…' if len(missing) > 5 else ''}, extra {extra[:5]})")
        mismatched = []
        for po, (key, value, ts, headers) in produced.items():
            r = rows.get(po)
            if r is None:
                continue
            got_ts = r["kafka_timestamp"]
            if got_ts is None or ms(got_ts) != ts:
                mismatched.append((po, "kafka_timestamp", ts, got_ts))
                continue
            for col, want in expected_row(kind, key, value, headers).items():
                got = r[col]
                if isinstance(got, datetime.datetime):
                    got = ms(got)
                if isinstance(want, float):
                    same = got is not None and (got == want or (got != got and want != want))
                else:
                    same = got == want
                if not same:
                    mismatched.append((po, col, want, got))
                    break
        check(not mismatched, f"{topic} ({kind}): every value equals the produced record ({len(mismatched)} differ: {mismatched[:3]})")
        if a.download:
            for path in files:
                local = os.path.join(a.download, path[len(a.bucket) + 1:])
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with fs.open_input_stream(path) as src, open(local, "wb") as dst:
                    dst.write(src.read())
    if a.download:
        import duckdb
        root = os.path.join(a.download, a.prefix)
        pred = [t for t, k in kinds.items() if k == "prediction"]
        if pred:
            q = f"""
                SELECT date, hour, count(*) AS predictions, round(avg(probability), 4) AS mean_p,
                       sum(alert::INT) AS alerts
                FROM read_parquet('{root}/topic={pred[0]}/*/*/*.parquet', hive_partitioning = true)
                GROUP BY date, hour ORDER BY date, hour"""
            res = duckdb.sql(q).fetchall()
            total = sum(r[2] for r in res)
            n = len(read_topic(a.bootstrap, pred[0]))
            print(duckdb.sql(q))
            check(total == n, f"DuckDB: {total} predictions over {len(res)} hours == {n} records")
    print(f"check: {len(failures)} failed")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["wait", "verify"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topics", required=True)
    ap.add_argument("--group")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--stable", type=float, default=6)
    ap.add_argument("--endpoint")
    ap.add_argument("--bucket")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--kinds", default="")
    ap.add_argument("--download")
    a = ap.parse_args()
    sys.exit(cmd_wait(a) if a.cmd == "wait" else cmd_verify(a))


if __name__ == "__main__":
    main()
