"""The real SensorFlow binaries, driven and checked by code that shares nothing with them.

- Kafka client: kafka-python (pure Python), not librdkafka.
- Protobuf: encoded and decoded by hand (tests/lib/sfproto.py) from the field numbers in
  processors/core/proto/sensorflow/v1/messages.proto, not with prost.
- Expected features: a from-scratch Python implementation of the window definition
  (sfref.py: mean, trapezoidal integral in value*s, derivative in value/s, uniform 10-bin binning).

Needs SENSORFLOW_TEST_BOOTSTRAP (a running broker) and SENSORFLOW_BIN_DIR (the built
binaries); ./run.sh test provides both.
"""

import math
import os
import random
import subprocess
import sys
import time

import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from sfref import RANGES, bin_of, expected_features, near

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sfproto import decode, encode_reading, field_double, packed_varints, signed  # noqa: E402
import sfkafka  # noqa: E402

BOOT = os.environ.get("SENSORFLOW_TEST_BOOTSTRAP", "")
BIN = os.environ.get("SENSORFLOW_BIN_DIR", "")
pytestmark = pytest.mark.skipif(not BOOT or not BIN, reason="run through ./run.sh test")

WEIGHTS = [0.01, 0.01, 1.0, 0.3, 0.2]
BIAS = -6.0
PARTITIONS = 3
CLIENTS = 5
READINGS = 40


# --- fixture: topics, input, the two processors -------------------------------------------
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    prefix = f"indep-{os.getpid()}-{int(time.time())}-"
    names = {k: prefix + k for k in ["SX", "SY", "SZ", "FA", "FI", "FD", "predictions", "dead-letter", "late"]}
    admin = KafkaAdminClient(bootstrap_servers=BOOT)
    # retention.ms=-1: the readings carry historic event times (record timestamps, 2025), which
    # a stock broker's 7-day retention would delete under the running test.
    admin.create_topics([NewTopic(n, PARTITIONS, 1, topic_configs={"retention.ms": "-1"}) for n in names.values()])
    admin.close()

    rng = random.Random(7)
    inputs = {}
    producer = KafkaProducer(bootstrap_servers=BOOT, acks="all")
    base = 1_750_000_000_000
    events = []
    for c in range(CLIENTS):
        t = base
        for _ in range(READINGS):
            t += rng.choice([30_000, 60_000, 60_000, 90_000, 180_000])
            events.append((t, f"client-{c}", rng.uniform(0.1, 6.0), rng.randint(0, 40), rng.randint(0, 40)))
    events.sort()
    for t, client, z, x, y in events:
        inputs.setdefault(client, []).append((t, z))
        key = client.encode()
        producer.send(names["SX"], key=key, value=encode_reading(t, float(x), 1), timestamp_ms=t)
        producer.send(names["SY"], key=key, value=encode_reading(t, float(y), 2), timestamp_ms=t)
        producer.send(names["SZ"], key=key, value=encode_reading(t, z, 3), timestamp_ms=t)
    producer.send(names["SZ"], key=b"client-0", value=b"\xff\xff\xff")  # undecodable
    producer.flush()
    producer.close()

    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=BOOT, SF_METRICS_ADDR="127.0.0.1:0", RUST_LOG="info",
               SF_TOPIC_SX=names["SX"], SF_TOPIC_SY=names["SY"], SF_TOPIC_SZ=names["SZ"],
               SF_TOPIC_FA=names["FA"], SF_TOPIC_FI=names["FI"], SF_TOPIC_FD=names["FD"],
               SF_TOPIC_PREDICTIONS=names["predictions"], SF_TOPIC_DLQ=names["dead-letter"],
               SF_TOPIC_LATE=names["late"])
    logs = tmp_path_factory.mktemp("logs")
    procs = []
    for binary in ["window-processor", "join-predict"]:
        with open(logs / f"{binary}.log", "wb") as log:
            procs.append(subprocess.Popen([os.path.join(BIN, binary)], stderr=log, stdout=subprocess.DEVNULL,
                                          env=dict(env, SF_GROUP_ID=prefix + binary)))
        time.sleep(0.5)
    sz_total = CLIENTS * READINGS
    try:
        deadline = time.time() + 180
        while count(names["FD"]) < sz_total or count(names["predictions"]) < sz_total - 3 * CLIENTS:
            assert time.time() < deadline, f"pipeline did not finish; logs in {logs}"
            assert all(p.poll() is None for p in procs), f"a processor died; logs in {logs}"
            time.sleep(0.5)
        yield names, inputs, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def consumer():
    return sfkafka.consumer(BOOT)


def count(topic):
    c = consumer()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    end = c.end_offsets(tps)
    begin = c.beginning_offsets(tps)
    c.close()
    return sum(end[tp] - begin[tp] for tp in tps)


def read_all(topic, timeout_s=60):
    return sfkafka.read_all(BOOT, topic, PARTITIONS, timeout_s)


# --- tests ------------------------------------------------------------------------------------
def test_features_equal_the_python_reference(pipeline):
    names, inputs, _ = pipeline
    want = {}
    for client, readings in inputs.items():
        for t, mean, integral, deriv in expected_features(readings):
            want[(client, t)] = {"FA": mean, "FI": integral, "FD": deriv}
    for kind in ["FA", "FI", "FD"]:
        got = {}
        for rec in read_all(names[kind]):
            f = decode(rec.value)
            client = f[1][0].decode()
            assert rec.key.decode() == client
            t = signed(f.get(3, [0])[0])
            got[(client, t)] = (field_double(f, 7), f.get(6, [0])[0])
        assert set(got) == set(want), f"{kind}: features for {len(got)} readings, expected {len(want)}"
        lo, hi = RANGES[kind]
        for key, (value, b) in got.items():
            assert near(value, want[key][kind]), f"{kind} {key}: {value} != {want[key][kind]}"
            # The bin of the expected value, or of the value as computed (they straddle an edge
            # only within floating-point rounding).
            assert b in (bin_of(want[key][kind], lo, hi), bin_of(value, lo, hi)), f"{kind} {key}: bin {b}"


def test_predictions_follow_the_logistic_model(pipeline):
    names, inputs, _ = pipeline
    preds = [decode(r.value) for r in read_all(names["predictions"])]
    assert preds
    by_trigger = {}
    for p in preds:
        vector = packed_varints(p[3])
        assert len(vector) == 5
        z = sum(w * x for w, x in zip(WEIGHTS, vector)) + BIAS
        prob = field_double(p, 4)
        assert near(prob, 1 / (1 + math.exp(-z))), f"{vector}: {prob}"
        alert = bool(p.get(5, [0])[0])
        assert alert == (prob >= 0.5)
        by_trigger[p.get(8, [0])[0]] = by_trigger.get(p.get(8, [0])[0], 0) + 1
    sz = CLIENTS * READINGS
    # TRIGGER_FEATURES = 3: one per SZ reading once the client's SX and SY are known. (SX/SY
    # triggered predictions depend on how far the join read SX ahead of the features.)
    assert by_trigger.get(3, 0) >= sz - 3 * CLIENTS, by_trigger


def test_dead_letter_carries_reason_and_source(pipeline):
    names, _, _ = pipeline
    dlq = read_all(names["dead-letter"])
    assert len(dlq) == 1
    headers = dict(dlq[0].headers)
    assert headers["sensorflow.reason"] == b"decode"
    assert headers["sensorflow.source.topic"] == names["SZ"].encode()
    assert dlq[0].value == b"\xff\xff\xff"


def test_sigterm_flushes_and_exits_zero(pipeline):
    _, _, procs = pipeline
    for p in procs:
        p.terminate()
    for p in procs:
        assert p.wait(timeout=30) == 0
