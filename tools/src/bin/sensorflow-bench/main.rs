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

mod broker;
mod engine;
mod hops;
mod load;
mod measure;
mod passthrough;
mod procs;

use crate::broker::*;
use crate::engine::*;
use crate::passthrough::*;

use clap::{Parser, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};
use sensorflow_api::env;
use sensorflow_kafka::config::KafkaArgs;
use sensorflow_runtime::metrics::Metrics;
use std::path::PathBuf;
use std::time::Duration;

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
    /// dense shape (10 000 clients, a reading a second: 600 per window, 72 MB of state); then
    /// each window kind (sliding, tumbling, hopping, global; per record and final) on the
    /// household shape, with its ratio to the sliding window.
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
        /// Seconds of measured load per latency run (after a 10 s warm-up); 0: no latency runs.
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sensorflow_process::telemetry::init(sensorflow_process::telemetry::LogFormat::Text);
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
            engine_kinds(1_440, 4_000, 60_000, runs);
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
            tokio::spawn(sensorflow_process::server::serve(
                metrics_addr,
                std::sync::Arc::new(metrics.clone()),
                stop.clone(),
            ));
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
