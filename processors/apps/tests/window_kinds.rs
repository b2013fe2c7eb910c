//! Tumbling, hopping and global windows against a real Apache Kafka broker (started by
//! `./run.sh test`), through kill -9 and restarts: window-processor runs with exactly-once
//! (Kafka transactions), readings of several clients per partition arrive with skewed clocks
//! and jitter (some within the grace, some late), the processor is killed with SIGKILL twice
//! while they flow (each restart rebuilds its open windows from the SZ topic), and a
//! `read_committed` reader must then see, per SZ partition, exactly the emissions of the naive
//! reference (`sensorflow_core::window::aligned::reference`) over that partition's arrival
//! order: every window once, bit for bit, with its `[start, end)`, event time and emission
//! index, and every late reading once on the late topic.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::producer::FutureRecord;
use sensorflow_core::proto::{Feature, FeatureKind};
use sensorflow_core::window::aligned::{self, AlignedConfig, AlignedKind, Emit};
use sensorflow_core::window::{Aggregate, Reading, WatermarkScope};
use std::collections::HashMap;
use std::time::Duration;

const PARTITIONS: i32 = 2;
const GRACE_MS: i64 = 30_000;

/// One feature record as compared: (SZ partition, SZ offset, index, client, start, end, time,
/// count, FA value bits, FI value bits, FD value bits).
type Row = (i32, i64, u32, String, i64, i64, i64, u32, u64, u64, u64);

/// Readings of 3 clients per partition: 10 s apart on a shared clock with per-client skew
/// (−4 s … +4 s) and ±45 s of jitter (so some fall within the 30 s grace and some are late),
/// plus, last, one far-ahead reading of a `flush` client that closes every window. In
/// produce order per partition: `(client, t, v)`.
fn readings(base: i64, n: usize) -> Vec<Vec<(String, i64, f64)>> {
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed = sensorflow_core::model::splitmix64(seed);
        seed
    };
    (0..PARTITIONS)
        .map(|p| {
            let mut v: Vec<(String, i64, f64)> = (0..n)
                .map(|k| {
                    let c = next() % 3;
                    let skew = (c as i64 - 1) * 4_000;
                    let jitter = (next() % 90_001) as i64 - 45_000;
                    let t = base + k as i64 * 10_000 + skew + jitter;
                    let value = (next() % 5_000) as f64 / 100.0;
                    (format!("c{p}-{c}"), t, value)
                })
                .collect();
            v.push((
                format!("flush-{p}"),
                base + n as i64 * 10_000 + 86_400_000,
                0.0,
            ));
            v
        })
        .collect()
}

async fn produce_range(
    t: &sensorflow_kafka::config::TopicArgs,
    data: &[Vec<(String, i64, f64)>],
    range: std::ops::Range<usize>,
) {
    let p = producer();
    for (part, rows) in data.iter().enumerate() {
        for (client, ts, v) in &rows[range.start.min(rows.len())..range.end.min(rows.len())] {
            let value = reading(*ts, *v);
            let r = FutureRecord::<str, [u8]>::to(&t.topic_sz)
                .partition(part as i32)
                .key(client)
                .payload(&value)
                .timestamp(*ts);
            p.send(r, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
}

/// Runs the window-processor with `args` over the data with two kill -9s and compares with
/// the reference of `cfg`, the FA/FI/FD topics carrying `aggs`.
async fn check(name: &str, args: &[&str], cfg: AlignedConfig, aggs: [Aggregate; 3]) {
    let pre = prefix(name);
    let t = topics(&pre);
    create_topics(&t, PARTITIONS).await;
    let group = format!("{pre}window");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let n = 240;
    let data = readings(now - 3 * 86_400_000, n);
    // One transactional id per test (tests run side by side), kept across the restarts.
    let txn = format!("{pre}window-0");
    let env = [
        ("SF_EXACTLY_ONCE", "true"),
        ("SF_TRANSACTIONAL_ID", txn.as_str()),
        ("SF_KAFKA_PROPERTIES", "session.timeout.ms=6000"),
        ("SF_COMMIT_INTERVAL_MS", "100"),
    ];
    let start = || spawn("window-processor", &t, &group, &env, args);
    let sz = [t.topic_sz.as_str()];

    // A third, drained and killed; a third, killed while it flows; the rest and the flush.
    produce_range(&t, &data, 0..n / 3).await;
    let mut w = start();
    wait_drained(&group, &sz, Duration::from_secs(90));
    w.kill9();
    let mut w = start();
    // Joined and rebuilt (the broker delays a new group's first rebalance by 3 s), then
    // killed right after the second third went in: mid-stream, a transaction open.
    std::thread::sleep(Duration::from_secs(5));
    produce_range(&t, &data, n / 3..2 * n / 3).await;
    w.kill9();
    let mut w = start();
    produce_range(&t, &data, 2 * n / 3..n + 1).await;
    wait_drained(&group, &sz, Duration::from_secs(120));
    assert!(w.terminate().success(), "window-processor exits cleanly");

    // The reference, per partition, keyed like the records read back.
    let mut want: HashMap<Row, usize> = HashMap::new();
    let mut want_late: HashMap<(i32, i64), usize> = HashMap::new();
    for (part, rows) in data.iter().enumerate() {
        let arrivals: Vec<(&str, Reading)> = rows
            .iter()
            .map(|(c, t, v)| (c.as_str(), Reading { t: *t, v: *v }))
            .collect();
        for (offset, out) in aligned::reference(cfg, &arrivals).into_iter().enumerate() {
            let Some(ems) = out else {
                *want_late.entry((part as i32, offset as i64)).or_default() += 1;
                continue;
            };
            for (i, e) in ems.iter().enumerate() {
                let a = &e.aggregates;
                *want
                    .entry((
                        part as i32,
                        offset as i64,
                        i as u32,
                        e.client.to_string(),
                        e.start,
                        e.end,
                        e.time,
                        a.count,
                        aggs[0].of(a).to_bits(),
                        aggs[1].of(a).to_bits(),
                        aggs[2].of(a).to_bits(),
                    ))
                    .or_default() += 1;
            }
        }
    }
    assert!(!want_late.is_empty(), "the data has late readings");
    assert!(want.len() > 20, "the data closes windows: {}", want.len());

    // What a read_committed reader sees: the three features of an emission joined by source.
    let mut triples: HashMap<(i32, i64, u32), [Option<Feature>; 3]> = HashMap::new();
    let mut got_count: HashMap<(i32, i64, u32, i32), usize> = HashMap::new();
    for (k, topic) in [&t.topic_fa, &t.topic_fi, &t.topic_fd].iter().enumerate() {
        for m in read_all(topic) {
            let f = Feature::decode(m.payload().unwrap()).unwrap();
            assert_eq!(
                f.kind,
                [FeatureKind::Fa, FeatureKind::Fi, FeatureKind::Fd][k] as i32
            );
            assert_eq!(m.timestamp().to_millis(), Some(f.event_time_ms));
            let id = (f.source_partition, f.source_offset, f.source_index);
            *got_count.entry((id.0, id.1, id.2, k as i32)).or_default() += 1;
            triples.entry(id).or_default()[k] = Some(f);
        }
    }
    let dup: Vec<_> = got_count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "features emitted twice: {dup:?}");
    let mut got: HashMap<Row, usize> = HashMap::new();
    for ((part, offset, index), fs) in triples {
        let [Some(fa), Some(fi), Some(fd)] = fs else {
            panic!("an incomplete triple at {part}/{offset}/{index}");
        };
        assert_eq!(
            (fa.window_start_ms, fa.window_end_ms, fa.window_count),
            (fi.window_start_ms, fi.window_end_ms, fi.window_count)
        );
        *got.entry((
            part,
            offset,
            index,
            fa.client_id.clone(),
            fa.window_start_ms,
            fa.window_end_ms,
            fa.event_time_ms,
            fa.window_count,
            fa.value.to_bits(),
            fi.value.to_bits(),
            fd.value.to_bits(),
        ))
        .or_default() += 1;
    }
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && got == want,
        "{name}: {} emissions expected, {} read; missing {missing:?}, unexpected {extra:?}",
        want.len(),
        got.len()
    );

    let mut late: HashMap<(i32, i64), usize> = HashMap::new();
    for m in read_all(&t.topic_late) {
        let p: i32 = header(&m, sensorflow_runtime::dlq::SOURCE_PARTITION)
            .unwrap()
            .parse()
            .unwrap();
        let o: i64 = header(&m, sensorflow_runtime::dlq::SOURCE_OFFSET)
            .unwrap()
            .parse()
            .unwrap();
        *late.entry((p, o)).or_default() += 1;
    }
    assert_eq!(late, want_late, "{name}: late readings, each once");
    assert!(read_all(&t.topic_dlq).is_empty(), "no dead letters");
    eprintln!(
        "{name}: {} window emissions and {} late readings, each exactly once, through 2 kill -9s",
        want.len(),
        want_late.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn tumbling_final_windows_survive_kill_9_exactly_once() {
    check(
        "tumbling-final",
        &[
            "--window-kind",
            "Tumbling",
            "--window-size-ms",
            "300000",
            "--window-emit",
            "Final",
            "--grace-ms",
            "30000",
        ],
        AlignedConfig {
            kind: AlignedKind::Tumbling { size_ms: 300_000 },
            emit: Emit::Final,
            grace_ms: GRACE_MS,
            scope: WatermarkScope::Partition,
        },
        [Aggregate::Mean, Aggregate::Integral, Aggregate::Derivative],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn hopping_windows_survive_kill_9_exactly_once() {
    check(
        "hopping",
        &[
            "--window-kind",
            "Hopping",
            "--window-size-ms",
            "600000",
            "--window-advance-ms",
            "120000",
            "--window-emit",
            "Final",
            "--grace-ms",
            "30000",
            "--fa-aggregate",
            "Max",
            "--fi-aggregate",
            "Count",
            "--fd-aggregate",
            "Sum",
        ],
        AlignedConfig {
            kind: AlignedKind::Hopping {
                size_ms: 600_000,
                advance_ms: 120_000,
            },
            emit: Emit::Final,
            grace_ms: GRACE_MS,
            scope: WatermarkScope::Partition,
        },
        [Aggregate::Max, Aggregate::Count, Aggregate::Sum],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn global_running_totals_survive_kill_9_exactly_once() {
    check(
        "global",
        &[
            "--window-kind",
            "Global",
            "--grace-ms",
            "30000",
            "--watermark-scope",
            "client",
            "--fa-aggregate",
            "Sum",
            "--fi-aggregate",
            "Min",
        ],
        AlignedConfig {
            kind: AlignedKind::Global,
            emit: Emit::PerRecord,
            grace_ms: GRACE_MS,
            scope: WatermarkScope::Client,
        },
        [Aggregate::Sum, Aggregate::Min, Aggregate::Derivative],
    )
    .await;
}
