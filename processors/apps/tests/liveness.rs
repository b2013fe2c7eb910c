//! `/health` as a liveness probe, on the real consume loop and broker: it answers 200 while the
//! loop advances (also with no input: the flush tick counts), 503 while the loop is stuck inside
//! one call (a processor blocked on a record, standing in for a hung delivery, commit or
//! deadlock), and 200 again once the loop moves on.
//!
//! Run with `cargo test --release -p sensorflow-runtime --test liveness -- --ignored` against
//! the broker in `SENSORFLOW_TEST_BOOTSTRAP` (see `scripts/test.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use sensorflow_kafka::config::KafkaArgs;
use sensorflow_runtime::consumer::{LoopConsumer, LoopContext, TopicPartition};
use sensorflow_runtime::error::PipelineError;
use sensorflow_runtime::metrics::Metrics;
use sensorflow_runtime::output::Output;
use sensorflow_runtime::pipeline;
use sensorflow_runtime::processor::{LoopConfig, Processor};
use sensorflow_runtime::record::ConsumedRecord;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Consumes one topic; blocks its thread for `HANG` on a record whose value is `hang`.
struct Hanger {
    topic: String,
    seen: Arc<AtomicUsize>,
}

const HANG: Duration = Duration::from_secs(4);

impl Processor for Hanger {
    fn topics(&self) -> Vec<String> {
        vec![self.topic.clone()]
    }
    fn on_assigned(
        &mut self,
        _: &[(TopicPartition, Option<i64>)],
        _: &dyn Fn(),
    ) -> Result<(), PipelineError> {
        Ok(())
    }
    fn on_revoked(&mut self, _: &[TopicPartition]) {}
    fn process(
        &mut self,
        msg: &ConsumedRecord<'_>,
        _: &mut Vec<Output>,
    ) -> Result<(), PipelineError> {
        if msg.payload() == Some(b"hang") {
            std::thread::sleep(HANG);
        }
        self.seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn report(&self, _: &Metrics) {}
}

async fn health(addr: std::net::SocketAddr) -> u16 {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        buf[9..12].parse().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a broker: run ./run.sh test"]
async fn health_fails_while_the_loop_is_stuck_and_recovers() {
    let pre = prefix("liveness");
    let t = topics(&pre);
    create_topics(&t, 1).await;
    let metrics = Metrics::new();
    metrics.liveness.set_timeout(Duration::from_millis(1000));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(sensorflow_process::server::serve_on(
        listener,
        std::sync::Arc::new(metrics.clone()),
        stop.clone(),
    ));
    let kafka = KafkaArgs::plain(&bootstrap());
    let consumer: LoopConsumer = kafka
        .consumer_config(&format!("{pre}group"), "liveness-test")
        .create_with_context(LoopContext::new(metrics.clone()))
        .unwrap();
    let out = sensorflow_runtime::emitter::loop_producer(&kafka.producer_config("liveness-test"))
        .unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let mut proc = Hanger {
        topic: t.topic_sz.clone(),
        seen: seen.clone(),
    };
    let (m, s) = (metrics.clone(), stop.clone());
    let looped = tokio::spawn(async move {
        pipeline::run(&consumer, out, &mut proc, m, LoopConfig::default(), s).await
    });
    let p = producer();
    produce(&p, &t.topic_sz, Some("c"), b"fine", None).await;
    let until = |n: usize| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "the loop consumed nothing");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    until(1).await;
    // Idle but ticking: healthy for longer than the timeout.
    for _ in 0..15 {
        assert_eq!(health(addr).await, 200, "healthy while idle");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stuck on one record: unhealthy within the timeout (+ a tick), healthy again after it.
    produce(&p, &t.topic_sz, Some("c"), b"hang", None).await;
    let mut codes = Vec::new();
    let started = Instant::now();
    while started.elapsed() < HANG + Duration::from_secs(3) {
        codes.push((started.elapsed().as_millis(), health(addr).await));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until(2).await;
    let first_bad = codes.iter().position(|(_, c)| *c == 503);
    let last_bad = codes.iter().rposition(|(_, c)| *c == 503);
    assert!(
        first_bad.is_some(),
        "never unhealthy while stuck: {codes:?}"
    );
    assert_eq!(codes.last().unwrap().1, 200, "not healthy again: {codes:?}");
    let bad_ms = codes[last_bad.unwrap()].0 - codes[first_bad.unwrap()].0;
    eprintln!("stuck {HANG:?}: /health 503 for ~{bad_ms} ms of it (timeout 1 s): {codes:?}");
    assert!(
        bad_ms >= 1_500,
        "503 for only {bad_ms} ms of a {HANG:?} hang: {codes:?}"
    );
    stop.cancel();
    looped.await.unwrap().unwrap();
    server.await.unwrap().unwrap();
}
