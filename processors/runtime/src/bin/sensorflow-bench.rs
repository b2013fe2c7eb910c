//! `sensorflow-bench`: prints the benchmark figures of docs/benchmarks.md, each next to the
//! limit it is compared with, measured in the same run on the same machine (a shared 2-core
//! machine makes absolute figures meaningless; a ratio to a limit measured minutes apart is not).
//!
//! - `engine`: the pure window engine, SZ readings/s on one core, and bytes of window state
//!   per buffered reading;
//! - `broker`: through a real broker, in one run:
//!   1. a backlog of `--readings` readings each of SX, SY and SZ (1 000 clients whose three
//!      sensors report at the same instants, one event-time step of 1 s per round of clients);
//!   2. raw rdkafka consume of SZ (a `BaseConsumer`, no group commits): the broker's read rate;
//!   3. window-processor end to end (consume SZ, window, produce FA/FI/FD, commit) next to
//!      `passthrough` over the same topic (3 outputs per input, no window math), same client
//!      settings (`KafkaArgs::consumer_config` / `producer_config`, 200 ms commit interval);
//!   4. join-predict end to end over SX, SY and the FA/FI/FD the window-processor wrote, next to
//!      `passthrough` over the same five inputs (1 output per trigger: per SX, SY and FA record);
//!   5. the whole pipeline's maximum (both processors at once on a fresh backlog);
//!   6. SZ → prediction latency paced at half of 5, at-least-once with join grace 0 (the
//!      default), exactly-once, and with a join grace of one event-time step.
//! - `passthrough`: the limit of 3 and 4 (spawned by `broker` as its own process, like the
//!   processors).
//!
//! Rates of 3 and 4 come from each process's `sensorflow_records_in_total` (its `/metrics`,
//! which the pass-through serves too), sampled every 20 ms: the records processed between the
//! samples at 10 % and at 90 % of the backlog, over the time between them. Start-up, group
//! join, state rebuild and the last commit are outside that span, and both sides of a ratio
//! are measured the same way, in `--rounds` interleaved runs of each side (the best of each
//! counts: the machine is shared). (Commits cannot be the progress: join-predict pins its commits
//! at its pending triggers, so they advance in bursts.) The whole pipeline's rate (5) runs
//! from the window-processor's first record to join-predict's last input record.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureProducer, Producer, ProducerContext,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sensorflow_api::env;
use sensorflow_core::proto::{Feature, Prediction, Sensor, SensorReading};
use sensorflow_core::window::{Reading, WatermarkScope, WindowConfig, WindowEngine};
use sensorflow_runtime::admin;
use sensorflow_runtime::kafka::{KafkaArgs, TopicArgs};
use sensorflow_runtime::metrics::{Metrics, TopicLabel};
use std::collections::HashMap;
use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Through a real broker: the processors against pass-throughs, the pipeline's maximum,
    /// and latency at half of it.
    Broker {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Directory holding the release binaries (window-processor, join-predict).
        #[arg(long)]
        bin_dir: PathBuf,
        /// SZ readings (and as many SX and SY) of the throughput backlog.
        #[arg(long, default_value_t = 200_000)]
        readings: usize,
        /// Partitions of the benchmark topics.
        #[arg(long, default_value_t = 100)]
        partitions: i32,
        /// Seconds of measured load per latency run (after a 5 s warm-up); 0: no latency runs.
        #[arg(long, default_value_t = 20)]
        latency_seconds: u64,
        /// Topic name prefix; the throughput backlog's pipeline topics are `<prefix>p-SX` …
        /// `<prefix>p-predictions` (scripts/bench.sh archives them with sink-bench).
        #[arg(long, default_value = "bench-")]
        prefix: String,
        /// Attach `perf record -g` to every processor while it is measured and write
        /// `<dir>/<phase>.perf.data`.
        #[arg(long)]
        perf_dir: Option<PathBuf>,
        /// Only the latency runs, paced at this many SZ readings/s (no throughput phases).
        #[arg(long)]
        latency_rate: Option<f64>,
        /// Latency runs: `alo` (at-least-once, join grace 0), `eos` (exactly-once), `grace`
        /// (join grace 1 s), `common` (every client on one clock).
        #[arg(long, value_delimiter = ',', default_value = "alo,eos,grace,common")]
        latency_cases: Vec<String>,
        /// Runs of each side of the window and join ratios (interleaved; the best counts).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
        rounds: u64,
    },
    /// Prints the broker's topic names, one a line (scripts/bench.sh checks the operator's
    /// topics on the broker itself).
    ListTopics {
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// The limit the processors are compared with: consume the input topics in a consumer
    /// group, produce each record's key, value and timestamp unchanged to the topics of its
    /// route, and every commit interval flush the producer and commit the consumed offsets
    /// (at-least-once). Same client settings as the processors; no decode, no state.
    Passthrough {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Consumer group.
        #[arg(long)]
        group: String,
        /// `IN=OUT1,OUT2,…` (repeatable): records of topic IN go to every OUT (none: consumed
        /// and committed only).
        #[arg(long = "route", required = true)]
        routes: Vec<String>,
        /// The range assignor (join-predict's: co-partitioned inputs on one member).
        #[arg(long)]
        range: bool,
        /// Flush and commit period, ms (the processors' default).
        #[arg(long, default_value_t = 200)]
        commit_interval_ms: u64,
        /// Address for `/metrics` (`sensorflow_records_in_total`, as the processors count it).
        #[arg(long, env = env::METRICS_ADDR, default_value = "127.0.0.1:0")]
        metrics_addr: std::net::SocketAddr,
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

/// This thread's CPU seconds and seconds spent waiting for a CPU since `start` (a
/// [`thread_sched_ns`] reading); `(wall, 0)` where schedstat does not exist.
fn sched_secs_since(start: Option<(u64, u64)>, wall: f64) -> (f64, f64) {
    match (start, thread_sched_ns()) {
        (Some((c0, w0)), Some((c1, w1))) => (
            c1.saturating_sub(c0) as f64 * 1e-9,
            w1.saturating_sub(w0) as f64 * 1e-9,
        ),
        _ => (wall, 0.0),
    }
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

/// Steps of one run of [`calibration`] (about 0.3–0.6 s on this machine's host).
const CALIBRATION_STEPS: u64 = 100_000_000;

/// The host's speed on one core at the time of the run: a fixed, dependent chain of
/// splitmix64 steps (an add, two 64-bit multiplies, three xor-shifts; no memory access), in
/// M steps per CPU-second of this thread, best of `runs`.
///
/// The loop never changes with the code, so an engine figure divided by it is comparable
/// across runs on a host whose speed varies (this VM's measured 2× within a day with no
/// steal time reported); the engine is bound by instructions for cache-resident state, like
/// this loop.
fn calibration(runs: usize) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..runs.max(1) {
        let sched0 = thread_sched_ns();
        let started = Instant::now();
        let mut x = black_box(0x0123_4567_89ab_cdefu64);
        for _ in 0..CALIBRATION_STEPS {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x = z ^ (z >> 31);
        }
        black_box(x);
        let (secs, _) = sched_secs_since(sched0, started.elapsed().as_secs_f64());
        best = best.max(CALIBRATION_STEPS as f64 / secs / 1e6);
    }
    println!(
        "host calibration (one core, a fixed splitmix64 chain; does not change with the code)"
    );
    println!(
        "  steps                      {best:.0} M per CPU-second (divide an engine figure by it to compare runs)"
    );
    best
}

/// Runs the engine phase for one shape and prints its figures; `calibration` is the host's
/// speed from [`calibration`] (M steps per CPU-second), printed against the figure.
fn engine(
    clients: usize,
    readings: usize,
    spacing_ms: i64,
    api: EngineApi,
    runs: usize,
    calibration: f64,
) {
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
        let (cpu, wait) = sched_secs_since(sched0, wall);
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
    println!(
        "  per host calibration step  {:.4} readings (the throughput / the calibration row)",
        best / calibration
    );
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

/// Counts failed deliveries of the pass-through's producer.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if r.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The pass-through loop (see `Cmd::Passthrough`); runs until killed.
fn passthrough(
    kafka: &KafkaArgs,
    group: &str,
    routes: &[String],
    range: bool,
    commit_interval: Duration,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let routes: Vec<(String, Vec<String>)> = routes
        .iter()
        .map(|r| {
            let (i, o) = r
                .split_once('=')
                .with_context(|| format!("route {r:?}: expected IN=OUT,OUT"))?;
            let outs = o.split(',').filter(|s| !s.is_empty()).map(str::to_owned);
            Ok((i.to_owned(), outs.collect()))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut ccfg = kafka.consumer_config(group, "bench-passthrough");
    if range {
        ccfg.set("partition.assignment.strategy", "range");
    }
    let consumer: BaseConsumer = ccfg.create()?;
    let inputs: Vec<&str> = routes.iter().map(|(i, _)| i.as_str()).collect();
    consumer.subscribe(&inputs)?;
    let producer: BaseProducer<Deliveries> = kafka
        .producer_config("bench-passthrough")
        .create_with_context(Deliveries::default())?;
    let mut next: Vec<HashMap<i32, i64>> = vec![HashMap::new(); routes.len()];
    let counters: Vec<_> = routes
        .iter()
        .map(|(t, _)| {
            metrics
                .records_in
                .get_or_create(&TopicLabel { topic: t.clone() })
                .clone()
        })
        .collect();
    let mut last_commit = Instant::now();
    // Delivery reports are served and the commit timer read every 1 024 records (or when idle),
    // not per record: a first version did both per record and spent 15 % of its time in
    // clock_gettime (perf), which made the limit lower than it is.
    let mut since_check = 0u32;
    loop {
        let msg = consumer.poll(Duration::from_millis(20));
        let idle = msg.is_none();
        match msg {
            Some(Ok(m)) => {
                let r = routes
                    .iter()
                    .position(|(t, _)| t == m.topic())
                    .context("a record of a topic not subscribed")?;
                counters[r].inc();
                let key = m.key().unwrap_or_default();
                let payload = m.payload().unwrap_or_default();
                for out in &routes[r].1 {
                    let mut rec = BaseRecord::<[u8], [u8]>::to(out).key(key).payload(payload);
                    if let Some(ts) = m.timestamp().to_millis() {
                        rec = rec.timestamp(ts);
                    }
                    while let Err((e, back)) = producer.send(rec) {
                        anyhow::ensure!(
                            matches!(
                                e,
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                            ),
                            "producing to {out}: {e}"
                        );
                        producer.poll(Duration::from_millis(5));
                        rec = back;
                    }
                }
                next[r].insert(m.partition(), m.offset() + 1);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consume error"),
            None => {}
        }
        since_check += 1;
        if !idle && since_check < 1024 {
            continue;
        }
        since_check = 0;
        producer.poll(Duration::ZERO);
        if last_commit.elapsed() >= commit_interval {
            producer.flush(Duration::from_secs(30))?;
            let failed = producer.context().failed.load(Ordering::Relaxed);
            anyhow::ensure!(failed == 0, "{failed} deliveries failed");
            let mut tpl = TopicPartitionList::new();
            for ((t, _), parts) in routes.iter().zip(&mut next) {
                for (p, o) in parts.drain() {
                    tpl.add_partition_offset(t, p, Offset::Offset(o))?;
                }
            }
            if tpl.count() > 0
                && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
            {
                tracing::warn!(error = %e, "commit refused");
            }
            last_commit = Instant::now();
        }
    }
}

/// What the bench's sensor producer writes: `n` rounds-worth of readings (or, paced, for
/// `duration` at `rate` SZ readings/s).
struct Load<'a> {
    sz: &'a str,
    /// SX and SY topics: each client's SX and SY at the same event time as its SZ, written
    /// before it (the as-of join needs them; without them every features trigger is
    /// dead-lettered as `missing-sx`, and SX/SY hold the join watermark back).
    sx_sy: Option<(&'a str, &'a str)>,
    n: usize,
    clients: usize,
    rate: Option<f64>,
    duration: Option<Duration>,
    /// Counts the SZ readings whose ingest time (ms) falls in `[from, to)`.
    window: Option<(i64, i64)>,
    /// librdkafka properties over the producer defaults.
    overrides: &'a [(&'a str, &'a str)],
    /// All clients at the same instants (else each at its own offset within the second).
    common_clock: bool,
}

/// Produces the load; returns (SZ readings sent, SZ readings sent inside `window`).
async fn produce(kafka: &KafkaArgs, load: &Load<'_>) -> anyhow::Result<(usize, usize)> {
    let mut cfg = kafka.producer_config("bench");
    for (k, v) in load.overrides {
        cfg.set(*k, *v);
    }
    let p: FutureProducer = cfg.create()?;
    let started = Instant::now();
    let t0 = sensorflow_runtime::now_ms();
    let (mut sent, mut in_window) = (0usize, 0usize);
    let mut futs = Vec::new();
    let mut records: Vec<(&str, Vec<u8>)> = Vec::with_capacity(3);
    loop {
        if load.rate.is_none() && sent >= load.n {
            break;
        }
        if let Some(d) = load.duration
            && started.elapsed() >= d
        {
            break;
        }
        if let Some(r) = load.rate {
            let due = Duration::from_secs_f64(sent as f64 / r);
            if let Some(w) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(w).await;
            }
        }
        let c = sent % load.clients;
        // Every client reports once per event-time second, its three sensors at the same
        // instant; clients at their own offsets within the second (independent sensors), or
        // all at the same instant (`common_clock`: the household replay's common day).
        let offset = if load.common_clock {
            0
        } else {
            (c * 1000 / load.clients) as i64
        };
        let t = t0 + (sent / load.clients) as i64 * 1000 + offset;
        let now = sensorflow_runtime::now_ms();
        if load.window.is_some_and(|(a, b)| (a..b).contains(&now)) {
            in_window += 1;
        }
        let reading = |sensor: Sensor, value: f64| {
            SensorReading {
                event_time_ms: t,
                value,
                sensor: sensor as i32,
                ingest_time_ms: now,
            }
            .encode_to_vec()
        };
        let key = format!("client-{c:05}");
        records.clear();
        if let Some((sx, sy)) = load.sx_sy {
            let v = ((sent / load.clients) % 4) as f64;
            records.push((sx, reading(Sensor::Sx, v)));
            records.push((sy, reading(Sensor::Sy, v)));
        }
        records.push((load.sz, reading(Sensor::Sz, (sent % 97) as f64 * 0.05)));
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
    Ok((sent, in_window))
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

/// A spawned process (processor or pass-through), with `perf record` attached when asked;
/// dropping it stops perf (SIGINT: it writes its data) and then the process (SIGTERM).
struct Child {
    child: std::process::Child,
    perf: Option<std::process::Child>,
    /// Where it serves `/metrics`.
    metrics: SocketAddr,
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Child {
    /// Attaches `perf record -g` to the process, writing `<dir>/<name>.perf.data`.
    fn profile(&mut self, dir: Option<&Path>, name: &str) -> anyhow::Result<()> {
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
    fn stop_profile(&mut self) {
        if let Some(mut p) = self.perf.take() {
            signal(p.id(), "INT");
            let _ = p.wait();
        }
    }

    /// Its `sensorflow_records_in_total`, summed over topics (`None` while it does not answer).
    fn records_in(&self) -> Option<u64> {
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
    fn cpu_s(&self) -> Option<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the parenthesised command name, which may contain spaces.
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / 100.0)
    }

    /// Peak resident set size (VmHWM) of the process, bytes.
    fn peak_rss(&self) -> Option<u64> {
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
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts `program args` with the pipeline's topic names, the broker, `group` and a free
/// metrics address in its environment (plus `extra`).
fn spawn(
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

/// A consumer group's committed offsets over some topics (one OffsetFetch per call).
struct Progress {
    c: BaseConsumer,
    tpl: TopicPartitionList,
}

impl Progress {
    fn new(
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
    fn committed(&self) -> anyhow::Result<i64> {
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
struct Rate {
    /// Records per second between the samples at 10 % and at 90 % of the backlog.
    per_s: f64,
    /// Seconds from the start to the first record processed.
    first_s: f64,
    /// Seconds from the start to the last record processed.
    done_s: f64,
    /// CPU time (user + system, every thread) per million records between the same two
    /// samples, s: what the process costs, whatever else the machine runs meanwhile.
    cpu_per_m: Option<f64>,
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
fn measure(
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
fn wait_committed(progress: &Progress, total: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while progress.committed()? < total {
        anyhow::ensure!(Instant::now() < deadline, "commits stalled below {total}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A process measured on a backlog: its rate and its peak RSS.
struct Measured {
    rate: Rate,
    peak_rss: Option<u64>,
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
struct Job<'a> {
    program: &'a Path,
    args: Vec<String>,
    group: String,
    extra: &'a [(&'a str, String)],
    /// Input topics and the records they hold.
    inputs: &'a [&'a str],
    total: i64,
    /// Name of the profile (`--perf-dir`).
    name: String,
    /// Wait until the whole input is committed (a later phase reads the outputs).
    wait_commits: bool,
}

/// Starts `job`, measures its rate from its group's commits, stops it.
fn run_measured(
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
struct Latency {
    made: Histogram<u64>,
    seen: Histogram<u64>,
    /// Arrival of the FA features at the same reader − ingest of their SZ reading: the
    /// window-processor's hop alone (the rest of `seen` is the join's).
    features: Histogram<u64>,
    /// `seen` p50 of the first and of the last quarter of the span (by ingest time): a run
    /// the pipeline cannot keep up with shows latency growing from one to the other.
    quarters: (u64, u64),
    predictions: u64,
    expected: u64,
}

/// Reads `topic` (predictions) and `fa` from the beginning with `read_committed` until `stop`,
/// recording the latency of the records whose ingest time (ms) is in `[from, to)`.
fn read_latency(
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
async fn latency_run(
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

#[allow(clippy::too_many_arguments)]
async fn broker(
    kafka: KafkaArgs,
    bin_dir: PathBuf,
    readings: usize,
    partitions: i32,
    latency_seconds: u64,
    prefix: String,
    perf_dir: Option<PathBuf>,
    latency_rate: Option<f64>,
    rounds: usize,
    cases: &[String],
) -> anyhow::Result<()> {
    let clients = 1_000;
    let (rate, ratios) = match latency_rate {
        Some(r) => (r, None),
        None => {
            let (max, w, j) = throughput(
                &kafka,
                &bin_dir,
                readings,
                partitions,
                &prefix,
                perf_dir.as_deref(),
                clients,
                rounds,
            )
            .await?;
            (max / 2.0, Some((w, j)))
        }
    };
    if latency_seconds == 0 {
        return Ok(());
    }
    latency(
        &kafka,
        &bin_dir,
        partitions,
        latency_seconds,
        &prefix,
        clients,
        rate,
        ratios,
        cases,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
/// Phases 1–5; returns the whole pipeline's maximum (SZ readings/s) and the window and join
/// ratios.
async fn throughput(
    kafka: &KafkaArgs,
    bin_dir: &Path,
    readings: usize,
    partitions: i32,
    prefix: &str,
    perf: Option<&Path>,
    clients: usize,
    rounds: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let kafka = kafka.clone();
    let me = std::env::current_exe()?;
    let n = readings as i64;

    // 1. The backlog: SX, SY and SZ readings in the pipeline topics `<prefix>p-*`; the
    //    pass-throughs write to `<prefix>pt-*`.
    let (topics, t) = pipeline_topics(&kafka, &format!("{prefix}p-"), partitions).await?;
    let (_, pt) = pipeline_topics(&kafka, &format!("{prefix}pt-"), partitions).await?;
    eprintln!(
        "producing {readings} readings each to {}, {} and {} ({partitions} partitions)…",
        t.sx, t.sy, t.sz
    );
    produce(
        &kafka,
        &Load {
            sz: &t.sz,
            sx_sy: Some((&t.sx, &t.sy)),
            n: readings,
            clients,
            rate: None,
            duration: None,
            window: None,
            overrides: &[],
            common_clock: false,
        },
    )
    .await?;

    // 2. Raw consume.
    eprintln!("raw rdkafka consume…");
    let raw = tokio::task::block_in_place(|| raw_consume_rate(&kafka, &t.sz, readings))?;

    // 3. window-processor vs its pass-through, and 4. join-predict vs its pass-through over SX,
    //    SY and the features of 3: `rounds` of each, interleaved, the best of each side (the
    //    machine is shared; the best is the closest to what the code can do). Round 0 of the
    //    processors writes the pipeline topics; later rounds write to the pass-through topics.
    let join_inputs = t.join_inputs();
    let redirect = |roles: &[(&'static str, &String)]| -> Vec<(&'static str, String)> {
        roles.iter().map(|(k, v)| (*k, (*v).clone())).collect()
    };
    let window_elsewhere = redirect(&[
        (env::TOPIC_FA, &pt.fa),
        (env::TOPIC_FI, &pt.fi),
        (env::TOPIC_FD, &pt.fd),
        (env::TOPIC_DLQ, &pt.dead_letter),
        (env::TOPIC_LATE, &pt.late),
    ]);
    // join-predict watches the window-processor's group that wrote its features (its
    // all-quiet release waits while that group has records left).
    let upstream = format!("{prefix}p-window-0");
    let join_here = redirect(&[(env::UPSTREAM_GROUP_ID, &upstream)]);
    let join_elsewhere = redirect(&[
        (env::TOPIC_PREDICTIONS, &pt.predictions),
        (env::TOPIC_DLQ, &pt.dead_letter),
        (env::TOPIC_LATE, &pt.late),
        (env::UPSTREAM_GROUP_ID, &upstream),
    ]);
    let (mut pass_w, mut wp, mut pass_j, mut jp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let measured = |job: Job<'_>| run_measured(&kafka, &topics, partitions, perf, job);
        let profiled = |name: &str, r: usize| {
            if r == 0 {
                name.to_owned()
            } else {
                format!("{name}-{r}")
            }
        };
        for r in 0..rounds {
            pass_w.push(measured(Job {
                program: &me,
                args: vec![
                    "passthrough".into(),
                    format!("--group={prefix}pt-window-{r}"),
                    format!("--route={}={},{},{}", t.sz, pt.fa, pt.fi, pt.fd),
                ],
                group: format!("{prefix}pt-window-{r}"),
                extra: &[],
                inputs: &[&t.sz],
                total: n,
                name: profiled("passthrough-window", r),
                wait_commits: false,
            })?);
            wp.push(measured(Job {
                program: &bin_dir.join("window-processor"),
                args: Vec::new(),
                group: format!("{prefix}p-window-{r}"),
                extra: if r == 0 { &[] } else { &window_elsewhere },
                inputs: &[&t.sz],
                total: n,
                name: profiled("window-processor", r),
                wait_commits: r == 0,
            })?);
        }
        for r in 0..rounds {
            pass_j.push(measured(Job {
                program: &me,
                args: vec![
                    "passthrough".into(),
                    "--range".into(),
                    format!("--group={prefix}pt-join-{r}"),
                    format!("--route={}={}", t.sx, pt.predictions),
                    format!("--route={}={}", t.sy, pt.predictions),
                    format!("--route={}={}", t.fa, pt.predictions),
                    format!("--route={}=", t.fi),
                    format!("--route={}=", t.fd),
                ],
                group: format!("{prefix}pt-join-{r}"),
                extra: &[],
                inputs: &join_inputs,
                total: 5 * n,
                name: profiled("passthrough-join", r),
                wait_commits: false,
            })?);
            jp.push(measured(Job {
                program: &bin_dir.join("join-predict"),
                args: Vec::new(),
                group: format!("{prefix}p-join-{r}"),
                extra: if r == 0 { &join_here } else { &join_elsewhere },
                inputs: &join_inputs,
                total: 5 * n,
                name: profiled("join-predict", r),
                // Round 0's predictions are counted below; the last triggers wait for the
                // join's idle timeout (10 s).
                wait_commits: r == 0,
            })?);
        }
        Ok(())
    })?;
    let best = |v: &[Measured]| {
        v.iter()
            .max_by(|a, b| a.rate.per_s.total_cmp(&b.rate.per_s))
            .map(|m| m.rate.per_s)
            .unwrap_or(f64::NAN)
    };
    // The cheapest run of each side: CPU per record is what scheduling noise on a shared
    // machine disturbs least (wall rates of two runs of one side differed 4.7x on one day).
    let least_cpu = |v: &[Measured]| {
        v.iter()
            .filter_map(|m| m.rate.cpu_per_m)
            .min_by(f64::total_cmp)
            .unwrap_or(f64::NAN)
    };
    let predictions = admin::message_count(&kafka.client_config(), &t.predictions)?;
    drop_topics(&kafka, &pt).await?;

    println!(
        "through the broker ({partitions} partitions at {}, {readings} readings each of SX, SY, SZ; {clients} clients)",
        kafka.bootstrap_servers
    );
    println!("  raw rdkafka consume of SZ   {raw:>9.0} records/s (BaseConsumer, no commits)");
    let rows = |name: &str, v: &[Measured]| {
        for (r, m) in v.iter().enumerate() {
            println!("    {:<25} {m}", if r == 0 { name } else { "" });
        }
    };
    println!(
        "  window: consume SZ, produce 3 records per input, commit ({rounds} rounds, interleaved)"
    );
    rows("pass-through (limit)", &pass_w);
    rows("window-processor", &wp);
    let ratio_w = best(&wp) / best(&pass_w);
    println!("    ratio of the best         {ratio_w:.2}   (target >= 0.9)");
    println!(
        "    CPU per record, pass-through / processor (least of each)   {:.2}",
        least_cpu(&pass_w) / least_cpu(&wp)
    );
    println!("  join: consume SX, SY, FA, FI, FD, 1 output per trigger, commit ({rounds} rounds)");
    rows("pass-through (limit)", &pass_j);
    rows("join-predict", &jp);
    let ratio_j = best(&jp) / best(&pass_j);
    println!("    ratio of the best         {ratio_j:.2}   (target >= 0.9)");
    println!(
        "    CPU per record, pass-through / processor (least of each)   {:.2}",
        least_cpu(&pass_j) / least_cpu(&jp)
    );
    println!(
        "    predictions               {predictions} (expected {}: one per SX, SY and feature triple)",
        3 * n
    );

    // 5. The whole pipeline's maximum: both processors at once on a fresh backlog, with the
    //    join's default idle timeout (10 s): a shorter one released partitions whose five inputs
    //    waited in librdkafka's fetch queue longer than that while it worked through a backlog,
    //    and their later records were late (seen with 2 s: 425,514 of 600,000 predictions).
    let upstream_env = [(env::UPSTREAM_GROUP_ID, format!("{prefix}max-window"))];
    let backlog = readings / 2;
    let (topics, t) = pipeline_topics(&kafka, &format!("{prefix}max-"), partitions).await?;
    produce(
        &kafka,
        &Load {
            sz: &t.sz,
            sx_sy: Some((&t.sx, &t.sy)),
            n: backlog,
            clients,
            rate: None,
            duration: None,
            window: None,
            overrides: &[],
            common_clock: false,
        },
    )
    .await?;
    eprintln!("whole pipeline…");
    let pipeline_max = tokio::task::block_in_place(|| -> anyhow::Result<f64> {
        let started = Instant::now();
        let w = spawn(
            &bin_dir.join("window-processor"),
            &[],
            &kafka,
            &topics,
            &format!("{prefix}max-window"),
            &upstream_env,
        )?;
        let mut j = spawn(
            &bin_dir.join("join-predict"),
            &[],
            &kafka,
            &topics,
            &format!("{prefix}max-join"),
            &upstream_env,
        )?;
        let deadline = started + Duration::from_secs(1200);
        let first = loop {
            if w.records_in().unwrap_or(0) > 0 {
                break Instant::now();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the window-processor read nothing"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Join-predict's five inputs hold 5 records per SZ reading.
        let done = measure(&mut j, 5 * backlog as u64, started, None)?;
        Ok(backlog as f64 / (started + Duration::from_secs_f64(done.done_s) - first).as_secs_f64())
    })?;
    println!(
        "  whole pipeline              {pipeline_max:>9.0} SZ readings/s (= {:.0} readings/s in; both processors at once, {backlog} readings each of SX, SY, SZ)",
        3.0 * pipeline_max
    );

    drop_topics(&kafka, &t).await?;
    Ok((pipeline_max, ratio_w, ratio_j))
}

/// Phase 6: latency at `rate` SZ readings/s, then the closing table.
#[allow(clippy::too_many_arguments)]
async fn latency(
    kafka: &KafkaArgs,
    bin_dir: &Path,
    partitions: i32,
    latency_seconds: u64,
    prefix: &str,
    clients: usize,
    rate: f64,
    ratios: Option<(f64, f64)>,
    cases: &[String],
) -> anyhow::Result<()> {
    let step_ms = clients as f64 / rate * 1000.0;
    // (label, topic tag, extra environment, common clock)
    type LatencyCase<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, bool);
    let runs: [LatencyCase<'_>; 4] = [
        ("at-least-once, join grace 0", "alo", Vec::new(), false),
        (
            "exactly-once,  join grace 0",
            "eos",
            vec![(env::EXACTLY_ONCE, "true".to_owned())],
            false,
        ),
        (
            "at-least-once, join grace 1 s",
            "grace",
            vec![(env::JOIN_GRACE_MS, "1000".to_owned())],
            false,
        ),
        ("at-least-once, common clock", "common", Vec::new(), true),
    ];
    let mut results = Vec::new();
    for (label, tag, extra, common_clock) in &runs {
        if !cases.iter().any(|c| c == tag) {
            continue;
        }
        let l = latency_run(
            kafka,
            bin_dir,
            &format!("{prefix}lat-{tag}-"),
            partitions,
            clients,
            rate,
            latency_seconds,
            extra,
            *common_clock,
        )
        .await?;
        results.push((*label, *tag, l));
    }
    println!(
        "SZ -> prediction latency at {rate:.0} SZ readings/s ({}), {latency_seconds} s measured per run",
        if ratios.is_some() {
            "half of the whole pipeline's max"
        } else {
            "--latency-rate"
        }
    );
    println!(
        "  ({clients} clients, each reporting SX, SY and SZ at one instant per event-time second, at its own offset\n   within the second: with join grace 0 a prediction at t waits until every input of its partition is\n   past t, i.e. for the partition's next reading, {:.1} ms later at this rate. 'common clock': every\n   client at the same instants, as the household replay's common day: the next reading past t comes\n   one event-time step later, {step_ms:.0} ms of wall time. 'FA seen': the window-processor's FA record of
   the same readings at the same reader, the first of the two hops.)",
        f64::from(partitions) / rate * 1000.0
    );
    println!(
        "  {:<31} {:>15}   {:>22}   {:>28}   predictions     seen p50, first -> last quarter",
        "", "FA seen", "made (predicted_at)", "seen (read_committed reader)"
    );
    println!(
        "  {:<31} {:>7} {:>7}   {:>7} {:>7} {:>6}   {:>7} {:>7} {:>7} ms",
        "", "p50", "p99", "p50", "p99", "", "p50", "p99", "max"
    );
    for (label, _, l) in &results {
        println!(
            "  {label:<31} {:>7} {:>7}   {:>7} {:>7} {:>6}   {:>7} {:>7} {:>7}      {} of {}   {} -> {} ms{}",
            l.features.value_at_quantile(0.5),
            l.features.value_at_quantile(0.99),
            l.made.value_at_quantile(0.5),
            l.made.value_at_quantile(0.99),
            "",
            l.seen.value_at_quantile(0.5),
            l.seen.value_at_quantile(0.99),
            l.seen.max(),
            l.predictions,
            l.expected,
            l.quarters.0,
            l.quarters.1,
            if l.quarters.0 > 0 && l.quarters.1 > 2 * l.quarters.0 + 100 {
                " (fell behind: the pipeline did not keep up with this rate)"
            } else {
                ""
            }
        );
    }
    let case = |tag: &str| results.iter().find(|r| r.1 == tag).map(|r| &r.2);
    if let (Some(alo), Some(eos)) = (case("alo"), case("eos")) {
        let d =
            |q: f64| eos.seen.value_at_quantile(q) as i64 - alo.seen.value_at_quantile(q) as i64;
        println!(
            "  exactly-once cost (seen)        p50 {:+} ms, p99 {:+} ms",
            d(0.5),
            d(0.99)
        );
    }
    println!("targets (issue 15; ratios to limits measured in this run)");
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    let alo_n = case("alo").map_or(0, |l| l.predictions);
    let mark_latency = |ok: bool| {
        if alo_n == 0 {
            "NOT MEASURED (no prediction in the measured span)"
        } else {
            mark(ok)
        }
    };
    if let Some((ratio_w, ratio_j)) = ratios {
        println!(
            "  window-processor / pass-through   {ratio_w:.2}  >= 0.9   {}",
            mark(ratio_w >= 0.9)
        );
        println!(
            "  join-predict / pass-through       {ratio_j:.2}  >= 0.9   {}",
            mark(ratio_j >= 0.9)
        );
    }
    let (p50, p99) = case("alo").map_or((0, 0), |alo| {
        (
            alo.seen.value_at_quantile(0.5),
            alo.seen.value_at_quantile(0.99),
        )
    });
    println!(
        "  latency p50 (at-least-once)       {p50} ms  < 10 ms   {}",
        mark_latency(p50 < 10)
    );
    println!(
        "  latency p99 (at-least-once)       {p99} ms  < 50 ms   {}",
        mark_latency(p99 < 50)
    );
    Ok(())
}

/// Deletes a phase's topics once it is measured: a bench run creates thousands of partitions,
/// and the broker holds files open for each (it died with "Too many open files" at 20 000
/// descriptors after four runs' topics).
async fn drop_topics(kafka: &KafkaArgs, t: &sensorflow_api::TopicNames) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let names = t.all();
    for r in admin.delete_topics(&names, &AdminOptions::new()).await? {
        if let Err((topic, e)) = r {
            tracing::warn!(%topic, error = %e, "deleting a bench topic failed");
        }
    }
    Ok(())
}

/// Creates a pipeline's topics under `prefix` (`partitions` each).
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
            let cal = calibration(runs);
            engine(1_440, 14_000, 60_000, api, runs, cal);
            engine(10_000, 2_000, 1_000, api, runs, cal);
        }
        Cmd::Engine {
            clients,
            readings,
            spacing_ms,
            api,
            runs,
        } => {
            let cal = calibration(runs);
            engine(clients, readings, spacing_ms, api, runs, cal);
        }
        Cmd::Broker {
            kafka,
            bin_dir,
            readings,
            partitions,
            latency_seconds,
            prefix,
            perf_dir,
            latency_rate,
            rounds,
            latency_cases,
        } => {
            broker(
                kafka,
                bin_dir,
                readings,
                partitions,
                latency_seconds,
                prefix,
                perf_dir,
                latency_rate,
                rounds as usize,
                &latency_cases,
            )
            .await?
        }
        Cmd::ListTopics { kafka } => {
            let c: BaseConsumer = kafka.client_config().create()?;
            let md = c.fetch_metadata(None, Duration::from_secs(30))?;
            for t in md.topics() {
                println!("{}", t.name());
            }
        }
        Cmd::Passthrough {
            kafka,
            group,
            routes,
            range,
            commit_interval_ms,
            metrics_addr,
        } => {
            let metrics = Metrics::new();
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(metrics.clone().serve(metrics_addr, stop.clone()));
            tokio::task::block_in_place(|| {
                passthrough(
                    &kafka,
                    &group,
                    &routes,
                    range,
                    Duration::from_millis(commit_interval_ms),
                    &metrics,
                )
            })?
        }
    }
    Ok(())
}
