"""Kafka reading helpers of the Python test suites (kafka-python; nothing of the project's own
clients): one `read_all` for every test that reads a topic back to its end offsets."""

import time

from kafka import KafkaConsumer, TopicPartition


def consumer(boot):
    return KafkaConsumer(bootstrap_servers=boot, enable_auto_commit=False, consumer_timeout_ms=3000)


def read_all(boot, topic, partitions, timeout_s=60):
    """Every record of `topic` (partitions 0..`partitions`-1) up to its end offsets when called;
    fails (never returns partial data) when they are not all read within `timeout_s` seconds."""
    c = consumer(boot)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    end = c.end_offsets(tps)
    out = []
    deadline = time.time() + timeout_s
    try:
        while any(c.position(tp) < end[tp] for tp in tps):
            if time.time() >= deadline:
                behind = {tp.partition: end[tp] - c.position(tp) for tp in tps if c.position(tp) < end[tp]}
                raise AssertionError(f"{topic}: not read to its end offsets in {timeout_s} s "
                                     f"({len(out)} records read; partitions behind: {behind})")
            for records in c.poll(timeout_ms=500).values():
                out.extend(records)
    finally:
        c.close()
    return out
