//! The broker's own producer → consumer latency, with nothing of SensorFlow in the path: one
//! librdkafka producer (`linger.ms` 1, idempotent, acks=all) sends its send time as the value,
//! paced at RATE records/s over every partition of TOPIC, and one `read_committed` consumer
//! assigned to all of them (`fetch.min.bytes` 1, `fetch.wait.max.ms` 100, as the processors'
//! `latency` profile) records arrival − send time, ms.
//!
//! Run it beside a latency run of `sensorflow-bench broker` to see how much of that run's
//! latency is the broker's (docs/benchmarks.md, "Latency: what the runs measure"):
//!
//! ```text
//! cargo run --release -p sensorflow-tools --example latency_probe -- \
//!     BOOTSTRAP TOPIC PARTITIONS RATE SECONDS [consumer.property=value ...]
//! ```
//!
//! TOPIC must exist with PARTITIONS partitions. Prints `n`, p50, p99 and max, ms.

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        a.len() >= 6,
        "usage: latency_probe BOOTSTRAP TOPIC PARTITIONS RATE SECONDS [consumer.property=value ...]"
    );
    let (bootstrap, topic) = (a[1].clone(), a[2].clone());
    let partitions: i32 = a[3].parse().context("PARTITIONS")?;
    let rate: f64 = a[4].parse().context("RATE")?;
    let seconds: u64 = a[5].parse().context("SECONDS")?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "1")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &bootstrap)
        .set("group.id", "latency-probe")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.min.bytes", "1")
        .set("fetch.wait.max.ms", "100");
    for kv in &a[6..] {
        let (k, v) = kv.split_once('=').context("expected property=value")?;
        cc.set(k, v);
    }
    let consumer: BaseConsumer = cc.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut ms = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50))
                    && let Some(sent) = m
                        .payload()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|v| v.parse::<i64>().ok())
                {
                    ms.push(sensorflow_runtime::now_ms() - sent);
                }
            }
            ms
        })
    };
    // The consumer's assignment settles before the first record.
    std::thread::sleep(Duration::from_secs(2));
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        if let Some(w) = Duration::from_secs_f64(n as f64 / rate).checked_sub(start.elapsed()) {
            std::thread::sleep(w);
        }
        let (value, key) = (
            sensorflow_runtime::now_ms().to_string(),
            format!("client-{:05}", n % 1000),
        );
        if producer
            .send(BaseRecord::to(&topic).key(&key).payload(&value))
            .is_err()
        {
            producer.poll(Duration::from_millis(10));
            continue;
        }
        producer.poll(Duration::ZERO);
        n += 1;
    }
    producer.flush(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let mut ms = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))?;
    anyhow::ensure!(!ms.is_empty(), "no record arrived");
    ms.sort_unstable();
    let q = |f: f64| ms[((ms.len() as f64 * f) as usize).min(ms.len() - 1)];
    println!(
        "{partitions} partitions, {rate} records/s: n {} of {n} sent, p50 {} ms, p99 {} ms, max {} ms",
        ms.len(),
        q(0.5),
        q(0.99),
        ms[ms.len() - 1]
    );
    Ok(())
}
