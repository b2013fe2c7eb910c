//! Rebalance ordering, at-least-once, on the real broker: window-processor members join and
//! leave a consumer group while readings flow, with a commit interval (5 s) longer than a
//! rebalance, so a revoke and the following assign land inside one commit tick. Every feature
//! must still equal the naive reference: no reading is applied twice to a window (which would
//! show as a window count one too high and a wrong mean), whatever offset librdkafka resumed
//! fetching from (see `driver::Assignment`).
//!
//! Run with `cargo test --release -p sensorflow-runtime --test rebalance -- --ignored` against
//! the broker in `SENSORFLOW_TEST_BOOTSTRAP` (see `scripts/test.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use prost::Message as _;
use rdkafka::Message;
use sensorflow_core::proto::Feature;
use sensorflow_core::window::{Aggregates, WindowConfig};
use std::collections::{HashMap, HashSet};
use std::thread;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn members_joining_and_leaving_never_apply_a_reading_twice() {
    let started = Instant::now();
    let pre = prefix("rebalance");
    let t = topics(&pre);
    create_topics(&t, PARTITIONS).await;
    let group = format!("{pre}window");
    let env = [("SF_COMMIT_INTERVAL_MS", "5000")];
    let _a = spawn_as("window-processor", &t, &group, "a", &env, &[]);
    // 8 days × 240 one-minute rows (the first day starts at 17:24, the others at midnight:
    // 21.4 event-hours) at 3,600×: ~21 s of paced input.
    let tr = t.clone();
    let replayer = thread::spawn(move || {
        replay(
            &tr,
            &[
                "--clients",
                "8",
                "--rows-per-client",
                "240",
                "--speed",
                "3600",
                "--base-date",
                "2021-03-06",
            ],
        )
    });
    // Members come and go: four rebalances for the first member while readings flow.
    thread::sleep(Duration::from_secs(4));
    let mut b = spawn_as("window-processor", &t, &group, "b", &env, &[]);
    thread::sleep(Duration::from_secs(6));
    assert!(b.terminate().success());
    thread::sleep(Duration::from_secs(3));
    let mut c = spawn_as("window-processor", &t, &group, "c", &env, &[]);
    thread::sleep(Duration::from_secs(6));
    assert!(c.terminate().success());
    eprintln!("members done at {:.1} s", started.elapsed().as_secs_f64());
    replayer.join().unwrap();
    eprintln!("replay done at {:.1} s", started.elapsed().as_secs_f64());
    wait_drained(&group, &[&t.topic_sz], Duration::from_secs(120));
    eprintln!("drained at {:.1} s", started.elapsed().as_secs_f64());

    // The reference, per SZ partition in offset order.
    let sz = read_all(&t.topic_sz);
    let reference: HashMap<(i32, i64), Aggregates> = reference(&sz, WindowConfig::default(), |v| v)
        .into_iter()
        .map(|(k, agg)| (k, agg.expect("in-order data is never late")))
        .collect();
    let mut repeats = 0;
    for topic in [&t.topic_fa, &t.topic_fi, &t.topic_fd] {
        let mut seen = HashSet::new();
        for m in read_all(topic) {
            let f = Feature::decode(m.payload().unwrap()).unwrap();
            let key = (f.source_partition, f.source_offset);
            let a = reference[&key];
            let want = match topic {
                x if x == &t.topic_fa => a.mean,
                x if x == &t.topic_fi => a.integral,
                _ => a.derivative,
            };
            assert_eq!(
                f.window_count, a.count,
                "{topic} at {key:?}: a reading applied twice (or lost) in the window"
            );
            assert!(
                close(f.value, want),
                "{topic} at {key:?}: {} != {want}",
                f.value
            );
            if !seen.insert(key) {
                repeats += 1;
            }
        }
        assert_eq!(seen.len(), sz.len(), "{topic}: a feature per SZ reading");
    }
    let log = String::from_utf8_lossy(
        &std::fs::read(std::env::temp_dir().join(format!("{group}awindow-processor.log")))
            .unwrap_or_default(),
    )
    .into_owned();
    let rebalances = log.matches("Assigned(").count();
    assert!(
        rebalances >= 4,
        "the first member was assigned only {rebalances} times: no rebalance to test"
    );
    eprintln!(
        "{} readings, {repeats} exact repeats over three feature topics, {rebalances} assignments \
         of the first member; {:.1} s",
        sz.len(),
        started.elapsed().as_secs_f64()
    );
}
