//! Measuring a run: progress sampled from a process's `/metrics`, rates between 10 % and
//! 90 % of the backlog, and the SZ → prediction latency read back from the topics.

use crate::load::*;
use crate::procs::*;
use hdrhistogram::Histogram;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sensorflow_api::env;
use sensorflow_core::proto::{Feature, Prediction};
use sensorflow_kafka::admin;
use sensorflow_kafka::config::{KafkaArgs, TopicArgs};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(crate) fn wait_lag_zero(kafka: &KafkaArgs, group: &str, topics: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if admin::group_lag(&kafka.client_config(), group, topics)? == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "lag did not reach 0");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A consumer group's committed offsets over some topics (one OffsetFetch per call).
pub(crate) struct Progress {
    pub(crate) c: BaseConsumer,
    pub(crate) tpl: TopicPartitionList,
}

impl Progress {
    pub(crate) fn new(
        kafka: &KafkaArgs,
        group: &str,
        topics: &[&str],
        partitions: i32,
    ) -> anyhow::Result<Self> {
        let mut cfg = kafka.client_config();
        cfg.set("group.id", group)
            .set("enable.auto.commit", "false");
        let c: BaseConsumer = cfg.create()?;
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            for p in 0..partitions {
                tpl.add_partition(t, p);
            }
        }
        Ok(Self { c, tpl })
    }

    /// Sum of the committed offsets (= records committed: the bench's topics start at 0 and
    /// hold no transaction markers).
    pub(crate) fn committed(&self) -> anyhow::Result<i64> {
        let r = self
            .c
            .committed_offsets(self.tpl.clone(), Duration::from_secs(10))?;
        Ok(r.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .sum())
    }
}

/// How a process went through a backlog.
pub(crate) struct Rate {
    /// Records per second between the samples at 10 % and at 90 % of the backlog.
    pub(crate) per_s: f64,
    /// Seconds from the start to the first record processed.
    pub(crate) first_s: f64,
    /// Seconds from the start to the last record processed.
    pub(crate) done_s: f64,
    /// CPU time (user + system, every thread) per million records between the same two
    /// samples, s: what the process costs, whatever else the machine runs meanwhile.
    pub(crate) cpu_per_m: Option<f64>,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>9.0} records/s  (first record {:.1} s, last {:.1} s after start)",
            self.per_s, self.first_s, self.done_s
        )?;
        if let Some(c) = self.cpu_per_m {
            write!(f, ", {c:.2} CPU-s per M records")?;
        }
        Ok(())
    }
}

/// Samples `child`'s records in every 20 ms until it has processed `total`.
/// With `profile` (`--perf-dir` and a name), `perf record` is attached at the first record
/// (attached at spawn, it misses librdkafka's threads, which start later).
pub(crate) fn measure(
    child: &mut Child,
    total: u64,
    since: Instant,
    profile: Option<(&Path, &str)>,
) -> anyhow::Result<Rate> {
    let timeout = Duration::from_secs(1200);
    let (mut first, mut lo, mut hi) = (None, None, None);
    loop {
        let c = child.records_in().unwrap_or(0);
        let t = since.elapsed().as_secs_f64();
        if c > 0 && first.is_none() {
            first = Some(t);
            if let Some((dir, name)) = profile {
                child.profile(Some(dir), name)?;
            }
        }
        if c * 10 >= total && lo.is_none() {
            lo = Some((t, c, child.cpu_s()));
        }
        if c * 10 >= total * 9 && hi.is_none() {
            hi = Some((t, c, child.cpu_s()));
        }
        if c >= total {
            let (lo, hi) = (lo.unwrap_or((t, c, None)), hi.unwrap_or((t, c, None)));
            let cpu_per_m = match (lo.2, hi.2) {
                (Some(a), Some(b)) if hi.1 > lo.1 => Some((b - a) / (hi.1 - lo.1) as f64 * 1e6),
                _ => None,
            };
            let per_s = if hi.0 > lo.0 {
                (hi.1 - lo.1) as f64 / (hi.0 - lo.0)
            } else {
                total as f64 / (t - first.unwrap_or(0.0)).max(1e-3)
            };
            return Ok(Rate {
                per_s,
                first_s: first.unwrap_or(t),
                done_s: t,
                cpu_per_m,
            });
        }
        anyhow::ensure!(
            since.elapsed() < timeout,
            "processed {c} of {total} records in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `progress` shows `total` records committed.
pub(crate) fn wait_committed(progress: &Progress, total: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while progress.committed()? < total {
        anyhow::ensure!(Instant::now() < deadline, "commits stalled below {total}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A process measured on a backlog: its rate and its peak RSS.
pub(crate) struct Measured {
    pub(crate) rate: Rate,
    pub(crate) peak_rss: Option<u64>,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.rate)?;
        if let Some(b) = self.peak_rss {
            write!(f, ", peak RSS {:.0} MiB", b as f64 / 1048576.0)?;
        }
        Ok(())
    }
}

/// What `run_measured` starts.
pub(crate) struct Job<'a> {
    pub(crate) program: &'a Path,
    pub(crate) args: Vec<String>,
    pub(crate) group: String,
    pub(crate) extra: &'a [(&'a str, String)],
    /// Input topics and the records they hold.
    pub(crate) inputs: &'a [&'a str],
    pub(crate) total: i64,
    /// Name of the profile (`--perf-dir`).
    pub(crate) name: String,
    /// Wait until the whole input is committed (a later phase reads the outputs).
    pub(crate) wait_commits: bool,
}

/// Starts `job`, measures its rate from its group's commits, stops it.
pub(crate) fn run_measured(
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    partitions: i32,
    perf_dir: Option<&Path>,
    job: Job<'_>,
) -> anyhow::Result<Measured> {
    eprintln!("{}…", job.name);
    let progress = Progress::new(kafka, &job.group, job.inputs, partitions)?;
    let started = Instant::now();
    let mut child = spawn(job.program, &job.args, kafka, topics, &job.group, job.extra)?;
    let profile = perf_dir.map(|d| (d, job.name.as_str()));
    let rate = measure(&mut child, job.total as u64, started, profile)?;
    child.stop_profile();
    if job.wait_commits {
        wait_committed(&progress, job.total)?;
    }
    Ok(Measured {
        rate,
        peak_rss: child.peak_rss(),
    })
}

/// Latency of one paced run, ms: `made` = `predicted_at − ingest` (when join-predict made the
/// prediction), `seen` = arrival at a `read_committed` consumer of the predictions topic −
/// ingest (what a downstream reader sees; with exactly-once, after the transaction commits).
pub(crate) struct Latency {
    pub(crate) made: Histogram<u64>,
    pub(crate) seen: Histogram<u64>,
    /// Arrival of the FA features at the same reader − ingest of their SZ reading: the
    /// window-processor's hop alone (the rest of `seen` is the join's).
    pub(crate) features: Histogram<u64>,
    /// `seen` p50 of the first and of the last quarter of the span (by ingest time): a run
    /// the pipeline cannot keep up with shows latency growing from one to the other.
    pub(crate) quarters: (u64, u64),
    pub(crate) predictions: u64,
    pub(crate) expected: u64,
}

/// Reads `topic` (predictions) and `fa` from the beginning with `read_committed` until `stop`,
/// recording the latency of the records whose ingest time (ms) is in `[from, to)`.
pub(crate) fn read_latency(
    mut cfg: rdkafka::ClientConfig,
    topic: String,
    fa: String,
    partitions: i32,
    window: (i64, i64),
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Latency> {
    cfg.set("group.id", "bench-latency-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let c: BaseConsumer = cfg.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        tpl.add_partition_offset(&fa, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut made = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let mut seen = made.clone();
    let mut features = made.clone();
    let (mut first_q, mut last_q) = (made.clone(), made.clone());
    let quarter = (window.1 - window.0) / 4;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(m) = c.poll(Duration::from_millis(50)) else {
            continue;
        };
        let now = sensorflow_runtime::now_ms();
        let m = m?;
        if m.topic() == fa {
            if let Some(f) = m.payload().and_then(|v| Feature::decode(v).ok())
                && (window.0..window.1).contains(&f.ingest_time_ms)
            {
                features.saturating_record((now - f.ingest_time_ms).max(1) as u64);
            }
            continue;
        }
        let Some(p) = m.payload().and_then(|v| Prediction::decode(v).ok()) else {
            continue;
        };
        if !(window.0..window.1).contains(&p.ingest_time_ms) {
            continue;
        }
        n += 1;
        made.saturating_record((p.predicted_at_ms - p.ingest_time_ms).max(1) as u64);
        let l = (now - p.ingest_time_ms).max(1) as u64;
        seen.saturating_record(l);
        if p.ingest_time_ms < window.0 + quarter {
            first_q.saturating_record(l);
        } else if p.ingest_time_ms >= window.1 - quarter {
            last_q.saturating_record(l);
        }
    }
    Ok(Latency {
        made,
        seen,
        features,
        quarters: (
            first_q.value_at_quantile(0.5),
            last_q.value_at_quantile(0.5),
        ),
        predictions: n,
        expected: 0,
    })
}

/// One paced run through both processors on fresh topics: 3 s to start, 5 s of warm-up, then
/// `seconds` measured and 2 s more (the last measured triggers need the next event-time step).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn latency_run(
    kafka: &KafkaArgs,
    bin_dir: &Path,
    prefix: &str,
    partitions: i32,
    clients: usize,
    rate: f64,
    seconds: u64,
    extra: &[(&str, String)],
    common_clock: bool,
) -> anyhow::Result<Latency> {
    let (topics, t) = pipeline_topics(kafka, prefix, partitions).await?;
    let (wg, jg) = (format!("{prefix}window"), format!("{prefix}join"));
    let mut env: Vec<(&str, String)> = extra.iter().map(|(k, v)| (*k, v.clone())).collect();
    env.push((env::UPSTREAM_GROUP_ID, wg.clone()));
    let w = spawn(
        &bin_dir.join("window-processor"),
        &[],
        kafka,
        &topics,
        &wg,
        &env,
    )?;
    let j = spawn(
        &bin_dir.join("join-predict"),
        &[],
        kafka,
        &topics,
        &jg,
        &env,
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let from = sensorflow_runtime::now_ms() + 5_000;
    let window = (from, from + seconds as i64 * 1000);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (cfg, topic, fa, stop) = (
            kafka.client_config(),
            t.predictions.clone(),
            t.fa.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || read_latency(cfg, topic, fa, partitions, window, stop))
    };
    eprintln!(
        "latency {prefix}: {rate:.0} SZ readings/s for {} s…",
        seconds + 7
    );
    // The sensors send almost at once (linger 1 ms): their batching is not the pipeline's.
    let (_, in_window) = produce(
        kafka,
        &Load {
            sz: &t.sz,
            sx_sy: Some((&t.sx, &t.sy)),
            n: 0,
            clients,
            rate: Some(rate),
            duration: Some(Duration::from_secs(seconds + 7)),
            window: Some(window),
            overrides: &[("linger.ms", "1")],
            common_clock,
        },
    )
    .await?;
    tokio::task::block_in_place(|| {
        wait_lag_zero(kafka, &wg, &[&t.sz])?;
        wait_lag_zero(kafka, &jg, &t.join_inputs())
    })?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let measured = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the latency reader panicked"))??;
    drop((w, j));
    drop_topics(kafka, &t).await?;
    Ok(Latency {
        expected: 3 * in_window as u64,
        ..measured
    })
}
