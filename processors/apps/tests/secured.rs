//! The processors and `replay` against the test broker's SASL_SSL listener, as managed
//! clusters offer it (Confluent Cloud: SASL_SSL + PLAIN; MSK: SASL_SSL + SCRAM-SHA-512): TLS
//! verified with the CA `scripts/broker.sh` made, credentials from the `KAFKA_SASL_*` variables.
//! `./run.sh test` passes the listener's settings in `SENSORFLOW_TEST_SASL_ENV` (a KEY=VALUE file).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The secured listener's client settings (`KAFKA_*` names the binaries read).
fn sasl_env() -> HashMap<String, String> {
    let path = std::env::var("SENSORFLOW_TEST_SASL_ENV")
        .expect("SENSORFLOW_TEST_SASL_ENV is not set: run these tests with ./run.sh test");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Settings for one mechanism: `SCRAM-SHA-512` (user `sensorflow`) or `PLAIN`.
fn secured(mechanism: &str, password_override: Option<&str>) -> Vec<(String, String)> {
    let e = sasl_env();
    let (user, pass) = if mechanism == "PLAIN" {
        (
            e["SENSORFLOW_BROKER_PLAIN_USERNAME"].clone(),
            e["SENSORFLOW_BROKER_PLAIN_PASSWORD"].clone(),
        )
    } else {
        (
            e["KAFKA_SASL_USERNAME"].clone(),
            e["KAFKA_SASL_PASSWORD"].clone(),
        )
    };
    vec![
        (
            "KAFKA_BOOTSTRAP_SERVERS".into(),
            e["KAFKA_BOOTSTRAP_SERVERS"].clone(),
        ),
        ("KAFKA_SECURITY_PROTOCOL".into(), "SASL_SSL".into()),
        ("KAFKA_SASL_MECHANISM".into(), mechanism.into()),
        ("KAFKA_SASL_USERNAME".into(), user),
        (
            "KAFKA_SASL_PASSWORD".into(),
            password_override.map_or(pass, str::to_owned),
        ),
        (
            "KAFKA_SSL_CA_LOCATION".into(),
            e["KAFKA_SSL_CA_LOCATION"].clone(),
        ),
    ]
}

fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, x)| (k.as_str(), x.as_str())).collect()
}

/// replay → window-processor → join-predict, every client on SASL_SSL (replay and the window
/// with SCRAM-SHA-512, the join with PLAIN): every SZ reading gets its three features and the
/// predictions arrive, read back over the plaintext listener.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn pipeline_runs_over_sasl_ssl() {
    let pre = prefix("sasl");
    let t = topics(&pre);
    create_topics(&t, 4).await;
    let scram = secured("SCRAM-SHA-512", None);
    let plain = secured("PLAIN", None);
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/household_power.csv.xz"
    );
    let mut r = spawn(
        "replay",
        &t,
        "replay",
        &refs(&scram),
        &[
            "--input",
            data,
            "--clients",
            "3",
            "--rows-per-client",
            "100",
            "--base-date",
            "2021-03-03",
        ],
    );
    assert!(
        r.child.wait().unwrap().success(),
        "replay over SASL_SSL failed"
    );
    let wg = format!("{pre}window");
    let jg = format!("{pre}join");
    let _w = spawn("window-processor", &t, &wg, &refs(&scram), &[]);
    let _j = spawn("join-predict", &t, &jg, &refs(&plain), &[]);
    let drain = Duration::from_secs(120);
    wait_drained(&wg, &[&t.topic_sz], drain);
    wait_drained(&jg, &join_inputs(&t), drain);
    let sz = read_all(&t.topic_sz).len();
    assert_eq!(sz, 300);
    for topic in [&t.topic_fa, &t.topic_fi, &t.topic_fd] {
        assert_eq!(read_all(topic).len(), sz, "{topic}");
    }
    let predictions = read_all(&t.topic_predictions).len();
    assert!(predictions > 0);

    // gcs-sink (another crate's binary, built beside these by `./run.sh test`) archives the
    // predictions over SASL_SSL into a local directory; SIGTERM finalises its files.
    let sink_bin = common::sibling_bin("gcs-sink");
    let out_dir = std::env::temp_dir().join(format!("{pre}parquet"));
    let sink_group = format!("{pre}sink");
    let sink_log = std::env::temp_dir().join(format!("{sink_group}gcs-sink.log"));
    let mut sink = std::process::Command::new(&sink_bin)
        .envs(scram.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("SF_GROUP_ID", &sink_group)
        .env("SF_METRICS_ADDR", "127.0.0.1:0")
        .env("SF_SINK_LOCAL_DIR", &out_dir)
        .env("SF_SINK_TOPICS", &t.topic_predictions)
        .env("SF_SINK_MAX_AGE_SECONDS", "2")
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&sink_log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while sensorflow_kafka::admin::group_lag(&config(), &sink_group, &[&t.topic_predictions])
        .unwrap()
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "gcs-sink over SASL_SSL did not drain (log: {})",
            sink_log.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &sink.id().to_string()])
        .status();
    assert!(
        sink.wait().unwrap().success(),
        "gcs-sink failed (log: {})",
        sink_log.display()
    );
    let files = walk(&out_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    assert!(files > 0, "no Parquet file under {}", out_dir.display());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Wrong credentials: a clear error in the log, the process keeps retrying with backoff
/// (no crash loop that a restart policy would turn into a storm), and it processes nothing.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn wrong_credentials_give_a_clear_error_not_a_crash() {
    let pre = prefix("saslbad");
    let t = topics(&pre);
    create_topics(&t, 1).await;
    let bad = secured("SCRAM-SHA-512", Some("not-the-password"));
    let group = format!("{pre}window");
    let mut w = spawn("window-processor", &t, &group, &refs(&bad), &[]);
    let log = std::env::temp_dir().join(format!("{group}window-processor.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Authentication failed") || text.contains("SASL authentication error") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no authentication error within 60 s: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Still running (retrying) well after the first failure.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "window-processor exited on bad credentials"
    );
    assert!(w.terminate().success(), "SIGTERM should stop it cleanly");
}
