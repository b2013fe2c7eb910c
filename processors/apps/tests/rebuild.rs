//! State rebuild on the real broker: a rebuild that takes far longer than its stall timeout (the
//! old fixed budget per phase) completes because it keeps moving, keeps `/health` green while
//! it runs, and restores the exact window state; the same rebuild under a size limit it cannot
//! meet fails loudly and emits nothing; a join rebuild leaves out what its predecessor routed
//! to the late topic, as the predecessor's state did; a rebuild longer than
//! `max.poll.interval.ms` keeps its member in the group (it polls, partitions paused) and runs
//! once; a join rebuild with one input silent for days reads from the watermark, not from it.
//!
//! Run with `cargo test --release -p sensorflow-runtime --test rebuild -- --ignored` against the
//! broker in `SENSORFLOW_TEST_BOOTSTRAP` (see `scripts/test.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::{Message, Offset, TopicPartitionList};
use sensorflow_core::proto::{Feature, FeatureKind, Prediction, Sensor};
use sensorflow_core::window::{Reading, WindowConfig, reference_features};
use sensorflow_kafka::config::KafkaArgs;
use sensorflow_runtime::dlq;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Clients × seconds of one-per-second readings, all inside one 10-minute window.
const CLIENTS: usize = 600;
const SECONDS: usize = 600;
/// The stall timeout the rebuild runs with (and the old fixed budget it would have had).
const STALL_MS: u64 = 1000;

/// Commits `offset` on partition 0 of `topic` for `group` without joining it (the group has
/// no members yet), as if a previous owner had processed everything before it.
fn commit(group: &str, topic: &str, offset: i64) {
    let mut c = config();
    c.set("group.id", group).set("enable.auto.commit", "false");
    let consumer: BaseConsumer = c.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
}

/// `s` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut in_seq = false;
    for c in s.chars() {
        match (in_seq, c) {
            (false, '\u{1b}') => in_seq = true,
            (true, 'm') => in_seq = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

fn metric(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn a_long_rebuild_completes_keeps_health_green_and_restores_the_window() {
    let started = Instant::now();
    let pre = prefix("rebuild");
    let t = topics(&pre);
    create_topics(&t, 1).await;
    // 360,000 readings, then one more per client for ten clients: their features need the
    // whole window, i.e. the rebuilt state.
    let base = sensorflow_runtime::now_ms() - 86_400_000;
    let p = producer();
    let mut futs = Vec::with_capacity(CLIENTS * SECONDS);
    let mut readings: Vec<(String, Reading)> = Vec::with_capacity(CLIENTS * SECONDS);
    for s in 0..=SECONDS {
        let clients = if s == SECONDS { 10 } else { CLIENTS };
        for c in 0..clients {
            let ts = base + (s as i64) * 1000;
            let v = ((c * 7 + s * 13) % 50) as f64 / 10.0;
            let key = format!("client-{c:04}");
            let value = reading(ts, v);
            loop {
                match p.send_result(
                    FutureRecord::<str, [u8]>::to(&t.topic_sz)
                        .key(&key)
                        .payload(&value)
                        .timestamp(ts),
                ) {
                    Ok(f) => {
                        futs.push(f);
                        break;
                    }
                    Err((e, _)) => {
                        assert!(e.to_string().contains("Queue full"), "{e}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            readings.push((key, Reading { t: ts, v }));
        }
    }
    for f in futs {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let committed = (CLIENTS * SECONDS) as i64;
    eprintln!(
        "produced {} readings in {:.1} s",
        readings.len(),
        started.elapsed().as_secs_f64()
    );

    // The same rebuild under a limit it cannot meet: fails loudly, emits nothing.
    let limited = format!("{pre}limited");
    commit(&limited, &t.topic_sz, committed);
    let mut l = spawn(
        "window-processor",
        &t,
        &limited,
        &[
            ("SF_REBUILD_MAX_RECORDS", "100000"),
            ("SF_REBUILD_TIMEOUT_MS", "10000"),
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = l.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the limited rebuild did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(
        std::env::temp_dir().join(format!("{limited}window-processor.log")),
    )
    .unwrap();
    assert!(log.contains("refusing to build a partial state"), "{log}");
    assert_eq!(
        sensorflow_kafka::admin::message_count(&config(), &t.topic_fa).unwrap(),
        0,
        "a failed rebuild emitted features"
    );

    // The rebuild with a 1 s stall timeout: far longer in total, never stalled.
    let group = format!("{pre}window");
    commit(&group, &t.topic_sz, committed);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let stall = STALL_MS.to_string();
    let mut w = spawn(
        "window-processor",
        &t,
        &group,
        &[
            ("SF_METRICS_ADDR", addr.as_str()),
            ("SF_REBUILD_TIMEOUT_MS", stall.as_str()),
            ("SF_LIVENESS_TIMEOUT_MS", "1500"),
        ],
        &[],
    );
    let mut healthy = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((code, body)) = http_get(port, "/health") {
            assert_eq!(code, 200, "/health during the rebuild: {body}");
            healthy += 1;
        }
        let n = sensorflow_kafka::admin::message_count(&config(), &t.topic_fa).unwrap_or(0);
        if n >= 10 {
            break;
        }
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "window-processor exited ({})",
            w.name
        );
        assert!(
            Instant::now() < deadline,
            "no features after the rebuild ({})",
            w.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = http_get(port, "/metrics").unwrap().1;
    let rebuilt = metric(&metrics, "sensorflow_rebuilt_records_total");
    assert!(rebuilt >= committed as f64, "{rebuilt} records rebuilt");
    assert_eq!(metric(&metrics, "sensorflow_rebuilt_partitions_total"), 1.0);
    let log =
        std::fs::read_to_string(std::env::temp_dir().join(format!("{group}window-processor.log")))
            .unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("state rebuilt from the topics"))
        .unwrap_or_else(|| panic!("no rebuild in the log: {log}"));
    // `elapsed=1.234567s` (or ms): the whole rebuild took longer than the stall timeout.
    let plain = strip_ansi(line);
    let elapsed = plain
        .split("elapsed=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    let secs = if let Some(ms) = elapsed.strip_suffix("ms") {
        ms.parse::<f64>().unwrap() / 1000.0
    } else {
        elapsed.trim_end_matches('s').parse::<f64>().unwrap()
    };
    eprintln!(
        "rebuild of {committed} records took {secs:.2} s with a {STALL_MS} ms stall timeout; \
         /health answered 200 {healthy} times while it ran"
    );
    assert!(
        secs > STALL_MS as f64 / 1000.0,
        "the rebuild was quicker than the stall timeout ({secs} s): the test proves nothing"
    );
    assert!(healthy > 0, "/health never answered");

    // The new readings' features equal the reference over the whole history.
    let want: HashMap<String, _> = {
        let arrivals: Vec<(&str, Reading)> = readings
            .iter()
            .filter(|(c, _)| c.as_str() < "client-0010")
            .map(|(c, r)| (c.as_str(), *r))
            .collect();
        let aggs = reference_features(WindowConfig::default(), &arrivals);
        arrivals
            .iter()
            .zip(aggs)
            .filter(|((_, r), _)| r.t == base + (SECONDS as i64) * 1000)
            .map(|((c, _), a)| ((*c).to_owned(), a.unwrap()))
            .collect()
    };
    let fa = read_all(&t.topic_fa);
    assert_eq!(fa.len(), 10);
    for m in fa {
        let f = Feature::decode(m.payload().unwrap()).unwrap();
        let a = &want[&f.client_id];
        assert_eq!(f.window_count, a.count, "window of {}", f.client_id);
        assert_eq!(f.value.to_bits(), a.mean.to_bits(), "FA of {}", f.client_id);
    }
    eprintln!("whole test {:.1} s", started.elapsed().as_secs_f64());
    drop(w);
}

/// Waits up to `within` for `cond`, polling every 100 ms; panics with `what` on timeout.
fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn a_stalled_rebuild_is_retried_in_process_and_the_retries_end() {
    let pre = prefix("rebuild-retry");
    let t = topics(&pre);
    create_topics(&t, 1).await;
    let base = sensorflow_runtime::now_ms() - 86_400_000;
    let p = producer();
    let send = |i: i64| {
        let ts = base + i * 1000;
        let value = reading(ts, i as f64);
        let f = p
            .send_result(
                FutureRecord::<str, [u8]>::to(&t.topic_sz)
                    .key("client-a")
                    .payload(&value)
                    .timestamp(ts),
            )
            .unwrap();
        (f, Reading { t: ts, v: i as f64 })
    };
    // Five readings, but the groups below committed offset 10 (as if a previous owner had
    // processed ten): the rebuild waits for records 5..9 that are not there yet, and stalls.
    let mut readings = Vec::new();
    for i in 0..5 {
        let (f, r) = send(i);
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
        readings.push(r);
    }
    let stall = [("SF_REBUILD_TIMEOUT_MS", "500")];

    // Never satisfied: five attempts with backoff (1 + 2 + 4 + 8 s), then a clear exit.
    let ended = format!("{pre}ended");
    commit(&ended, &t.topic_sz, 10);
    let started = Instant::now();
    let mut e = spawn("window-processor", &t, &ended, &stall, &[]);
    let mut status = None;
    wait_for(Duration::from_secs(90), "the retries to end", || {
        status = e.child.try_wait().unwrap();
        status.is_some()
    });
    let took = started.elapsed();
    assert!(!status.unwrap().success());
    let log = strip_ansi(
        &std::fs::read_to_string(std::env::temp_dir().join(format!("{ended}window-processor.log")))
            .unwrap(),
    );
    let retries = log.matches("retrying from scratch").count();
    assert_eq!(retries, 4, "four retries after the first attempt: {log}");
    assert!(log.contains("state rebuild failed"), "{log}");
    assert!(
        took >= Duration::from_secs(15),
        "the backoff did not wait ({took:?})"
    );
    eprintln!("a rebuild that never can finish: 5 attempts, exit after {took:?}");

    // Satisfied while retrying: the same process recovers, and its state is complete.
    let group = format!("{pre}window");
    commit(&group, &t.topic_sz, 10);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut w = spawn(
        "window-processor",
        &t,
        &group,
        // A longer stall timeout here: a fresh rebuild consumer's first fetch can take more
        // than 500 ms on a busy machine, and this attempt must not stall once the data is in.
        &[
            ("SF_REBUILD_TIMEOUT_MS", "3000"),
            ("SF_METRICS_ADDR", addr.as_str()),
        ],
        &[],
    );
    wait_for(Duration::from_secs(60), "a retried rebuild attempt", || {
        http_get(port, "/metrics")
            .is_some_and(|(_, m)| metric(&m, "sensorflow_rebuild_retries_total") >= 1.0)
    });
    for i in 5..=10 {
        let (f, r) = send(i);
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
        readings.push(r);
    }
    wait_for(Duration::from_secs(60), "the features of offset 10", || {
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "window-processor exited ({})",
            w.name
        );
        sensorflow_kafka::admin::message_count(&config(), &t.topic_fa).unwrap_or(0) >= 1
    });
    let fa = read_all(&t.topic_fa);
    assert_eq!(fa.len(), 1, "only offset 10 is past the committed offset");
    let f = Feature::decode(fa[0].payload().unwrap()).unwrap();
    let arrivals: Vec<(&str, Reading)> = readings.iter().map(|r| ("client-a", *r)).collect();
    let want = reference_features(WindowConfig::default(), &arrivals)
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(f.window_count, 11, "the rebuilt window holds offsets 0..9");
    assert_eq!(f.window_count, want.count);
    assert_eq!(f.value.to_bits(), want.mean.to_bits());
    let metrics = http_get(port, "/metrics").unwrap().1;
    eprintln!(
        "a rebuild stalled on missing records recovered in process after {} retries",
        metric(&metrics, "sensorflow_rebuild_retries_total")
    );
    drop(w);
}

/// One plain-protobuf feature of `kind` for client `c` at `t`, from SZ offset `src`.
fn feature(kind: FeatureKind, t: i64, src: i64, bin: u32) -> Vec<u8> {
    Feature {
        client_id: "c".into(),
        kind: kind as i32,
        event_time_ms: t,
        source_partition: 0,
        source_offset: src,
        bin,
        value: 0.0,
        window_count: 1,
        ingest_time_ms: t,
        ..Feature::default()
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn a_join_rebuild_leaves_out_the_records_its_predecessor_routed_late() {
    let pre = prefix("rebuild-late");
    let t = topics(&pre);
    create_topics(&t, 1).await;
    let jg = format!("{pre}join");
    let base = sensorflow_runtime::now_ms() - 86_400_000;
    let p = producer();
    // 1. The previous owner's history, all processed and committed: SX 1 at `base`, SY 2 and
    //    the triple (bins 3, 4, 5) at `base`, and SX 7 at base + 60 s, which arrived after its
    //    input had been declared idle and went to the late topic, so it never entered the state.
    let late_sx = sensor_reading(Sensor::Sx, base + 60_000, 7.0);
    for (topic, value, ts) in [
        (&t.topic_sx, sensor_reading(Sensor::Sx, base, 1.0), base),
        (&t.topic_sx, late_sx.clone(), base + 60_000),
        (&t.topic_sy, sensor_reading(Sensor::Sy, base, 2.0), base),
        (&t.topic_fa, feature(FeatureKind::Fa, base, 0, 3), base),
        (&t.topic_fi, feature(FeatureKind::Fi, base, 0, 4), base),
        (&t.topic_fd, feature(FeatureKind::Fd, base, 0, 5), base),
    ] {
        produce(&p, topic, Some("c"), &value, Some(ts)).await;
    }
    let headers = [
        (dlq::REASON, "late".to_owned()),
        (dlq::SOURCE_TOPIC, t.topic_sx.clone()),
        (dlq::SOURCE_PARTITION, "0".to_owned()),
        (dlq::SOURCE_OFFSET, "1".to_owned()),
    ]
    .iter()
    .fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        })
    });
    p.send(
        FutureRecord::<str, [u8]>::to(&t.topic_late)
            .key("c")
            .payload(&late_sx)
            .timestamp(base + 60_000)
            .headers(headers),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
    for (topic, offset) in [
        (&t.topic_sx, 2),
        (&t.topic_sy, 1),
        (&t.topic_fa, 1),
        (&t.topic_fi, 1),
        (&t.topic_fd, 1),
    ] {
        commit(&jg, topic, offset);
    }
    // 2. After the commit: the triple of base + 90 s (bins 6). Its SX as of base + 90 s is the
    //    one the previous owner held, SX 1; a rebuild that took the late SX 7 would use 7.
    for (topic, kind) in [
        (&t.topic_fa, FeatureKind::Fa),
        (&t.topic_fi, FeatureKind::Fi),
        (&t.topic_fd, FeatureKind::Fd),
    ] {
        let value = feature(kind, base + 90_000, 1, 6);
        produce(&p, topic, Some("c"), &value, Some(base + 90_000)).await;
    }
    let env = [
        ("SF_JOIN_IDLE_TIMEOUT_MS", "2000"),
        ("SF_JOIN_INPUT_IDLE_TIMEOUT_MS", "5000"),
    ];
    let mut j = spawn("join-predict", &t, &jg, &env, &[]);
    wait_for(Duration::from_secs(60), "the triple's prediction", || {
        assert!(
            j.child.try_wait().unwrap().is_none(),
            "join-predict exited ({})",
            j.name
        );
        sensorflow_kafka::admin::message_count(&config(), &t.topic_predictions).unwrap_or(0) >= 1
    });
    let preds: Vec<Prediction> = read_all(&t.topic_predictions)
        .iter()
        .map(|m| Prediction::decode(m.payload().unwrap()).unwrap())
        .collect();
    assert_eq!(preds.len(), 1, "one trigger after the commit: {preds:?}");
    assert_eq!(preds[0].event_time_ms, base + 90_000);
    assert_eq!(
        preds[0].features,
        vec![1, 2, 6, 6, 6],
        "the as-of SX is the one the previous owner held, not the late one"
    );
    drop(j);
}

/// `max.poll.interval.ms` of the member under test, and the session timeout under it (the
/// broker's `group.min.session.timeout.ms` is 6 s).
const MAX_POLL_MS: u64 = 6_000;

/// The whole of `log`, colours stripped.
fn log_of(group: &str, bin: &str) -> String {
    strip_ansi(
        &std::fs::read_to_string(std::env::temp_dir().join(format!("{group}{bin}.log")))
            .unwrap_or_default(),
    )
}

/// The `elapsed=` of the rebuild's summary line, seconds.
fn rebuild_secs(log: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains("state rebuilt from the topics"))
        .unwrap_or_else(|| panic!("no rebuild in the log: {log}"));
    let elapsed = line
        .split("elapsed=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default();
    if let Some(ms) = elapsed.strip_suffix("ms") {
        ms.parse::<f64>().unwrap() / 1000.0
    } else {
        elapsed.trim_end_matches('s').parse::<f64>().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn a_rebuild_longer_than_max_poll_interval_keeps_the_member_in_its_group() {
    const BATCHES: usize = 30;
    const PER_BATCH: usize = 1000;
    const LIVE: usize = 200;
    let started = Instant::now();
    let pre = prefix("rebuild-poll");
    let t = topics(&pre);
    create_topics(&t, 1).await;
    // Whole batches of 1,000 readings (a long linger, a flush after each): the member below
    // fetches one batch per 500 ms, so the rebuild of 30 takes ~15 s, 2.5 × max.poll.interval.
    let mut pc = KafkaArgs::plain(&bootstrap()).producer_config("test");
    pc.set("linger.ms", "1000");
    let p: rdkafka::producer::FutureProducer = pc.create().unwrap();
    let base = sensorflow_runtime::now_ms() - 86_400_000;
    let mut n = 0i64;
    let mut send_batch = |size: usize| {
        let futs: Vec<_> = (0..size)
            .map(|_| {
                let ts = base + n * 10;
                let key = format!("client-{:03}", n % 100);
                let value = reading(ts, (n % 37) as f64);
                n += 1;
                p.send_result(
                    FutureRecord::<str, [u8]>::to(&t.topic_sz)
                        .key(&key)
                        .payload(&value)
                        .timestamp(ts),
                )
                .unwrap()
            })
            .collect();
        p.flush(Duration::from_secs(30)).unwrap();
        futs
    };
    for _ in 0..BATCHES {
        for f in send_batch(PER_BATCH) {
            f.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
    let committed = (BATCHES * PER_BATCH) as i64;
    for f in send_batch(LIVE) {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let group = format!("{pre}window");
    commit(&group, &t.topic_sz, committed);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let props = format!(
        "max.poll.interval.ms={MAX_POLL_MS},session.timeout.ms={MAX_POLL_MS},\
         fetch.min.bytes=100000000,fetch.wait.max.ms=500,max.partition.fetch.bytes=1"
    );
    let mut w = spawn(
        "window-processor",
        &t,
        &group,
        &[
            ("SF_METRICS_ADDR", addr.as_str()),
            ("SF_KAFKA_PROPERTIES", props.as_str()),
        ],
        &[],
    );
    let rebuilds = || {
        log_of(&group, "window-processor")
            .matches("rebuilding assigned partitions from their committed offsets")
            .count()
    };
    wait_for(
        Duration::from_secs(120),
        "the live readings' features",
        || {
            assert!(
                w.child.try_wait().unwrap().is_none(),
                "window-processor exited ({})",
                w.name
            );
            // Evicted at the end of its rebuild, the member rejoins and rebuilds again.
            assert!(rebuilds() <= 1, "the rebuild started again ({})", w.name);
            sensorflow_kafka::admin::message_count(&config(), &t.topic_fd).unwrap_or(0)
                >= LIVE as i64
        },
    );
    // A member evicted at the end of its rebuild rejoins at once: give it the time to show.
    std::thread::sleep(Duration::from_secs(3));
    let log = log_of(&group, "window-processor");
    let secs = rebuild_secs(&log);
    assert!(
        secs > 2.0 * MAX_POLL_MS as f64 / 1000.0,
        "the rebuild took {secs:.1} s, not several max.poll.interval.ms: the test proves nothing"
    );
    assert_eq!(rebuilds(), 1, "the rebuild ran again: {log}");
    assert!(
        !log.contains("Revoked("),
        "the member left its group: {log}"
    );
    assert!(!log.contains("left the consumer group"), "{log}");
    let metrics = http_get(port, "/metrics").unwrap().1;
    assert_eq!(metric(&metrics, "sensorflow_rebuilt_partitions_total"), 1.0);
    assert_eq!(metric(&metrics, "sensorflow_rebuild_repeats_total"), 0.0);

    // One outcome per live reading (a multiset: each source offset once per feature topic),
    // each from the rebuilt window.
    let sz = read_all(&t.topic_sz);
    let reference = reference(&sz, WindowConfig::default(), |v| v);
    for topic in [&t.topic_fa, &t.topic_fi, &t.topic_fd] {
        let mut outcomes: HashMap<i64, usize> = HashMap::new();
        for m in read_all(topic) {
            let f = Feature::decode(m.payload().unwrap()).unwrap();
            *outcomes.entry(f.source_offset).or_default() += 1;
            let want = reference[&(0, f.source_offset)].unwrap();
            assert_eq!(f.window_count, want.count, "{topic} at {}", f.source_offset);
        }
        let want: HashMap<i64, usize> = (committed..committed + LIVE as i64)
            .map(|o| (o, 1))
            .collect();
        assert_eq!(outcomes, want, "{topic}: one feature per live reading");
    }
    for topic in [&t.topic_late, &t.topic_dlq] {
        assert!(read_all(topic).is_empty(), "{topic} is not empty");
    }
    eprintln!(
        "a {secs:.1} s rebuild under max.poll.interval.ms={MAX_POLL_MS}: one assignment, {LIVE} \
         live readings with one feature each; whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(w);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn a_join_rebuild_reads_from_the_watermark_not_from_a_silent_input() {
    const OLD_SY: i64 = 3000;
    let started = Instant::now();
    let pre = prefix("rebuild-silent");
    let t = topics(&pre);
    create_topics(&t, 1).await;
    let jg = format!("{pre}join");
    let base = sensorflow_runtime::now_ms() - 86_400_000;
    let p = producer();
    // 1. Committed history: SX silent for three days (one reading), 3,000 SY readings two days
    //    old, then SY 2 at base − 30 s and the triple (3, 4, 5) at base − 60 s.
    let sx_old = base - 3 * 86_400_000;
    produce(
        &p,
        &t.topic_sx,
        Some("c"),
        &sensor_reading(Sensor::Sx, sx_old, 1.0),
        Some(sx_old),
    )
    .await;
    let mut futs = Vec::new();
    for i in 0..OLD_SY {
        let ts = base - 2 * 86_400_000 + i * 10_000;
        let value = sensor_reading(Sensor::Sy, ts, 9.0);
        futs.push(
            p.send_result(
                FutureRecord::<str, [u8]>::to(&t.topic_sy)
                    .key("c")
                    .payload(&value)
                    .timestamp(ts),
            )
            .unwrap(),
        );
    }
    for f in futs {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let recent = base - 30_000;
    produce(
        &p,
        &t.topic_sy,
        Some("c"),
        &sensor_reading(Sensor::Sy, recent, 2.0),
        Some(recent),
    )
    .await;
    for (topic, kind, bin) in [
        (&t.topic_fa, FeatureKind::Fa, 3),
        (&t.topic_fi, FeatureKind::Fi, 4),
        (&t.topic_fd, FeatureKind::Fd, 5),
    ] {
        let value = feature(kind, base - 60_000, 100, bin);
        produce(&p, topic, Some("c"), &value, Some(base - 60_000)).await;
    }
    for (topic, offset) in [
        (&t.topic_sx, 1),
        (&t.topic_sy, OLD_SY + 1),
        (&t.topic_fa, 1),
        (&t.topic_fi, 1),
        (&t.topic_fd, 1),
    ] {
        commit(&jg, topic, offset);
    }
    // 2. After the commit: SX comes back (7 at base), then SY 8 at base + 10 s.
    produce(
        &p,
        &t.topic_sx,
        Some("c"),
        &sensor_reading(Sensor::Sx, base, 7.0),
        Some(base),
    )
    .await;
    produce(
        &p,
        &t.topic_sy,
        Some("c"),
        &sensor_reading(Sensor::Sy, base + 10_000, 8.0),
        Some(base + 10_000),
    )
    .await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let env = [
        ("SF_JOIN_IDLE_TIMEOUT_MS", "2000"),
        ("SF_JOIN_INPUT_IDLE_TIMEOUT_MS", "5000"),
        ("SF_METRICS_ADDR", addr.as_str()),
    ];
    let mut j = spawn("join-predict", &t, &jg, &env, &[]);
    wait_for(Duration::from_secs(60), "the two predictions", || {
        assert!(
            j.child.try_wait().unwrap().is_none(),
            "join-predict exited ({})",
            j.name
        );
        sensorflow_kafka::admin::message_count(&config(), &t.topic_predictions).unwrap_or(0) >= 2
    });
    let metrics = http_get(port, "/metrics").unwrap().1;
    let rebuilt = metric(&metrics, "sensorflow_rebuilt_records_total");
    // The tails (≤ 32 records per input) and the last 20 minutes: not the 3,000 old SY.
    assert!(
        rebuilt < 100.0,
        "{rebuilt} records re-read: the silent SX extended the range"
    );
    let mut preds: Vec<(i64, Vec<i64>)> = read_all(&t.topic_predictions)
        .iter()
        .map(|m| {
            let p = Prediction::decode(m.payload().unwrap()).unwrap();
            (p.event_time_ms, p.features)
        })
        .collect();
    preds.sort();
    assert_eq!(
        preds,
        vec![
            (base, vec![7, 2, 3, 4, 5]),
            (base + 10_000, vec![7, 8, 3, 4, 5])
        ],
        "one prediction per new trigger, from the as-of values"
    );
    for topic in [&t.topic_late, &t.topic_dlq] {
        assert!(read_all(topic).is_empty(), "{topic} is not empty");
    }
    eprintln!(
        "join rebuild with SX silent for 3 days: {rebuilt} records re-read; whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(j);
}
