//! Child processes of the bench (the processors and the pass-through), stopped on drop.

use anyhow::Context;
use sensorflow_api::env;
use sensorflow_kafka::config::{KafkaArgs, TopicArgs};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A spawned process (processor or pass-through), with `perf record` attached when asked;
/// dropping it stops perf (SIGINT: it writes its data) and then the process (SIGTERM).
pub(crate) struct Child {
    pub(crate) child: std::process::Child,
    pub(crate) perf: Option<std::process::Child>,
    /// Where it serves `/metrics`.
    pub(crate) metrics: SocketAddr,
}

pub(crate) fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Child {
    /// Attaches `perf record -g` to the process, writing `<dir>/<name>.perf.data`.
    pub(crate) fn profile(&mut self, dir: Option<&Path>, name: &str) -> anyhow::Result<()> {
        let Some(dir) = dir else { return Ok(()) };
        std::fs::create_dir_all(dir)?;
        let perf = Command::new("perf")
            .args(["record", "-g", "-F", "499", "-o"])
            .arg(dir.join(format!("{name}.perf.data")))
            .args(["-p", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record")?;
        self.perf = Some(perf);
        Ok(())
    }

    /// Stops perf (if attached) so the profile covers the measured span only.
    pub(crate) fn stop_profile(&mut self) {
        if let Some(mut p) = self.perf.take() {
            signal(p.id(), "INT");
            let _ = p.wait();
        }
    }

    /// Its `sensorflow_records_in_total`, summed over topics (`None` while it does not answer).
    pub(crate) fn records_in(&self) -> Option<u64> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let n = body
            .lines()
            .filter(|l| l.starts_with("sensorflow_records_in_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        body.contains("sensorflow_").then_some(n as u64)
    }

    /// CPU time the process has used (user + system, all threads), s (`/proc/<pid>/stat`
    /// fields 14 and 15, in clock ticks of 10 ms: `CLK_TCK` is 100 on Linux).
    pub(crate) fn cpu_s(&self) -> Option<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the parenthesised command name, which may contain spaces.
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / 100.0)
    }

    /// Peak resident set size (VmHWM) of the process, bytes.
    pub(crate) fn peak_rss(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop_profile();
        signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

/// A free loopback address (bound and released: a tiny race, fine on a bench machine).
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts `program args` with the pipeline's topic names, the broker, `group` and a free
/// metrics address in its environment (plus `extra`).
pub(crate) fn spawn(
    program: &Path,
    args: &[String],
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    group: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Child> {
    let env = [
        (env::TOPIC_SX, &topics.topic_sx),
        (env::TOPIC_SY, &topics.topic_sy),
        (env::TOPIC_SZ, &topics.topic_sz),
        (env::TOPIC_FA, &topics.topic_fa),
        (env::TOPIC_FI, &topics.topic_fi),
        (env::TOPIC_FD, &topics.topic_fd),
        (env::TOPIC_PREDICTIONS, &topics.topic_predictions),
        (env::TOPIC_DLQ, &topics.topic_dlq),
        (env::TOPIC_LATE, &topics.topic_late),
    ];
    let metrics = free_addr()?;
    let child = Command::new(program)
        .args(args)
        .envs(env)
        .envs(extra.iter().map(|(k, v)| (*k, v)))
        .env(env::KAFKA_BOOTSTRAP_SERVERS, &kafka.bootstrap_servers)
        .env(env::GROUP_ID, group)
        .env(env::METRICS_ADDR, metrics.to_string())
        .env(env::RUST_LOG, "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(Child {
        child,
        perf: None,
        metrics,
    })
}
