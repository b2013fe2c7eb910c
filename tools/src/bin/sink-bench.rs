//! `sink-bench`: the sink from consume to finalised ZSTD Parquet object, next to the limits it
//! is compared with in the same run: raw rdkafka consume of the same topics (the issue's
//! target: sink ≥ 0.7× raw consume) and parquet-rs encode-only rows/s on the same rows. Not a
//! timed test: it prints figures.
//!
//! Run it against topics that already hold data (e.g. after `replay`, `window-processor` and
//! `join-predict`; `tests/sink/run.sh` does this):
//!
//! ```text
//! sink-bench --bootstrap-servers 127.0.0.1:19492 --sink-topics SZ,FA,FI,FD,predictions
//! sink-bench --bootstrap-servers 127.0.0.1:19492 --generate 400000   # one hour, large files
//! ```
//!
//! 0. *raw consume*: a plain librdkafka consumer in a fresh group counts every record of the
//!    topics (no decode, no copy): records/s from its first record to its last (wall), and per
//!    CPU-second of this process.
//! 1. *sink*: the real sink loop (consumer, rows, Parquet ZSTD, local-directory store, commits)
//!    reads every record of the topics with a fresh group and stops once all are stored.
//!    Rows per CPU-second of this process (all its threads) = rows/s per core; the broker runs
//!    in another process and is not counted, so the figure is not bounded by its speed.
//! 2. *consume only*: the same records through a plain librdkafka consumer (the floor).
//! 3. *encode only*: the same records, already in memory, through `Rows` + `encode` on one
//!    thread, cut into the same (topic, partition, hour) files.
use anyhow::Context;
use clap::Parser;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use sensorflow_runtime::metrics::Metrics;
use sensorflow_sink::app::{SinkArgs, run_with};
use sensorflow_sink::encode::encode;
use sensorflow_sink::layout::HourBucket;
use sensorflow_sink::metrics::SinkMetrics;
use sensorflow_sink::rows::{Record, Rows};
use sensorflow_sink::store::LocalStore;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// CPU time (user + system), seconds, from a `/proc/…/stat` file: `/proc/self/stat` for the
/// whole process (all threads), `/proc/thread-self/stat` for the calling thread.
fn cpu_seconds_of(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux reports in USER_HZ, 100 on every mainstream configuration.
    (ticks(11) + ticks(12)) / 100.0
}

fn cpu_seconds() -> f64 {
    cpu_seconds_of("/proc/self/stat")
}

/// CPU of the calling thread: the sink loop runs on the main thread (inside `block_on`).
fn thread_cpu_seconds() -> f64 {
    cpu_seconds_of("/proc/thread-self/stat")
}

/// Raw consume: (records/s wall from the first record to the last, records per CPU-second).
fn raw_consume(args: &SinkArgs, topics: &[String], total: i64) -> anyhow::Result<(f64, f64)> {
    let mut cfg = args.client.kafka.consumer_config(
        &format!("sink-bench-raw-{}", std::process::id()),
        "sink-bench",
    );
    cfg.set("statistics.interval.ms", "0");
    let c: BaseConsumer = cfg.create()?;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    c.subscribe(&refs)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut got = 0i64;
    let mut first = None;
    while got < total {
        anyhow::ensure!(
            Instant::now() < deadline,
            "raw consume timed out at {got}/{total}"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            m?;
            if first.is_none() {
                first = Some((Instant::now(), cpu_seconds()));
            }
            got += 1;
        }
    }
    let (t, c0) = first.unwrap_or((Instant::now(), cpu_seconds()));
    Ok((
        total as f64 / t.elapsed().as_secs_f64(),
        total as f64 / (cpu_seconds() - c0),
    ))
}

fn read_all(args: &SinkArgs, topics: &[String], total: i64) -> anyhow::Result<Vec<OwnedMessage>> {
    let mut cfg = args.client.kafka.consumer_config(
        &format!("sink-bench-read-{}", std::process::id()),
        "sink-bench",
    );
    cfg.set("statistics.interval.ms", "0");
    let c: BaseConsumer = cfg.create()?;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    c.subscribe(&refs)?;
    let mut out = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(600);
    while (out.len() as i64) < total && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(500)) {
            out.push(m?.detach());
        }
    }
    Ok(out)
}

/// sink-bench flags: the sink's, plus an optional generated input.
#[derive(Debug, Parser)]
#[command(name = "sink-bench")]
struct BenchArgs {
    /// Produce this many SZ readings (synthetic values, one event hour, 64 clients) into a
    /// fresh topic and archive that instead of the `--sink-topics`: files as large as
    /// `--max-records` allows, so per-file costs do not dominate.
    #[arg(long, default_value_t = 0)]
    generate: u64,
    /// Partitions of the generated topic.
    #[arg(long, default_value_t = 4)]
    generate_partitions: i32,
    #[command(flatten)]
    sink: SinkArgs,
}

async fn generate(args: &SinkArgs, topic: &str, n: u64, partitions: i32) -> anyhow::Result<()> {
    use prost::Message as _;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let client = args.client.kafka.client_config();
    sensorflow_kafka::admin::ensure_topics(&client, &[topic], partitions, 1).await?;
    let producer: FutureProducer = args.client.kafka.producer_config("sink-bench").create()?;
    // The previous full hour: every event time in the past (a stock broker refuses records
    // more than 1 h ahead of its clock; the current hour's end is up to 1 h ahead).
    let hour = sensorflow_runtime::now_ms() / 3_600_000 * 3_600_000 - 3_600_000;
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let t = hour + (i as i64 * 3_599_999) / n as i64;
        let value = sensorflow_core::proto::SensorReading {
            event_time_ms: t,
            value: 1.5 + (i as f64 / 300.0).sin(),
            sensor: sensorflow_core::proto::Sensor::Sz as i32,
            ingest_time_ms: t,
        }
        .encode_to_vec();
        let key = format!("client-{}", i % 64);
        let rec = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .timestamp(t);
        pending.push_back(producer.send_result(rec).map_err(|(e, _)| e)?);
        if pending.len() >= 50_000 {
            while let Some(f) = pending.pop_front() {
                f.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    while let Some(f) = pending.pop_front() {
        f.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The bench always writes to a temporary local directory; add the flag clap requires.
    let mut argv: Vec<String> = std::env::args().collect();
    if !argv
        .iter()
        .any(|a| a.starts_with("--local-dir") || a.starts_with("--bucket"))
    {
        argv.push("--local-dir=unused".into());
    }
    let bench = BenchArgs::parse_from(argv);
    let mut args = bench.sink;
    sensorflow_process::telemetry::init(args.serve.log_format);
    let run_id = format!("{}-{}", std::process::id(), sensorflow_runtime::now_ms());
    if bench.generate > 0 {
        let topic = format!("sink-bench-{run_id}-SZ");
        eprintln!(
            "sink-bench: producing {} readings to {topic}",
            bench.generate
        );
        generate(&args, &topic, bench.generate, bench.generate_partitions).await?;
        args.client.topics.topic_sz = topic.clone();
        args.sink_topics = vec![topic];
    }
    let dir = std::env::temp_dir().join(format!("sink-bench-{run_id}"));
    args.group_id = format!("sink-bench-{run_id}");
    args.local_dir = Some(dir.clone());
    args.bucket = None;
    let cfg = args.config();
    let topics: Vec<String> = cfg.topics.iter().map(|(t, _)| t.clone()).collect();
    let client = args.client.kafka.client_config();
    let mut total = 0i64;
    for t in &topics {
        total += sensorflow_kafka::admin::message_count(&client, t)
            .with_context(|| format!("counting {t}"))?;
    }
    anyhow::ensure!(total > 0, "topics {topics:?} are empty: produce data first");
    eprintln!("sink-bench: {total} records in {topics:?}");

    // 0. raw consume (the limit).
    let (raw_wall, raw_cpu) = raw_consume(&args, &topics, total)?;

    // 1. consume → finalised object.
    let sm = SinkMetrics::default();
    let metrics = Metrics::new_with(|r| sm.register(r));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let watch = {
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        let topics = topics.clone();
        tokio::spawn(async move {
            let mut first = None;
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let text = metrics.encode();
                let seen: f64 = text
                    .lines()
                    .filter(|l| l.starts_with("sensorflow_records_in_total{"))
                    .filter(|l| topics.iter().any(|t| l.contains(&format!("topic=\"{t}\""))))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                if seen > 0.0 && first.is_none() {
                    first = Some(Instant::now());
                }
                if seen as i64 >= total {
                    shutdown.cancel();
                    return first;
                }
            }
        })
    };
    let (c0, l0, t0) = (cpu_seconds(), thread_cpu_seconds(), Instant::now());
    let summary = run_with(&args, LocalStore::new(&dir), metrics, sm, shutdown).await?;
    let (cpu, lcpu, wall) = (
        cpu_seconds() - c0,
        thread_cpu_seconds() - l0,
        t0.elapsed().as_secs_f64(),
    );
    let first = watch.await.ok().flatten().unwrap_or(t0);
    let from_first = first.elapsed().as_secs_f64();
    let rows = summary.rows_written as f64;

    // 2. consume only: the same records through a plain librdkafka consumer (the floor).
    let (c2, t2) = (cpu_seconds(), Instant::now());
    let msgs = read_all(&args, &topics, total)?;
    let (ccpu, cwall) = (cpu_seconds() - c2, t2.elapsed().as_secs_f64());

    // 3. encode only, same records, one thread, cut into the same (topic, partition, hour)
    // files of at most max-records rows.
    let kinds: HashMap<&str, _> = cfg.topics.iter().map(|(t, k)| (t.as_str(), *k)).collect();
    let mut by_part: HashMap<(String, i32, HourBucket), Vec<&OwnedMessage>> = HashMap::new();
    for m in &msgs {
        let bucket = HourBucket::of(m.timestamp().to_millis());
        by_part
            .entry((m.topic().to_owned(), m.partition(), bucket))
            .or_default()
            .push(m);
    }
    let (c1, t1) = (cpu_seconds(), Instant::now());
    let mut enc_rows = 0u64;
    let mut enc_bytes = 0u64;
    let mut enc_files = 0u64;
    for ((topic, _, _), ms) in &by_part {
        let mut rows = Rows::new(kinds[topic.as_str()], cfg.framing);
        for chunk in ms.chunks(cfg.rotation.limits.max_records as usize) {
            for m in chunk {
                let _ = rows.append(&Record {
                    key: m.key(),
                    value: m.payload(),
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp_ms: m.timestamp().to_millis(),
                    headers: None,
                });
            }
            enc_rows += rows.len() as u64;
            enc_files += 1;
            let batch = rows.finish()?;
            enc_bytes += encode(&batch, &cfg.encode, &[])?.len() as u64;
        }
    }
    let (ecpu, ewall) = (cpu_seconds() - c1, t1.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);

    let sink_rate = rows / cpu;
    let enc_rate = enc_rows as f64 / ecpu;
    println!(
        "sink-bench: {} rows, {} files, {} bytes (ZSTD) from {:?}",
        summary.rows_written, summary.files_written, summary.bytes_written, topics
    );
    println!(
        "  consume → finalised object: {sink_rate:>10.0} rows/s per core  ({rows:.0} rows, {cpu:.2} CPU-s; {wall:.2} s wall = {:.0} rows/s, broker-bound)",
        rows / wall
    );
    println!(
        "    of which the loop thread: {:>10.0} rows/s per core  ({lcpu:.2} CPU-s: decode, rows, encode, store, commit; librdkafka I/O threads excluded)",
        rows / lcpu
    );
    println!(
        "  consume only (librdkafka):  {:>10.0} rows/s per core  ({} records, {ccpu:.2} CPU-s, {cwall:.2} s wall)",
        msgs.len() as f64 / ccpu,
        msgs.len()
    );
    println!(
        "  parquet-rs encode only:     {enc_rate:>10.0} rows/s per core  ({enc_rows} rows in {enc_files} files, {ecpu:.2} CPU-s, {ewall:.2} s wall, {enc_bytes} bytes)"
    );
    println!("  ratio sink / encode-only:   {:.2}", sink_rate / enc_rate);
    println!(
        "  raw rdkafka consume (limit): {raw_wall:>9.0} rows/s wall (first record -> last), {raw_cpu:.0} per core"
    );
    println!(
        "  sink, first record -> last object finalised: {:>9.0} rows/s wall ({from_first:.2} s)",
        rows / from_first
    );
    let ratio = rows / from_first / raw_wall;
    println!(
        "  ratio sink / raw consume:   {ratio:.2} wall (target >= 0.7: {}), {:.2} per core",
        if ratio >= 0.7 { "met" } else { "MISSED" },
        sink_rate / raw_cpu
    );
    Ok(())
}
