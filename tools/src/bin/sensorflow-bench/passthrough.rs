//! The pass-through: the limit a processor is compared with (consume, 1 or 3 outputs per
//! input, no window math, commits like the processors).

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sensorflow_kafka::config::KafkaArgs;
use sensorflow_runtime::metrics::{Metrics, TopicLabel};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts failed deliveries of the pass-through's producer.
#[derive(Default)]
pub(crate) struct Deliveries {
    pub(crate) failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if r.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The pass-through loop (see `Cmd::Passthrough`); runs until killed.
pub(crate) fn passthrough(
    kafka: &KafkaArgs,
    group: &str,
    routes: &[String],
    range: bool,
    commit_interval: Duration,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let routes: Vec<(String, Vec<String>)> = routes
        .iter()
        .map(|r| {
            let (i, o) = r
                .split_once('=')
                .with_context(|| format!("route {r:?}: expected IN=OUT,OUT"))?;
            let outs = o.split(',').filter(|s| !s.is_empty()).map(str::to_owned);
            Ok((i.to_owned(), outs.collect()))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut ccfg = kafka.consumer_config(group, "bench-passthrough");
    if range {
        ccfg.set("partition.assignment.strategy", "range");
    }
    let consumer: BaseConsumer = ccfg.create()?;
    let inputs: Vec<&str> = routes.iter().map(|(i, _)| i.as_str()).collect();
    consumer.subscribe(&inputs)?;
    let producer: BaseProducer<Deliveries> = kafka
        .producer_config("bench-passthrough")
        .create_with_context(Deliveries::default())?;
    let mut next: Vec<HashMap<i32, i64>> = vec![HashMap::new(); routes.len()];
    let counters: Vec<_> = routes
        .iter()
        .map(|(t, _)| {
            metrics
                .records_in
                .get_or_create(&TopicLabel { topic: t.clone() })
                .clone()
        })
        .collect();
    let mut last_commit = Instant::now();
    // Delivery reports are served and the commit timer read every 1 024 records (or when idle),
    // not per record: a first version did both per record and spent 15 % of its time in
    // clock_gettime (perf), which made the limit lower than it is.
    let mut since_check = 0u32;
    loop {
        let msg = consumer.poll(Duration::from_millis(20));
        let idle = msg.is_none();
        match msg {
            Some(Ok(m)) => {
                let r = routes
                    .iter()
                    .position(|(t, _)| t == m.topic())
                    .context("a record of a topic not subscribed")?;
                counters[r].inc();
                let key = m.key().unwrap_or_default();
                let payload = m.payload().unwrap_or_default();
                for out in &routes[r].1 {
                    let mut rec = BaseRecord::<[u8], [u8]>::to(out).key(key).payload(payload);
                    if let Some(ts) = m.timestamp().to_millis() {
                        rec = rec.timestamp(ts);
                    }
                    while let Err((e, back)) = producer.send(rec) {
                        anyhow::ensure!(
                            matches!(
                                e,
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                            ),
                            "producing to {out}: {e}"
                        );
                        producer.poll(Duration::from_millis(5));
                        rec = back;
                    }
                }
                next[r].insert(m.partition(), m.offset() + 1);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consume error"),
            None => {}
        }
        since_check += 1;
        if !idle && since_check < 1024 {
            continue;
        }
        since_check = 0;
        producer.poll(Duration::ZERO);
        if last_commit.elapsed() >= commit_interval {
            producer.flush(Duration::from_secs(30))?;
            let failed = producer.context().failed.load(Ordering::Relaxed);
            anyhow::ensure!(failed == 0, "{failed} deliveries failed");
            let mut tpl = TopicPartitionList::new();
            for ((t, _), parts) in routes.iter().zip(&mut next) {
                for (p, o) in parts.drain() {
                    tpl.add_partition_offset(t, p, Offset::Offset(o))?;
                }
            }
            if tpl.count() > 0
                && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
            {
                tracing::warn!(error = %e, "commit refused");
            }
            last_commit = Instant::now();
        }
    }
}
