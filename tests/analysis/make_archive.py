"""Writes a small archive in the gcs-sink's exact layout and schemas (processors/sink/src/rows.rs,
layout.rs) with pyarrow, for the job's quick test without a broker: SZ readings (a random walk per
client), FA/FI/FD features over a sliding 10-minute window, predictions of the default logistic
model, a few dead letters and late readings.

    python make_archive.py DIR [--clients 6] [--minutes 720] [--seed 7]

Prints a JSON line with the rows written per topic.
"""

import argparse
import json
import math
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

TS = pa.timestamp("ms", tz="UTC")


def f(name, t, nullable=False):
    return pa.field(name, t, nullable=nullable)


HEAD = [f("kafka_partition", pa.int32()), f("kafka_offset", pa.int64()), f("kafka_timestamp", TS, True)]
SCHEMAS = {
    "reading": pa.schema(HEAD + [f("client_id", pa.string()), f("event_time", TS), f("value", pa.float64()), f("sensor", pa.string()), f("ingest_time", TS, True)]),
    "feature": pa.schema(
        HEAD
        + [
            f("client_id", pa.string()),
            f("kind", pa.string()),
            f("event_time", TS),
            f("source_partition", pa.int32()),
            f("source_offset", pa.int64()),
            f("bin", pa.int32()),
            f("value", pa.float64()),
            f("window_count", pa.int64()),
            f("ingest_time", TS, True),
            f("window_start_ms", pa.int64(), True),
            f("window_end_ms", pa.int64(), True),
            f("source_index", pa.int32()),
        ]
    ),
    "prediction": pa.schema(
        HEAD
        + [f("client_id", pa.string()), f("event_time", TS)]
        + [f(n, pa.int64()) for n in ("f_sx", "f_sy", "f_fa_bin", "f_fi_bin", "f_fd_bin")]
        + [
            f("probability", pa.float64()),
            f("alert", pa.bool_()),
            f("model_name", pa.string()),
            f("model_version", pa.string()),
            f("trigger", pa.string()),
            f("source_topic", pa.string()),
            f("source_partition", pa.int32()),
            f("source_offset", pa.int64()),
            f("features_source_partition", pa.int32()),
            f("features_source_offset", pa.int64()),
            f("ingest_time", TS, True),
            f("threshold", pa.float64()),
            f("predicted_at", TS, True),
            f("features_source_index", pa.int32()),
        ]
    ),
    "raw": pa.schema(
        HEAD
        + [
            f("key", pa.binary(), True),
            f("value", pa.binary(), True),
            f("reason", pa.string(), True),
            f("error", pa.string(), True),
            f("source_topic", pa.string(), True),
            f("source_partition", pa.int32(), True),
            f("source_offset", pa.int64(), True),
            f("source_timestamp", TS, True),
            f("processor", pa.string(), True),
        ]
    ),
}
W = (0.01, 0.01, 1.0, 0.3, 0.2)
B = -6.0


def binned(x, lo, hi):
    return max(0, min(9, math.floor((x - lo) / (hi - lo) * 10)))


class Writer:
    """Rows per (topic, partition, hour) → one file each, named like the sink's."""

    def __init__(self, root):
        self.root = root
        self.rows = {}
        self.offsets = {}

    def add(self, topic, kind, partition, ts_ms, row):
        off = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = off + 1
        row = {"kafka_partition": partition, "kafka_offset": off, "kafka_timestamp": ts_ms, **row}
        hour = ts_ms // 3_600_000
        self.rows.setdefault((topic, kind, partition, hour), []).append(row)
        return off

    def flush(self):
        counts = {}
        for (topic, kind, partition, hour), rows in self.rows.items():
            import datetime

            d = datetime.datetime.fromtimestamp(hour * 3600, datetime.timezone.utc)
            dirname = os.path.join(self.root, f"topic={topic}", f"date={d:%Y-%m-%d}", f"hour={d:%H}")
            os.makedirs(dirname, exist_ok=True)
            first, last = rows[0]["kafka_offset"], rows[-1]["kafka_offset"]
            name = f"{topic}-{partition:05d}-{first:020d}-{last:020d}.parquet"
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[kind]), os.path.join(dirname, name), compression="zstd")
            counts[topic] = counts.get(topic, 0) + len(rows)
        return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--minutes", type=int, default=720)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    w = Writer(a.dir)
    base = 1_764_288_000_000  # 2025-11-28T00:00:00Z
    for c in range(a.clients):
        client = f"2007-01-{c + 1:02d}"
        part = c % 3
        v = 1.0
        window = []
        for m in range(a.minutes):
            t = base + m * 60_000
            ingest = t + 5
            v = max(0.05, min(8.0, v + rnd.gauss(0, 0.35) + (0.04 if 1080 <= m % 1440 < 1320 else -0.01)))
            sz_off = w.add("SZ", "reading", part, t, {"client_id": client, "event_time": t, "value": v, "sensor": "SZ", "ingest_time": ingest})
            window = [(tt, vv) for tt, vv in window if tt > t - 600_000] + [(t, v)]
            fa = sum(vv for _, vv in window) / len(window)
            fi = sum((window[i][1] + window[i + 1][1]) / 2 * (window[i + 1][0] - window[i][0]) / 1000 for i in range(len(window) - 1))
            fd = 0.0 if len(window) == 1 else (window[-1][1] - window[0][1]) / ((window[-1][0] - window[0][0]) / 1000)
            bins = {}
            for kind, val, lo, hi in (("FA", fa, 0, 5), ("FI", fi, 0, 3000), ("FD", fd, -0.01, 0.01)):
                bins[kind] = binned(val, lo, hi)
                last_off = w.add(
                    kind,
                    "feature",
                    part,
                    t,
                    {
                        "client_id": client,
                        "kind": kind,
                        "event_time": t,
                        "source_partition": part,
                        "source_offset": sz_off,
                        "bin": bins[kind],
                        "value": val,
                        "window_count": len(window),
                        "ingest_time": ingest,
                        # The sliding window (t - 10 min, t] as [start, end).
                        "window_start_ms": t - 600_000 + 1,
                        "window_end_ms": t + 1,
                        "source_index": 0,
                    },
                )
            sx, sy = rnd.choice([0, 0, 0, 1, 2, 37]), rnd.choice([0, 0, 1, 2, 25])
            x = (sx, sy, bins["FA"], bins["FI"], bins["FD"])
            p = 1 / (1 + math.exp(-(sum(wi * xi for wi, xi in zip(W, x)) + B)))
            w.add(
                "predictions",
                "prediction",
                part,
                t,
                {
                    "client_id": client,
                    "event_time": t,
                    **dict(zip(("f_sx", "f_sy", "f_fa_bin", "f_fi_bin", "f_fd_bin"), x)),
                    "probability": p,
                    "alert": p >= 0.5,
                    "model_name": "logistic",
                    "model_version": "w=0.01,0.01,1,0.3,0.2,-6",
                    "trigger": "TRIGGER_FEATURES",
                    "source_topic": "FD",
                    "source_partition": part,
                    "source_offset": last_off,
                    "features_source_partition": part,
                    "features_source_offset": sz_off,
                    "ingest_time": ingest,
                    "threshold": 0.5,
                    "predicted_at": ingest + rnd.randint(3, 900),
                    "features_source_index": 0,
                },
            )
        for i in range(2):
            t = base + (a.minutes - 5 + i) * 60_000
            w.add("late", "raw", part, t, {"key": client.encode(), "value": b"\x08\x01", "reason": "late", "error": "before the watermark", "source_topic": "SZ", "source_partition": part, "source_offset": 0, "source_timestamp": t, "processor": "window-processor"})
    t = base + 60_000
    w.add("dead-letter", "raw", 0, t, {"key": None, "value": b"\xff", "reason": "missing-key", "error": "record has no key", "source_topic": "SZ", "source_partition": 0, "source_offset": 3, "source_timestamp": t, "processor": "window-processor"})
    w.add("dead-letter", "raw", 0, t, {"key": b"x", "value": b"\xff\xff", "reason": "decode", "error": "bad protobuf", "source_topic": "SX", "source_partition": 0, "source_offset": 4, "source_timestamp": t, "processor": "join-predict"})
    print(json.dumps(w.flush(), sort_keys=True))


if __name__ == "__main__":
    main()
