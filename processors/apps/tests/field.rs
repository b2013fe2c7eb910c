//! Field limits against a real Apache Kafka broker (started by `./run.sh test`): topics with a
//! stock managed cluster's timestamp bound, and one sensor whose clock is wrong.
//!
//! Every topic of the pipeline gets Kafka 4's default `message.timestamp.after.max.ms` of 1 h
//! (KIP-1030; set per topic, so the test holds whatever the broker's own default). On one
//! partition, a good client sends 120 SX, SY and SZ readings over the last 10 minutes, and a
//! second client whose clock runs 2 h ahead sends its own 120 of each, interleaved. The
//! sensors' producers stamp records with their wall clock (the skewed event times are in the
//! bodies), so the broker takes the inputs.
//!
//! Both processors must keep running; every good reading gets its features and its
//! prediction; every skewed reading is dead-lettered `future` (SZ by the window-processor, SX
//! and SY by join-predict) with a timestamp the dead-letter topic accepts; nothing is late.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use sensorflow_core::proto::{Feature, Prediction, Sensor};
use sensorflow_kafka::config::TopicArgs;
use sensorflow_runtime::dlq;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const READINGS: i64 = 120;
const SKEW_MS: i64 = 2 * 3_600_000;
const STOCK_AFTER_MAX_MS: &str = "3600000";

/// Sets `message.timestamp.after.max.ms` to Kafka 4's default on every topic of `t`.
async fn stock_timestamp_bound(names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = config().create().unwrap();
    let alters: Vec<AlterConfig<'_>> = names
        .iter()
        .map(|t| {
            AlterConfig::new(ResourceSpecifier::Topic(t))
                .set("message.timestamp.after.max.ms", STOCK_AFTER_MAX_MS)
        })
        .collect();
    for r in admin
        .alter_configs(&alters, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// Waits until both groups have no lag (their commits reached the ends), asserting on the way
/// that neither processor exited; `what` names the failure after `timeout`.
fn drained_with_both_running(
    w: &mut Proc,
    j: &mut Proc,
    t: &TopicArgs,
    (wg, jg): (&str, &str),
    timeout: Duration,
    what: &str,
) {
    let started = Instant::now();
    loop {
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "window-processor exited"
        );
        assert!(j.child.try_wait().unwrap().is_none(), "join-predict exited");
        if group_lag(wg, &[&t.topic_sz]) == 0 && group_lag(jg, &join_inputs(t)) == 0 {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "not drained within {timeout:?}: {what} (join's SX lag {})",
            group_lag(jg, &[&t.topic_sx])
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn a_skewed_sensor_on_stock_limits_is_dead_lettered_and_nothing_else_is_late() {
    let pre = prefix("field-skew");
    let t = topics(&pre);
    create_topics(&t, 1).await;
    let names = t.topics();
    stock_timestamp_bound(&names.all()).await;
    let (wg, jg) = (format!("{pre}window"), format!("{pre}join"));
    let mut w = spawn("window-processor", &t, &wg, &[], &[]);
    let mut j = spawn(
        "join-predict",
        &t,
        &jg,
        &[("SF_JOIN_IDLE_TIMEOUT_MS", "3000")],
        &[],
    );

    // 120 readings 5 s apart, ending a minute ago; the skewed client's are 2 h ahead.
    let now = sensorflow_runtime::now_ms();
    let t0 = now - 60_000 - READINGS * 5_000;
    let p = producer();
    for i in 0..READINGS {
        let at = t0 + i * 5_000;
        for (client, skew) in [("good", 0), ("skewed", SKEW_MS)] {
            for (topic, sensor, offset_ms, v) in [
                (&t.topic_sz, Sensor::Sz, 0, 1.0 + (i % 7) as f64 * 0.25),
                (&t.topic_sx, Sensor::Sx, 1_000, (i % 5) as f64),
                (&t.topic_sy, Sensor::Sy, 2_000, (i % 3) as f64),
            ] {
                let body = sensor_reading(sensor, at + offset_ms + skew, v);
                produce(&p, topic, Some(client), &body, None).await;
            }
        }
    }

    drained_with_both_running(
        &mut w,
        &mut j,
        &t,
        (&wg, &jg),
        Duration::from_secs(120),
        "the pipeline stopped",
    );
    assert!(w.terminate().success(), "window-processor stopped cleanly");
    assert!(j.terminate().success(), "join-predict stopped cleanly");

    // Features: exactly one triple per good SZ reading, none for the skewed client.
    let mut features: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for topic in [&t.topic_fa, &t.topic_fi, &t.topic_fd] {
        for m in read_all(topic) {
            let f = Feature::decode(m.payload().unwrap()).unwrap();
            *features
                .entry((f.client_id.clone(), f.source_offset))
                .or_default() += 1;
        }
    }
    assert_eq!(
        features.len(),
        READINGS as usize,
        "one feature triple per good SZ reading"
    );
    assert!(
        features.iter().all(|((c, _), n)| c == "good" && *n == 3),
        "features of the good client only, three each: {features:?}"
    );

    // Predictions: one per good reading (SX, SY and SZ triggers); none for the skewed client.
    // The first SX and SY of the stream may come before the first features: those two triggers
    // are dead-lettered `missing-*`, nothing else.
    let predictions: Vec<Prediction> = read_all(&t.topic_predictions)
        .iter()
        .map(|m| Prediction::decode(m.payload().unwrap()).unwrap())
        .collect();
    assert!(predictions.iter().all(|p| p.client_id == "good"));
    let mut per_source: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for p in &predictions {
        *per_source
            .entry((p.source_topic.clone(), p.source_offset))
            .or_default() += 1;
    }
    assert!(
        per_source.values().all(|n| *n == 1),
        "one prediction per trigger"
    );

    // Dead letters: the skewed client's 360 readings `future`, timestamped within the bound.
    let mut reasons: BTreeMap<(String, String), usize> = BTreeMap::new();
    let now = sensorflow_runtime::now_ms();
    for m in read_all(&t.topic_dlq) {
        let reason = header(&m, dlq::REASON).unwrap();
        let client = String::from_utf8_lossy(m.key().unwrap()).into_owned();
        let ts = m.timestamp().to_millis().unwrap();
        assert!(
            ts <= now + 3_600_000,
            "a dead letter the topic would refuse: {ts}"
        );
        *reasons.entry((client, reason)).or_default() += 1;
    }
    let skewed_future = reasons
        .get(&("skewed".to_owned(), "future".to_owned()))
        .copied()
        .unwrap_or(0);
    assert_eq!(
        skewed_future,
        3 * READINGS as usize,
        "dead letters: {reasons:?}"
    );
    let good_dead: usize = reasons
        .iter()
        .filter(|((c, _), _)| c == "good")
        .map(|(_, n)| *n)
        .sum();
    assert!(
        reasons
            .iter()
            .all(|((c, r), _)| c == "skewed" || r.starts_with("missing-")),
        "only the first triggers of the good client may miss a value: {reasons:?}"
    );
    assert!(
        good_dead <= 2,
        "dead letters of the good client: {reasons:?}"
    );
    assert_eq!(
        predictions.len() + good_dead,
        3 * READINGS as usize,
        "every good reading has one outcome"
    );
    assert_eq!(read_all(&t.topic_late).len(), 0, "late records");
}

/// Clients of the memory test, and its event-time seconds per client.
const MEM_CLIENTS: i64 = 40;
const MEM_STEPS: i64 = 1_500;
/// The join's budget of held records in the memory test.
const MEM_BUDGET: usize = 10_000;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn an_input_with_only_late_records_keeps_join_memory_flat_and_commits_advancing() {
    let pre = prefix("field-mem");
    let t = topics(&pre);
    create_topics(&t, 1).await;
    let (wg, jg) = (format!("{pre}window"), format!("{pre}join"));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let budget = MEM_BUDGET.to_string();
    let mut w = spawn("window-processor", &t, &wg, &[], &[]);
    let mut j = spawn(
        "join-predict",
        &t,
        &jg,
        &[
            ("SF_METRICS_ADDR", addr.as_str()),
            ("SF_JOIN_MAX_HELD_RECORDS", budget.as_str()),
            ("SF_JOIN_INPUT_IDLE_TIMEOUT_MS", "5000"),
        ],
        &[],
    );

    // 40 clients, one SX and one SZ a second each for 25 minutes of event time (60,000
    // triggers of each kind); SY has five good seconds, then only records far behind its own
    // (late), one per client and second. Those late records used to count as activity: SY
    // never went idle, the watermark stayed at its fifth second, and every trigger was held.
    let t0 = sensorflow_runtime::now_ms() - 3 * 3_600_000;
    let producer: rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        sensorflow_kafka::config::KafkaArgs::plain(&bootstrap())
            .producer_config("field-mem-source")
            .create()
            .unwrap();
    let send = |topic: &str, client: &str, body: &[u8], ts: i64| {
        let mut rec = rdkafka::producer::BaseRecord::<str, [u8]>::to(topic)
            .key(client)
            .payload(body)
            .timestamp(ts);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    };
    // The join's held records and paused partitions, sampled every 100 ms from before the
    // first record until drained.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        std::thread::spawn(move || {
            let (mut max_held, mut max_paused, mut samples) = (0.0_f64, 0.0_f64, 0);
            while sampling.load(Ordering::Acquire) {
                if let Some((_, m)) = http_get(port, "/metrics") {
                    let v = |n: &str| metric_value(&m, n).unwrap_or(0.0);
                    let held = v("sensorflow_join_pending_triggers")
                        + v("sensorflow_join_partial_triples")
                        + v("sensorflow_join_held_outcomes");
                    max_held = max_held.max(held);
                    max_paused = max_paused.max(v("sensorflow_paused_partitions"));
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (max_held, max_paused, samples)
        })
    };
    let mut late_sent = 0;
    for s in 0..MEM_STEPS {
        let at = t0 + s * 1000;
        for c in 0..MEM_CLIENTS {
            let client = format!("client-{c:02}");
            send(
                &t.topic_sz,
                &client,
                &sensor_reading(Sensor::Sz, at, 1.0 + (s % 9) as f64 * 0.5),
                at,
            );
            send(
                &t.topic_sx,
                &client,
                &sensor_reading(Sensor::Sx, at + 200, (s % 4) as f64),
                at + 200,
            );
            if s < 5 {
                send(
                    &t.topic_sy,
                    &client,
                    &sensor_reading(Sensor::Sy, at + 400, 1.0),
                    at + 400,
                );
            } else {
                send(
                    &t.topic_sy,
                    &client,
                    &sensor_reading(Sensor::Sy, t0 - 60_000, 2.0),
                    t0 - 60_000,
                );
                late_sent += 1;
            }
        }
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(60)).unwrap();

    // Commits advance until both groups have no lag left.
    let started = Instant::now();
    drained_with_both_running(
        &mut w,
        &mut j,
        &t,
        (&wg, &jg),
        Duration::from_secs(180),
        "the join's commits stopped",
    );
    let (_, peak_rss) = rss_bytes(j.child.id());
    sampling.store(false, Ordering::Release);
    let (max_held, max_paused, samples) = sampler.join().unwrap();
    assert!(w.terminate().success(), "window-processor stopped cleanly");
    assert!(j.terminate().success(), "join-predict stopped cleanly");
    eprintln!(
        "drained in {:.1} s; join held at most {max_held} records ({samples} samples, budget \
         {MEM_BUDGET}), paused at most {max_paused} partitions, peak RSS {} MiB",
        started.elapsed().as_secs_f64(),
        peak_rss >> 20
    );

    // Memory: the budget held (pausing the inputs that ran ahead, releasing past twice the
    // budget).
    assert!(max_paused > 0.0, "no input was paused");
    // Checked every 256 records, released past twice the budget: a few hundred over that
    // between checks, where the unbounded join held all 120,000 triggers.
    assert!(
        max_held <= (3 * MEM_BUDGET) as f64,
        "held {max_held} records with a budget of {MEM_BUDGET}"
    );
    assert!(
        peak_rss < 400 << 20,
        "join-predict peaked at {} MiB",
        peak_rss >> 20
    );
    // Every late SY record went to the late topic once; every SX record has one outcome.
    let late_records = read_all(&t.topic_late);
    let late = late_records
        .iter()
        .filter(|m| header(m, dlq::SOURCE_TOPIC).as_deref() == Some(t.topic_sy.as_str()))
        .count();
    assert_eq!(late, late_sent, "late SY records");
    // An SX record's outcome: a prediction, a dead letter (its trigger missed a value, or was
    // released as `join-overflow`) or a late record (below a watermark an overflow moved).
    let mut sx_outcomes: BTreeMap<i64, usize> = BTreeMap::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for m in &late_records {
        if header(m, dlq::SOURCE_TOPIC).as_deref() == Some(t.topic_sx.as_str()) {
            let o: i64 = header(m, dlq::SOURCE_OFFSET).unwrap().parse().unwrap();
            *sx_outcomes.entry(o).or_default() += 1;
            *kinds.entry("late".into()).or_default() += 1;
        }
    }
    for m in read_all(&t.topic_predictions) {
        let p = Prediction::decode(m.payload().unwrap()).unwrap();
        if p.source_topic == t.topic_sx {
            *sx_outcomes.entry(p.source_offset).or_default() += 1;
            *kinds.entry("predicted".into()).or_default() += 1;
        }
    }
    for m in read_all(&t.topic_dlq) {
        if header(&m, dlq::SOURCE_TOPIC).as_deref() == Some(t.topic_sx.as_str()) {
            let o: i64 = header(&m, dlq::SOURCE_OFFSET).unwrap().parse().unwrap();
            *sx_outcomes.entry(o).or_default() += 1;
            *kinds
                .entry(header(&m, dlq::REASON).unwrap_or_default())
                .or_default() += 1;
        }
    }
    eprintln!("SX outcomes: {kinds:?}");
    assert_eq!(
        sx_outcomes.len(),
        (MEM_CLIENTS * MEM_STEPS) as usize,
        "every SX record has an outcome"
    );
    assert!(
        sx_outcomes.values().all(|n| *n == 1),
        "one outcome per SX record"
    );
}
