//! Harness for tests against a real Kafka-protocol broker, started by `scripts/test.sh`
//! (address in `SENSORFLOW_TEST_BOOTSTRAP`). Each test isolates itself with a topic prefix and
//! its own consumer groups, and runs the real processor binaries as child processes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sensorflow_kafka::config::{KafkaArgs, TopicArgs};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bootstrap() -> String {
    std::env::var("SENSORFLOW_TEST_BOOTSTRAP")
        .expect("SENSORFLOW_TEST_BOOTSTRAP is not set: run these tests with ./run.sh test (it starts the broker)")
}

pub fn config() -> ClientConfig {
    KafkaArgs::plain(&bootstrap()).client_config()
}

/// A unique prefix per test and run.
pub fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    format!("{test}-{}-{nanos}-", std::process::id())
}

pub fn topics(prefix: &str) -> TopicArgs {
    TopicArgs::prefixed(prefix)
}

pub fn topic_env(t: &TopicArgs) -> Vec<(&'static str, String)> {
    vec![
        ("SF_TOPIC_SX", t.topic_sx.clone()),
        ("SF_TOPIC_SY", t.topic_sy.clone()),
        ("SF_TOPIC_SZ", t.topic_sz.clone()),
        ("SF_TOPIC_FA", t.topic_fa.clone()),
        ("SF_TOPIC_FI", t.topic_fi.clone()),
        ("SF_TOPIC_FD", t.topic_fd.clone()),
        ("SF_TOPIC_PREDICTIONS", t.topic_predictions.clone()),
        ("SF_TOPIC_DLQ", t.topic_dlq.clone()),
        ("SF_TOPIC_LATE", t.topic_late.clone()),
    ]
}

/// Creates the pipeline's topics as the operator and `sensorflow create-topics` do, with
/// `retention.ms=-1`: the tests replay historic event times (record timestamps), which a
/// stock broker's 7-day retention would delete under the running test.
pub async fn create_topics(t: &TopicArgs, partitions: i32) {
    create_topics_with(t, partitions, &[]).await;
}

/// [`create_topics`] with more topic configuration on every topic.
pub async fn create_topics_with(t: &TopicArgs, partitions: i32, extra: &[(&str, &str)]) {
    let names = t.topics();
    let mut common =
        std::collections::BTreeMap::from([("retention.ms".to_owned(), "-1".to_owned())]);
    common.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let configs = sensorflow_kafka::topic_configs(&names, &common, |_| Default::default());
    sensorflow_kafka::admin::ensure_topics_with(&config(), &names.all(), partitions, 1, &configs)
        .await
        .unwrap();
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`STOP`, `CONT`, …) with `kill`.
    pub fn signal(&self, signal: &str) {
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{signal} {}", self.name);
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within 30 s of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts one of the workspace binaries with the test's topics and group.
pub fn spawn(
    bin: &str,
    t: &TopicArgs,
    group: &str,
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> Proc {
    spawn_as(bin, t, group, "", extra_env, args)
}

/// Another crate's binary, built beside this crate's by `./run.sh test` (`replay` of
/// `sensorflow-tools`, `gcs-sink` of `sensorflow-sink`): cargo gives a test the path of its own
/// crate's binaries only.
pub fn sibling_bin(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_window-processor")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p sensorflow-tools -p sensorflow-sink --bins, as ./run.sh test does)",
        path.display()
    );
    path
}

/// Like [`spawn`], logging to `<tmp>/<group><tag><bin>.log` (several members of one group).
pub fn spawn_as(
    bin: &str,
    t: &TopicArgs,
    group: &str,
    tag: &str,
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> Proc {
    let path = match bin {
        "window-processor" => env!("CARGO_BIN_EXE_window-processor").into(),
        "join-predict" => env!("CARGO_BIN_EXE_join-predict").into(),
        "replay" => sibling_bin("replay"),
        other => panic!("unknown binary {other}"),
    };
    let log = std::env::temp_dir().join(format!("{group}{tag}{bin}.log"));
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap())
        .env("SF_GROUP_ID", group)
        .env("SF_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .envs(topic_env(t))
        .stdout(Stdio::null())
        .stderr(
            // Appended: a restarted process (kill -9 tests) keeps its predecessors' logs.
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        );
    if bin == "join-predict" {
        // The tests name a pipeline's groups `<prefix>window` / `<prefix>join`: the join
        // watches its window-processor's lag as the operator configures it.
        if let Some(pre) = group.strip_suffix("join") {
            cmd.env("SF_UPSTREAM_GROUP_ID", format!("{pre}window"));
        }
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().unwrap(),
        name: format!("{bin} (log: {})", log.display()),
    }
}

/// Runs the replay binary to completion.
pub fn replay(t: &TopicArgs, args: &[&str]) {
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/household_power.csv.xz"
    );
    let mut p = spawn(
        "replay",
        t,
        "replay",
        &[],
        &[&["--input", data], args].concat(),
    );
    let status = p.child.wait().unwrap();
    assert!(status.success(), "replay failed: {status}");
}

/// The five inputs of join-predict: SX, SY, FA, FI, FD.
pub fn join_inputs(t: &TopicArgs) -> [&str; 5] {
    [
        &t.topic_sx,
        &t.topic_sy,
        &t.topic_fa,
        &t.topic_fi,
        &t.topic_fd,
    ]
}

/// `group`'s lag on `topics`, records; -1 when the broker could not answer (a busy broker can
/// answer a watermark query with a retriable error, NotLeaderForPartition: ask again).
pub fn group_lag(group: &str, topics: &[&str]) -> i64 {
    sensorflow_kafka::admin::group_lag(&config(), group, topics).unwrap_or(-1)
}

/// Waits until `group` has no lag on `topics`.
pub fn wait_drained(group: &str, topics: &[&str], timeout: Duration) {
    let started = Instant::now();
    loop {
        let lag = group_lag(group, topics);
        if lag == 0 {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "group {group} still has lag {lag} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every record of `topic`, per partition in offset order, as a `read_committed` reader sees
/// it: aborted records and transaction markers occupy offsets but are never delivered, so the
/// read ends when the consumer's position reaches each partition's end offset (not when a
/// count of offsets has arrived). Panics after 120 s without reaching the end.
pub fn read_all(topic: &str) -> Vec<OwnedMessage> {
    let cfg = config();
    let c: BaseConsumer = {
        let mut cc = cfg.clone();
        cc.set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        cc.create().unwrap()
    };
    let n = sensorflow_kafka::admin::partition_counts(&cfg, &[topic]).unwrap()[0];
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..n {
        let (lo, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        if hi > lo {
            tpl.add_partition_offset(topic, p, Offset::Offset(lo))
                .unwrap();
            ends.insert(p, hi);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    c.assign(&tpl).unwrap();
    let started = Instant::now();
    let at_end = |c: &BaseConsumer| {
        let pos = c.position().unwrap();
        pos.elements().iter().all(|e| match e.offset() {
            Offset::Offset(o) => o >= ends[&e.partition()],
            _ => false,
        })
    };
    loop {
        match c.poll(Duration::from_millis(200)) {
            Some(m) => {
                let m = m.unwrap();
                if m.offset() < ends[&m.partition()] {
                    out.push(m.detach());
                }
            }
            None => {
                if at_end(&c) {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "reading {topic} timed out (an open transaction holds the last stable offset back?)"
        );
    }
    out.sort_by_key(|m| (m.partition(), m.offset()));
    out
}

pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    let h = m.headers()?;
    (0..h.count())
        .map(|i| h.get(i))
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

pub fn producer() -> FutureProducer {
    KafkaArgs::plain(&bootstrap())
        .producer_config("test")
        .create()
        .unwrap()
}

pub async fn produce(
    p: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    value: &[u8],
    ts: Option<i64>,
) {
    let mut r = FutureRecord::<str, [u8]>::to(topic).payload(value);
    if let Some(k) = key {
        r = r.key(k);
    }
    if let Some(ts) = ts {
        r = r.timestamp(ts);
    }
    p.send(r, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

pub fn reading(t: i64, v: f64) -> Vec<u8> {
    sensorflow_core::proto::SensorReading {
        event_time_ms: t,
        value: v,
        sensor: 0,
        ingest_time_ms: 0,
    }
    .encode_to_vec()
}

/// A reading of `sensor` at event time `t`, ms, encoded (plain protobuf).
pub fn sensor_reading(sensor: sensorflow_core::proto::Sensor, t: i64, v: f64) -> Vec<u8> {
    sensorflow_core::proto::SensorReading {
        event_time_ms: t,
        value: v,
        sensor: sensor as i32,
        ingest_time_ms: 0,
    }
    .encode_to_vec()
}

/// Equal within 1e-9 relative (the processors' f64 arithmetic against the reference's).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

/// A bin is right if it matches, or the value sits within rounding of a bin edge.
pub fn bin_ok(range: sensorflow_core::binning::BinRange, value: f64, bin: u32) -> bool {
    range.bin(value) == bin
        || range.bin(value * (1.0 + 1e-12) + 1e-12) == bin
        || range.bin(value * (1.0 - 1e-12) - 1e-12) == bin
}

/// The reference features (`sensorflow_core::window::reference_features`) of every SZ record,
/// computed from the SZ topic as the processor saw it (per partition, in offset order), keyed
/// by (partition, offset). `unframe` strips the value's wire framing (identity for plain
/// protobuf); records without a key, undecodable or non-finite are left out, as the processor
/// dead-letters them. `None`: the reading was late.
pub fn reference(
    sz: &[OwnedMessage],
    cfg: sensorflow_core::window::WindowConfig,
    unframe: fn(&[u8]) -> &[u8],
) -> HashMap<(i32, i64), Option<sensorflow_core::window::Aggregates>> {
    use sensorflow_core::window::{Reading, reference_features};
    let mut by_part: std::collections::BTreeMap<i32, Vec<&OwnedMessage>> =
        std::collections::BTreeMap::new();
    for m in sz {
        by_part.entry(m.partition()).or_default().push(m);
    }
    let mut out = HashMap::new();
    for (p, msgs) in by_part {
        let decoded: Vec<(String, Reading, i64)> = msgs
            .iter()
            .filter_map(|m| {
                let key = std::str::from_utf8(m.key()?).ok()?.to_owned();
                let r =
                    sensorflow_core::proto::SensorReading::decode(unframe(m.payload()?)).ok()?;
                r.value.is_finite().then_some((
                    key,
                    Reading {
                        t: r.event_time_ms,
                        v: r.value,
                    },
                    m.offset(),
                ))
            })
            .collect();
        let arrivals: Vec<(&str, Reading)> =
            decoded.iter().map(|(k, r, _)| (k.as_str(), *r)).collect();
        for ((_, _, off), agg) in decoded.iter().zip(reference_features(cfg, &arrivals)) {
            out.insert((p, *off), agg);
        }
    }
    out
}

/// A free TCP port on loopback (for a child's `/metrics`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Status code and body of a GET on loopback, or `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.get(9..12)?.parse().ok()?;
    Some((code, buf.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()))
}

/// The value of the first sample of `name` in a Prometheus text exposition, if present.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Resident set size of process `pid` now and at its peak (`VmRSS`, `VmHWM`), bytes.
pub fn rss_bytes(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}
