//! Measuring a run: progress sampled from a process's `/metrics`, rates between 10 % and
//! 90 % of the backlog, and the SZ → prediction latency read back from the topics.

use crate::hops::{Appends, Hops};
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
/// ingest (what a downstream reader sees; with exactly-once, after the transaction commits),
/// and `hops`, each hop on the broker's clock (its append times, see [`crate::hops`]).
pub(crate) struct Latency {
    pub(crate) made: Histogram<u64>,
    pub(crate) seen: Histogram<u64>,
    /// Per hop, from the append times of the run's records.
    pub(crate) hops: Hops,
    /// `seen` p50 of the first and of the last quarter of the span (by ingest time): a run
    /// the pipeline cannot keep up with shows latency growing from one to the other.
    pub(crate) quarters: (u64, u64),
    pub(crate) predictions: u64,
    pub(crate) expected: u64,
}

/// Reads `topic` (predictions) from the beginning with `read_committed` until `stop`,
/// recording the latency of the records whose ingest time (ms) is in `[from, to)`.
pub(crate) fn read_latency(
    mut cfg: rdkafka::ClientConfig,
    topic: String,
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
    }
    c.assign(&tpl)?;
    let mut made = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let mut seen = made.clone();
    let (mut first_q, mut last_q) = (made.clone(), made.clone());
    let quarter = (window.1 - window.0) / 4;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(m) = c.poll(Duration::from_millis(50)) else {
            continue;
        };
        let now = sensorflow_runtime::now_ms();
        let m = m?;
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
        hops: Hops::default(),
        quarters: (
            first_q.value_at_quantile(0.5),
            last_q.value_at_quantile(0.5),
        ),
        predictions: n,
        expected: 0,
    })
}

/// Reads SX, SY, SZ, FA and the predictions of a finished run from the beginning to their
/// ends (`read_committed`), with each record's broker append time.
///
/// # Errors
/// A record whose timestamp is not a `LogAppendTime` (the topic was not created for this), or
/// the reader not reaching every partition's end within 10 minutes.
pub(crate) fn read_appends(
    kafka: &KafkaArgs,
    t: &sensorflow_api::TopicNames,
    partitions: i32,
) -> anyhow::Result<Appends> {
    use crate::hops::{FeatureRec, PredictionRec, Reading, Trigger};
    use rdkafka::message::Timestamp;
    use sensorflow_core::proto::{SensorReading, TriggerKind};
    let mut cfg = kafka.client_config();
    cfg.set("group.id", "bench-append-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let c: BaseConsumer = cfg.create()?;
    let topics = [&t.sx, &t.sy, &t.sz, &t.fa, &t.predictions];
    let mut tpl = TopicPartitionList::new();
    // Where each partition ends (the run is over: nothing is appended any more).
    let mut ends = std::collections::HashMap::new();
    for topic in topics {
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            let (_, hi) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            ends.insert((topic.as_str(), p), hi);
        }
    }
    c.assign(&tpl)?;
    let mut a = Appends::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            // Past its end means past the transaction markers too (exactly-once).
            let pos = c.position()?;
            let left = pos
                .elements()
                .iter()
                .filter(|e| {
                    let end = ends.get(&(e.topic(), e.partition())).copied().unwrap_or(0);
                    end > 0 && !matches!(e.offset(), Offset::Offset(o) if o >= end)
                })
                .count();
            if left == 0 {
                return Ok(a);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "reading the run's topics back: {left} partitions not read to their end in 10 min"
            );
            continue;
        };
        let m = m?;
        let append_ms = match m.timestamp() {
            Timestamp::LogAppendTime(ms) => ms,
            other => anyhow::bail!(
                "{}/{}@{}: timestamp {other:?}, not the broker's append time (the topic needs message.timestamp.type=LogAppendTime)",
                m.topic(),
                m.partition(),
                m.offset()
            ),
        };
        let Some(v) = m.payload() else { continue };
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        if topic == t.predictions {
            let Ok(p) = Prediction::decode(v) else {
                continue;
            };
            let trigger = match TriggerKind::try_from(p.trigger) {
                Ok(TriggerKind::TriggerSx) => Trigger::Sx,
                Ok(TriggerKind::TriggerSy) => Trigger::Sy,
                Ok(TriggerKind::TriggerFeatures) => Trigger::Features,
                _ => continue,
            };
            a.predictions.push(PredictionRec {
                trigger,
                source_partition: p.source_partition,
                source_offset: p.source_offset,
                features_source: (
                    p.features_source_partition,
                    p.features_source_offset,
                    p.features_source_index,
                ),
                append_ms,
                ingest_ms: p.ingest_time_ms,
            });
        } else if topic == t.fa {
            let Ok(f) = Feature::decode(v) else { continue };
            a.fa.push(FeatureRec {
                sz_partition: f.source_partition,
                sz_offset: f.source_offset,
                index: f.source_index,
                append_ms,
                ingest_ms: f.ingest_time_ms,
            });
        } else {
            let Ok(r) = SensorReading::decode(v) else {
                continue;
            };
            let reading = Reading {
                partition,
                offset,
                append_ms,
                ingest_ms: r.ingest_time_ms,
            };
            if topic == t.sx {
                a.sx.push(reading);
            } else if topic == t.sy {
                a.sy.push(reading);
            } else {
                a.sz.push(reading);
            }
        }
    }
}

/// Brings up what a fresh broker creates and loads on first use, before any timed run: the
/// consumer offsets topic (a group commit), the transaction state topic and a producer id
/// (an idempotent and a transactional producer). On a broker started for `--latency-only`, the
/// first run's producers otherwise waited 10 s for a producer id ("Coordinator load in
/// progress"), and its measured span began with that backlog.
pub(crate) async fn warm_up(kafka: &KafkaArgs, prefix: &str) -> anyhow::Result<()> {
    use rdkafka::consumer::CommitMode;
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let topic = format!("{prefix}warm-up");
    admin::ensure_topics_with(&kafka.client_config(), &[&topic], 1, 1, &Default::default()).await?;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
            kafka.producer_config("bench-warm-up").create()?;
        p.send(BaseRecord::<(), _>::to(&topic).payload("x"))
            .map_err(|(e, _)| e)?;
        p.flush(Duration::from_secs(60))?;
        let mut cfg = kafka.producer_config("bench-warm-up-txn");
        cfg.set("transactional.id", format!("{prefix}warm-up"));
        let tp: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = cfg.create()?;
        tp.init_transactions(Duration::from_secs(60))?;
        let c: BaseConsumer = kafka
            .consumer_config(&format!("{prefix}warm-up"), "bench-warm-up")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(1))?;
        c.commit(&tpl, CommitMode::Sync)?;
        Ok(())
    })?;
    use rdkafka::admin::{AdminClient, AdminOptions};
    let a: AdminClient<rdkafka::client::DefaultClientContext> = kafka.client_config().create()?;
    a.delete_topics(&[&topic], &AdminOptions::new()).await?;
    Ok(())
}

/// One paced run through both processors on fresh topics: 3 s to start, 10 s of warm-up, then
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
    // Every record stamped by the broker when appended: each hop on one clock.
    let (topics, t) = pipeline_topics_with(
        kafka,
        prefix,
        partitions,
        &[("message.timestamp.type", "LogAppendTime")],
    )
    .await?;
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
    // 10 s: the groups' first rebalance (the broker's 3 s initial rebalance delay) and the
    // backlog it leaves took 5-10 s to clear; with 5 s the first quarter's p50 was seconds,
    // the last quarter's a few hundred ms (2026-12-08, 1,000 and 5,000 SZ/s).
    let from = sensorflow_runtime::now_ms() + 10_000;
    let window = (from, from + seconds as i64 * 1000);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (cfg, topic, stop) = (kafka.client_config(), t.predictions.clone(), stop.clone());
        std::thread::spawn(move || read_latency(cfg, topic, partitions, window, stop))
    };
    eprintln!(
        "latency {prefix}: {rate:.0} SZ readings/s for {} s…",
        seconds + 12
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
            duration: Some(Duration::from_secs(seconds + 12)),
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
    eprintln!("latency {prefix}: reading the append times back…");
    let appends = tokio::task::block_in_place(|| read_appends(kafka, &t, partitions))?;
    drop_topics(kafka, &t).await?;
    Ok(Latency {
        expected: 3 * in_window as u64,
        hops: crate::hops::hops(&appends, window),
        ..measured
    })
}
