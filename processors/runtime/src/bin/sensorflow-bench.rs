//! `sensorflow-bench`: prints the benchmark figures quoted in the README.
//!
//! - `engine`: the pure window engine, SZ readings/s on one core, and bytes of window state
//!   per buffered reading;
//! - `broker`: through a real broker, the raw rdkafka consume rate of an SZ topic next to the
//!   window-processor's end-to-end rate on the same topic, and SZ → prediction latency
//!   percentiles at half of the measured maximum load.

use anyhow::Context;
use clap::{Parser, Subcommand};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use sensorflow_core::proto::{Sensor, SensorReading};
use sensorflow_core::window::{Reading, WatermarkScope, WindowConfig, WindowEngine};
use sensorflow_runtime::kafka::{KafkaArgs, TopicArgs};
use sensorflow_runtime::{admin, summary};
use std::hint::black_box;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// sensorflow-bench: SensorFlow's benchmark figures.
#[derive(Parser)]
#[command(name = "sensorflow-bench", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The pure window engine: readings/s on one core and state bytes per reading, for the
    /// household shape (1 440 clients, a reading a minute: 10 per window, cache-resident) and a
    /// dense shape (10 000 clients, a reading a second: 600 per window, 72 MB of state).
    Engine {
        /// Clients (keys); 0 = both standard shapes.
        #[arg(long, default_value_t = 0)]
        clients: usize,
        /// Readings per client.
        #[arg(long, default_value_t = 2_000)]
        readings: usize,
        /// Event-time spacing of one client's readings, ms (1 000 = 600 readings per window).
        #[arg(long, default_value_t = 1_000)]
        spacing_ms: i64,
        /// Engine call to time.
        #[arg(long, value_enum, default_value_t = EngineApi::Batch)]
        api: EngineApi,
        /// Timed runs per shape (the best is the figure; the spread is printed).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Through a real broker: consume rate vs window-processor rate, and latency.
    Broker {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Directory holding the release binaries (window-processor, join-predict).
        #[arg(long)]
        bin_dir: PathBuf,
        /// SZ readings for the throughput comparison.
        #[arg(long, default_value_t = 200_000)]
        readings: usize,
        /// Partitions of the benchmark topics.
        #[arg(long, default_value_t = 100)]
        partitions: i32,
        /// Seconds of load for the latency measurement.
        #[arg(long, default_value_t = 20)]
        latency_seconds: u64,
    },
}

/// Readings per `process_batch` call in the engine phase (a poll's worth).
const BATCH: usize = 1024;

/// This thread's time on a CPU and time spent runnable but waiting for one, ns
/// (`/proc/thread-self/schedstat`; `None` where it does not exist). The engine figures are
/// per CPU-second, so they stay meaningful on a shared machine; the wait says how shared.
fn thread_sched_ns() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// Which engine call the engine phase times.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineApi {
    /// `WindowEngine::process_batch` over batches of 1 024 readings (what the
    /// window-processor can hand it per poll).
    Batch,
    /// `WindowEngine::process`, one call per reading.
    Single,
}

/// Throughput target of an engine shape, M readings/s per core (the performance issue).
fn engine_target(clients: usize, spacing_ms: i64) -> Option<f64> {
    match (clients, spacing_ms) {
        (1_440, 60_000) => Some(30.0),
        (10_000, 1_000) => Some(15.0),
        _ => None,
    }
}

fn engine(clients: usize, readings: usize, spacing_ms: i64, api: EngineApi, runs: usize) {
    let keys: Vec<String> = (0..clients).map(|c| format!("client-{c:06}")).collect();
    let total = clients * readings;
    // Round-robin over clients on a common clock, as a partition sees it.
    let mut input = Vec::with_capacity(total);
    for k in 0..readings {
        for (c, _) in keys.iter().enumerate() {
            let v = ((c * 31 + k * 17) % 1000) as f64 * 0.01;
            input.push((c as u32, k as i64 * spacing_ms, v));
        }
    }
    let cfg = WindowConfig {
        size_ms: 600_000,
        grace_ms: 0,
        scope: WatermarkScope::Partition,
    };
    // Per run: (CPU seconds, wall seconds, seconds waiting for a CPU).
    let mut runs_s: Vec<(f64, f64, f64)> = Vec::new();
    let mut stats = None;
    let mut batch: Vec<(i32, &str, Reading)> = Vec::with_capacity(BATCH);
    let mut out = Vec::with_capacity(BATCH);
    for _ in 0..runs.max(1) {
        let mut e = WindowEngine::new(cfg);
        let sched0 = thread_sched_ns();
        let started = Instant::now();
        match api {
            EngineApi::Batch => {
                // The chunk is rebuilt in a reused buffer; that copy is timed too.
                for chunk in input.chunks(BATCH) {
                    batch.clear();
                    batch.extend(
                        chunk
                            .iter()
                            .map(|&(c, t, v)| (0, keys[c as usize].as_str(), Reading { t, v })),
                    );
                    out.clear();
                    e.process_batch(&batch, &mut out);
                    black_box(&out);
                }
            }
            EngineApi::Single => {
                for &(c, t, v) in &input {
                    black_box(e.process(0, &keys[c as usize], Reading { t, v }));
                }
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let (cpu, wait) = match (sched0, thread_sched_ns()) {
            (Some((c0, w0)), Some((c1, w1))) => (
                c1.saturating_sub(c0) as f64 * 1e-9,
                w1.saturating_sub(w0) as f64 * 1e-9,
            ),
            _ => (wall, 0.0),
        };
        runs_s.push((cpu, wall, wait));
        stats = Some(e.stats());
    }
    let Some(s) = stats else { return };
    let rate = |secs: f64| total as f64 / secs / 1e6;
    let cpu: Vec<f64> = runs_s.iter().map(|r| rate(r.0)).collect();
    let best = cpu.iter().copied().fold(0.0, f64::max);
    let worst = cpu.iter().copied().fold(f64::MAX, f64::min);
    let best_wall = runs_s.iter().map(|r| rate(r.1)).fold(0.0, f64::max);
    let waited = runs_s.iter().map(|r| r.2).sum::<f64>() / runs_s.iter().map(|r| r.1).sum::<f64>();
    let api_name = match api {
        EngineApi::Batch => "process_batch",
        EngineApi::Single => "process",
    };
    println!(
        "window engine (pure, one core, {clients} clients, {} readings/window, {api_name}, exact FA/FI)",
        600_000 / spacing_ms
    );
    println!(
        "  readings processed         {total} x {} runs",
        runs_s.len()
    );
    let verdict = match engine_target(clients, spacing_ms) {
        Some(t) if best >= t => format!("(target >= {t:.0} M: met)"),
        Some(t) => format!("(target >= {t:.0} M: NOT met)"),
        None => String::new(),
    };
    println!("  throughput                 {best:.1} M readings/s per CPU-second {verdict}");
    println!(
        "  spread over runs           {worst:.1}-{best:.1} M/s per CPU-second; wall clock best {best_wall:.1} M/s, waited for a CPU {:.0}% of the time",
        waited * 100.0
    );
    println!("  time per reading           {:.1} ns CPU", 1e3 / best);
    println!("  readings buffered          {}", s.readings);
    println!(
        "  state bytes per reading    {:.1} (reading buffers: capacity x 12 B; target <= 16)",
        s.reading_heap_bytes as f64 / s.readings as f64
    );
    println!(
        "  incl. per-client overhead  {:.1} (+ struct and key per client)",
        (s.reading_heap_bytes + s.overhead_bytes) as f64 / s.readings as f64
    );
}

async fn produce_sz(
    kafka: &KafkaArgs,
    topic: &str,
    sx_sy: Option<(&str, &str)>,
    n: usize,
    clients: usize,
    rate: Option<f64>,
    duration: Option<Duration>,
) -> anyhow::Result<usize> {
    let p: FutureProducer = kafka.producer_config("bench").create()?;
    let started = Instant::now();
    let t0 = sensorflow_runtime::now_ms();
    let mut sent = 0usize;
    let mut futs = Vec::new();
    let mut buf = Vec::new();
    loop {
        if rate.is_none() && sent >= n {
            break;
        }
        if let Some(d) = duration
            && started.elapsed() >= d
        {
            break;
        }
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(sent as f64 / r);
            if let Some(w) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(w).await;
            }
        }
        let c = sent % clients;
        let t = t0 + (sent / clients) as i64 * 1000;
        buf.clear();
        SensorReading {
            event_time_ms: t,
            value: (sent % 97) as f64 * 0.05,
            sensor: Sensor::Sz as i32,
            ingest_time_ms: sensorflow_runtime::now_ms(),
        }
        .encode(&mut buf)?;
        let key = format!("client-{c:05}");
        // The pipeline phases also write the client's SX and SY at the same event time, before
        // its SZ: the as-of join needs them (without them every features trigger is
        // dead-lettered as `missing-sx`, and SX/SY hold the join watermark back).
        let mut records: Vec<(&str, Vec<u8>)> = Vec::with_capacity(3);
        if let Some((sx, sy)) = sx_sy {
            for (tp, sensor) in [(sx, Sensor::Sx), (sy, Sensor::Sy)] {
                let v = SensorReading {
                    event_time_ms: t,
                    value: ((sent / clients) % 4) as f64,
                    sensor: sensor as i32,
                    ingest_time_ms: sensorflow_runtime::now_ms(),
                }
                .encode_to_vec();
                records.push((tp, v));
            }
        }
        records.push((topic, buf.clone()));
        for (tp, v) in &records {
            loop {
                let rec = rdkafka::producer::FutureRecord::to(tp)
                    .key(&key)
                    .payload(v)
                    .timestamp(t);
                match p.send_result(rec) {
                    Ok(f) => {
                        futs.push(f);
                        break;
                    }
                    Err(_) => {
                        p.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        sent += 1;
        if futs.len() >= 20_000 {
            for f in futs.drain(..) {
                f.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in futs {
        f.await?.map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(30))?;
    Ok(sent)
}

fn raw_consume_rate(kafka: &KafkaArgs, topic: &str, n: usize) -> anyhow::Result<f64> {
    let mut cfg = kafka.consumer_config(&format!("bench-raw-{}", std::process::id()), "bench");
    cfg.set("statistics.interval.ms", "0");
    let c: BaseConsumer = cfg.create()?;
    c.subscribe(&[topic])?;
    let mut got = 0;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "raw consume timed out at {got}/{n}"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            m?;
            started.get_or_insert_with(Instant::now);
            got += 1;
        }
    }
    Ok(n as f64 / started.map_or(1e-9, |s| s.elapsed().as_secs_f64()))
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn spawn(
    bin_dir: &std::path::Path,
    bin: &str,
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    group: &str,
) -> anyhow::Result<Child> {
    let env = [
        ("SF_TOPIC_SX", &topics.topic_sx),
        ("SF_TOPIC_SY", &topics.topic_sy),
        ("SF_TOPIC_SZ", &topics.topic_sz),
        ("SF_TOPIC_FA", &topics.topic_fa),
        ("SF_TOPIC_FI", &topics.topic_fi),
        ("SF_TOPIC_FD", &topics.topic_fd),
        ("SF_TOPIC_PREDICTIONS", &topics.topic_predictions),
        ("SF_TOPIC_DLQ", &topics.topic_dlq),
        ("SF_TOPIC_LATE", &topics.topic_late),
    ];
    let child = Command::new(bin_dir.join(bin))
        .envs(env)
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env("SF_GROUP_ID", group)
        .env("SF_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    Ok(Child(child))
}

fn wait_lag_zero(kafka: &KafkaArgs, group: &str, topics: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if admin::group_lag(&kafka.client_config(), group, topics)? == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "lag did not reach 0");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn broker(
    kafka: KafkaArgs,
    bin_dir: PathBuf,
    readings: usize,
    partitions: i32,
    latency_seconds: u64,
) -> anyhow::Result<()> {
    let run = format!("bench-{}-", std::process::id());
    let topics = TopicArgs::prefixed(&run);
    let t = topics.topics();
    admin::ensure_topics(&kafka.client_config(), &t.all(), partitions, 1).await?;
    let clients = 1_000;
    eprintln!(
        "producing {readings} SZ readings to {} ({partitions} partitions)…",
        t.sz
    );
    produce_sz(&kafka, &t.sz, None, readings, clients, None, None).await?;
    eprintln!("raw rdkafka consume…");
    let raw = tokio::task::block_in_place(|| raw_consume_rate(&kafka, &t.sz, readings))?;
    eprintln!("window-processor over the same topic…");
    let group = format!("{run}window");
    let started = Instant::now();
    let w = spawn(&bin_dir, "window-processor", &kafka, &topics, &group)?;
    tokio::task::block_in_place(|| wait_lag_zero(&kafka, &group, &[&t.sz]))?;
    let wp = readings as f64 / started.elapsed().as_secs_f64();
    drop(w);
    println!(
        "through the broker ({} at {})",
        partitions, kafka.bootstrap_servers
    );
    println!("  raw rdkafka consume        {raw:.0} readings/s");
    println!(
        "  window-processor e2e       {wp:.0} readings/s (consume, window, produce 3 features, commit; incl. start-up and group join)"
    );
    println!("  ratio                      {:.2}", wp / raw);

    // The whole pipeline's maximum: a backlog of SZ readings through both processors (SX/SY
    // once per client, so every feature triple yields a prediction).
    let backlog = readings / 2;
    let (topics, t) = pipeline_topics(&kafka, &format!("{run}max-"), partitions).await?;
    produce_sz(
        &kafka,
        &t.sz,
        Some((&t.sx, &t.sy)),
        backlog,
        clients,
        None,
        None,
    )
    .await?;
    let started = Instant::now();
    let w = spawn(
        &bin_dir,
        "window-processor",
        &kafka,
        &topics,
        &format!("{run}max-window"),
    )?;
    let j = spawn(
        &bin_dir,
        "join-predict",
        &kafka,
        &topics,
        &format!("{run}max-join"),
    )?;
    tokio::task::block_in_place(|| wait_lag_zero(&kafka, &format!("{run}max-window"), &[&t.sz]))?;
    tokio::task::block_in_place(|| {
        wait_lag_zero(&kafka, &format!("{run}max-join"), &t.join_inputs())
    })?;
    let pipeline_max = backlog as f64 / started.elapsed().as_secs_f64();
    drop((w, j));
    println!(
        "  whole pipeline             {pipeline_max:.0} SZ readings/s (window-processor + join-predict, {backlog} readings)"
    );

    // Latency at half of the pipeline's maximum.
    let lat = format!("{run}lat-");
    let (topics, t) = pipeline_topics(&kafka, &lat, partitions).await?;
    let _w = spawn(
        &bin_dir,
        "window-processor",
        &kafka,
        &topics,
        &format!("{lat}window"),
    )?;
    let _j = spawn(
        &bin_dir,
        "join-predict",
        &kafka,
        &topics,
        &format!("{lat}join"),
    )?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let rate = pipeline_max / 2.0;
    eprintln!("latency: {rate:.0} SZ readings/s for {latency_seconds} s…");
    let sent = produce_sz(
        &kafka,
        &t.sz,
        Some((&t.sx, &t.sy)),
        0,
        clients,
        Some(rate),
        Some(Duration::from_secs(latency_seconds)),
    )
    .await?;
    tokio::task::block_in_place(|| wait_lag_zero(&kafka, &format!("{lat}window"), &[&t.sz]))?;
    tokio::task::block_in_place(|| wait_lag_zero(&kafka, &format!("{lat}join"), &t.join_inputs()))?;
    let (n, _, hist) = tokio::task::block_in_place(|| {
        summary::read_predictions(
            &kafka.client_config(),
            &t.predictions,
            Default::default(),
            Duration::from_secs(300),
        )
    })?;
    println!(
        "SZ -> prediction latency at {rate:.0} SZ readings/s (half of the pipeline's max), {sent} readings, {n} predictions"
    );
    println!(
        "  p50 {} ms   p99 {} ms   max {} ms",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    Ok(())
}

/// Creates a pipeline's topics under `prefix` (`partitions` each); the readings come from
/// `produce_sz` with SX and SY.
async fn pipeline_topics(
    kafka: &KafkaArgs,
    prefix: &str,
    partitions: i32,
) -> anyhow::Result<(TopicArgs, sensorflow_api::TopicNames)> {
    let topics = TopicArgs::prefixed(prefix);
    let t = topics.topics();
    admin::ensure_topics(&kafka.client_config(), &t.all(), partitions, 1).await?;
    Ok((topics, t))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sensorflow_runtime::telemetry::init(sensorflow_runtime::telemetry::LogFormat::Text);
    match Cli::parse().cmd {
        Cmd::Engine {
            clients: 0,
            api,
            runs,
            ..
        } => {
            engine(1_440, 14_000, 60_000, api, runs);
            engine(10_000, 2_000, 1_000, api, runs);
        }
        Cmd::Engine {
            clients,
            readings,
            spacing_ms,
            api,
            runs,
        } => engine(clients, readings, spacing_ms, api, runs),
        Cmd::Broker {
            kafka,
            bin_dir,
            readings,
            partitions,
            latency_seconds,
        } => broker(kafka, bin_dir, readings, partitions, latency_seconds).await?,
    }
    Ok(())
}
