"""The real window-processor under aligned windows (tumbling, hopping), checked record by record
against the from-scratch definition in sfref.py (aligned_outcomes), with code that shares
nothing with it: kafka-python produces and reads, tests/lib/sfproto.py decodes by hand.

Three runs, each on its own topics and consumer group:
- hopping 2 min / 30 s, emit Final, grace 20 s, partition watermark, FA=Max, FI=Count, FD=Min;
- tumbling 1 min, emit PerRecord, grace 15 s, client watermark, FA=Sum, FI=Integral,
  FD=Derivative;
- global, emit PerRecord, grace 20 s, partition watermark, FA=Mean, FI=Min, FD=Integral.
Input: 2 partitions, 3 clients each with skewed clocks (-8 s, 0, +5 s), readings jittered out
of order within the grace, and readings far behind (late). Every SZ input record is accounted
for as a multiset: a late one by exactly one record on the late topic and no feature; an
accepted one by exactly the reference's emissions (FA, FI and FD each once per window, its
source_index, window bounds, event time, count, value bit for bit and bin), and nothing else.

Needs SENSORFLOW_TEST_BOOTSTRAP (a running broker) and SENSORFLOW_BIN_DIR (the built
binaries); ./run.sh test provides both.
"""

import collections
import os
import random
import subprocess
import sys
import time

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from sfref import aggregate, aligned_outcomes, bin_of

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sfproto import decode, decode_feature, encode_reading, field_double, field_int64  # noqa: E402
import sfkafka  # noqa: E402

BOOT = os.environ.get("SENSORFLOW_TEST_BOOTSTRAP", "")
BIN = os.environ.get("SENSORFLOW_BIN_DIR", "")
pytestmark = pytest.mark.skipif(not BOOT or not BIN, reason="run through ./run.sh test")

PARTITIONS = 2
CLIENTS_PER_PARTITION = 3
SKEW_MS = [-8_000, 0, 5_000]
READINGS = 60  # per client
KINDS = ["FA", "FI", "FD"]

RUNS = {
    "hopping-final": dict(kind="Hopping", size_ms=120_000, advance_ms=30_000, emit="Final", grace_ms=20_000,
                          scope="partition", aggregates=("Max", "Count", "Min"),
                          ranges=((0.0, 6.0), (0.0, 20.0), (0.0, 6.0))),
    "tumbling-per-record": dict(kind="Tumbling", size_ms=60_000, advance_ms=None, emit="PerRecord",
                                grace_ms=15_000, scope="client", aggregates=("Sum", "Integral", "Derivative"),
                                ranges=((0.0, 40.0), (0.0, 300.0), (-0.05, 0.05))),
    # The window size is unused by Global (a running total per client since its first reading).
    "global-per-record": dict(kind="Global", size_ms=60_000, advance_ms=None, emit="PerRecord", grace_ms=20_000,
                              scope="partition", aggregates=("Mean", "Min", "Integral"),
                              ranges=((0.0, 6.0), (0.0, 6.0), (0.0, 6000.0))),
}


def make_input(seed):
    """[(partition, client, t_ms, value)] in send order: clients tick every 5-25 s on clocks
    skewed by SKEW_MS, sends are delayed by up to 20 s (mostly inside the grace), and one reading in
    twelve is stamped 4-6 min behind its client's clock (late under any run's grace)."""
    rng = random.Random(seed)
    base = 1_750_000_000_000
    events = []
    for p in range(PARTITIONS):
        for c in range(CLIENTS_PER_PARTITION):
            client = f"p{p}-client-{c}"
            clock = base
            for _ in range(READINGS):
                clock += rng.choice([5_000, 10_000, 15_000, 20_000, 25_000])
                t = clock + SKEW_MS[c]
                if rng.random() < 1 / 12:
                    t -= rng.randint(240_000, 360_000)
                # Sent at its true clock time plus a delay of up to 20 s: out of order within grace.
                events.append((clock + rng.randint(0, 20_000), p, client, t, round(rng.uniform(0.1, 6.0), 3)))
    events.sort()
    return [(p, client, t, v) for _, p, client, t, v in events]


@pytest.fixture(scope="module", params=sorted(RUNS))
def run(request, tmp_path_factory):
    cfg = RUNS[request.param]
    prefix = f"aligned-{request.param}-{os.getpid()}-{int(time.time())}-"
    names = {k: prefix + k for k in ["SX", "SY", "SZ", "FA", "FI", "FD", "predictions", "dead-letter", "late"]}
    admin = KafkaAdminClient(bootstrap_servers=BOOT)
    # retention.ms=-1: historic event times (2025) would fall to a stock 7-day retention.
    admin.create_topics([NewTopic(n, PARTITIONS, 1, topic_configs={"retention.ms": "-1"}) for n in names.values()])
    admin.close()

    # One request in flight: the partition's arrival order is the send order (the reference
    # reads it back from the SZ topic anyway).
    producer = KafkaProducer(bootstrap_servers=BOOT, acks="all", max_in_flight_requests_per_connection=1)
    for p, client, t, v in make_input(sorted(RUNS).index(request.param) + 7):
        producer.send(names["SZ"], key=client.encode(), value=encode_reading(t, v, 3), partition=p, timestamp_ms=t)
    producer.flush()
    producer.close()

    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=BOOT, SF_METRICS_ADDR="127.0.0.1:0", RUST_LOG="info",
               SF_TOPIC_SX=names["SX"], SF_TOPIC_SY=names["SY"], SF_TOPIC_SZ=names["SZ"],
               SF_TOPIC_FA=names["FA"], SF_TOPIC_FI=names["FI"], SF_TOPIC_FD=names["FD"],
               SF_TOPIC_PREDICTIONS=names["predictions"], SF_TOPIC_DLQ=names["dead-letter"],
               SF_TOPIC_LATE=names["late"], SF_GROUP_ID=prefix + "window-processor", SF_COMMIT_INTERVAL_MS="500",
               SF_WINDOW_KIND=cfg["kind"], SF_WINDOW_SIZE_MS=str(cfg["size_ms"]), SF_WINDOW_EMIT=cfg["emit"],
               SF_WINDOW_TIME="EventTime", SF_GRACE_MS=str(cfg["grace_ms"]), SF_WATERMARK_SCOPE=cfg["scope"],
               SF_FA_AGGREGATE=cfg["aggregates"][0], SF_FI_AGGREGATE=cfg["aggregates"][1],
               SF_FD_AGGREGATE=cfg["aggregates"][2])
    for kind, (lo, hi) in zip(KINDS, cfg["ranges"]):
        env[f"SF_{kind}_RANGE"] = f"{lo},{hi}"
    if cfg["advance_ms"]:
        env["SF_WINDOW_ADVANCE_MS"] = str(cfg["advance_ms"])
    logs = tmp_path_factory.mktemp("logs")
    with open(logs / "window-processor.log", "wb") as log:
        proc = subprocess.Popen([os.path.join(BIN, "window-processor")], stderr=log, stdout=subprocess.DEVNULL,
                                env=env)
    try:
        # The reference from the SZ topic as the broker holds it (arrival order per partition).
        sz = read_all(names["SZ"])
        records = [(r.partition, r.offset, r.key.decode(), field_int64(f, 1), field_double(f, 2))
                   for r, f in ((r, decode(r.value)) for r in sorted(sz, key=lambda r: (r.partition, r.offset)))]
        want = aligned_outcomes(records, cfg["kind"], cfg["size_ms"], cfg["advance_ms"], cfg["emit"],
                                cfg["grace_ms"], cfg["scope"])
        # Done once the processor has committed every SZ offset (it commits only what it has
        # flushed): the outputs are then complete, and the tests compare them as they are.
        group, ends = prefix + "window-processor", {(r.partition): r.offset + 1 for r in sz}
        deadline = time.time() + 120
        while committed(group, names["SZ"]) != ends:
            assert time.time() < deadline, f"window-processor did not commit its input in 120 s; log in {logs}"
            assert proc.poll() is None, f"the window-processor exited; log in {logs}"
            time.sleep(0.5)
        yield cfg, names, records, want
    finally:
        if proc.poll() is None:
            proc.kill()


def consumer():
    return sfkafka.consumer(BOOT)


def committed(group, topic):
    """{partition: committed offset} of consumer group `group` on `topic`."""
    admin = KafkaAdminClient(bootstrap_servers=BOOT)
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {tp.partition: o.offset for tp, o in offsets.items() if tp.topic == topic}


def read_all(topic, timeout_s=60):
    return sfkafka.read_all(BOOT, topic, PARTITIONS, timeout_s)


def test_input_exercises_the_definition(run):
    """The input is not trivial: late readings, out-of-order accepted ones, windows emitted."""
    cfg, _, records, want = run
    late = [k for k, o in want.items() if o == "late"]
    accepted = [k for k, o in want.items() if o != "late"]
    assert len(late) >= 10 and len(accepted) >= 250, (len(late), len(accepted))
    newest, out_of_order = {}, 0
    for p, off, client, t, _ in records:
        if want[(p, off)] != "late":
            out_of_order += t < newest.get(client, t)
            newest[client] = max(newest.get(client, t), t)
    assert out_of_order >= 20, out_of_order
    if cfg["emit"] == "Final":
        # Windows closed by another client's reading (partition watermark).
        client_of = {(p, off): c for p, off, c, _, _ in records}
        assert any(e["client"] != client_of[k] for k, o in want.items() if o != "late" for e in o)


def test_every_input_is_accounted_for_bit_for_bit(run):
    cfg, names, records, want = run
    client_of = {(p, off): c for p, off, c, _, _ in records}
    got = collections.Counter()
    seen = {}
    for kind in KINDS:
        for rec in read_all(names[kind]):
            f = decode_feature(rec.value)
            assert rec.key.decode() == f["client_id"]
            key = (f["source_partition"], f["source_offset"], f["source_index"], kind)
            got[key] += 1
            seen[key] = f
    assert all(n == 1 for n in got.values()), [k for k, n in got.items() if n > 1][:5]
    expected_keys = {(p, off, i, kind) for (p, off), o in want.items() if o != "late"
                     for i in range(len(o)) for kind in KINDS}
    missing, extra = expected_keys - set(got), set(got) - expected_keys
    assert not missing and not extra, (f"{len(missing)} missing, e.g. {sorted(missing)[:3]}; "
                                       f"{len(extra)} unexpected, e.g. {sorted(extra)[:3]}")
    for (p, off), o in want.items():
        if o == "late":
            continue
        for i, em in enumerate(o):
            for kind, agg, (lo, hi) in zip(KINDS, cfg["aggregates"], cfg["ranges"]):
                f = seen[(p, off, i, kind)]
                value = aggregate(agg, em["window"])
                where = f"{kind}={agg} of input {p}/{off} ({client_of[(p, off)]}) emission {i}"
                assert (f["client_id"], f["window_start_ms"], f["window_end_ms"], f["event_time_ms"],
                        f["window_count"]) == (em["client"], em["start"], em["end"], em["time"], em["count"]), \
                    f"{where}: {f} != {em}"
                assert f["value"].hex() == value.hex(), f"{where}: {f['value']!r} != {value!r} over {em['window']}"
                assert f["bin"] == bin_of(value, lo, hi), f"{where}: bin {f['bin']}"


def test_late_readings_on_the_late_topic_once(run):
    _, names, records, want = run
    late = collections.Counter()
    for rec in read_all(names["late"]):
        h = dict(rec.headers)
        assert h["sensorflow.reason"] == b"late"
        assert h["sensorflow.source.topic"] == names["SZ"].encode()
        late[(int(h["sensorflow.source.partition"]), int(h["sensorflow.source.offset"]))] += 1
    assert late == collections.Counter(k for k, o in want.items() if o == "late")
    assert not read_all(names["dead-letter"])
