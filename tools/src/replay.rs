//! `replay`: produces real sensor data to SX, SY and SZ with their event times.
//!
//! Inputs (format detected from the header line, or forced with `--format`):
//! - the UCI household power dataset (`.csv` or `.csv.xz`), mapped as documented in
//!   `sensorflow_core::household`: client = calendar day, SX/SY = sub-meterings 1/2,
//!   SZ = global active power; all selected days replayed concurrently on a common clock;
//! - a generic CSV with header `client,ts_ms,sensor,value`.
//!
//! Readings are sent in event-time order, keyed by client, with the Kafka timestamp set to the
//! event time and `ingest_time_ms` set to the wall-clock send time. `--speed 0` (default) sends
//! as fast as the broker takes them; `--speed N` compresses time N-fold (60 = one event-minute
//! per wall-second).

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sensorflow_core::household::{self, RowError};
use sensorflow_core::proto::{Sensor, SensorReading};
use sensorflow_runtime::args::ClientArgs;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// replay: produce real sensor readings to the SX, SY and SZ topics.
#[derive(Debug, Clone, Parser)]
#[command(name = "replay", version, about, long_about)]
pub struct ReplayArgs {
    /// The broker connection, topic names and record framing.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Input file: household dataset (.csv or .csv.xz) or generic `client,ts_ms,sensor,value` CSV.
    #[arg(
        long,
        short,
        env = "SF_REPLAY_INPUT",
        default_value = "data/household_power.csv.xz"
    )]
    pub input: PathBuf,
    /// Input format; `auto` reads the header.
    #[arg(long, default_value = "auto", value_parser = ["auto", "household", "generic"])]
    pub format: String,
    /// Household: how many days (clients) to replay, evenly spaced over the dataset; 0 = all.
    #[arg(long, default_value_t = 0)]
    pub clients: usize,
    /// Household: replay only the first N rows of each day; 0 = all.
    #[arg(long, default_value_t = 0)]
    pub rows_per_client: usize,
    /// Household: the common day event times are placed on, `YYYY-MM-DD`, `yesterday` or
    /// `today` (UTC). The default, `yesterday`, keeps every event time in the past and within
    /// a stock broker's 7-day retention: Apache Kafka 4 refuses records more than 1 h ahead of
    /// its clock (`log.message.timestamp.after.max.ms`, KIP-1030), and `today` reaches up to
    /// 24 h ahead. A date older than the topics' retention needs topics created with a longer
    /// one (`sensorflow create-topics --retention-ms -1`).
    #[arg(long, default_value = "yesterday")]
    pub base_date: String,
    /// Time compression: 0 = full speed; N = N event-seconds per wall-second.
    #[arg(long, default_value_t = 0.0)]
    pub speed: f64,
    /// Create the topics first (with --partitions) if they do not exist, as `sensorflow
    /// create-topics` does without flags (the broker's retention).
    #[arg(long)]
    pub create_topics: bool,
    /// Partitions per topic when creating topics.
    #[arg(long, default_value_t = 100)]
    pub partitions: i32,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
}

/// One reading to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Client id (Kafka key).
    pub client: String,
    /// Event time, ms.
    pub event_time_ms: i64,
    /// Sensor.
    pub sensor: Sensor,
    /// Value.
    pub value: f64,
}

/// What a replay read and sent.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ReplaySummary {
    /// Input file.
    pub input: String,
    /// Data rows read (header excluded).
    pub rows_read: u64,
    /// Rows rejected because the dataset marks them missing (`?`).
    pub rows_rejected_missing: u64,
    /// Rows rejected because they do not parse.
    pub rows_rejected_malformed: u64,
    /// Clients replayed.
    pub clients: usize,
    /// Readings produced (acknowledged) per sensor: SX, SY, SZ.
    pub readings_sx: u64,
    /// See `readings_sx`.
    pub readings_sy: u64,
    /// See `readings_sx`.
    pub readings_sz: u64,
    /// Readings whose delivery failed.
    pub failed: u64,
    /// Wall time producing, seconds.
    pub elapsed_s: f64,
    /// Readings per second.
    pub rate_per_s: f64,
    /// First and last event time, ms.
    pub first_event_ms: i64,
    /// See `first_event_ms`.
    pub last_event_ms: i64,
    /// Wall-clock start of the replay, Unix ms.
    pub started_at_ms: i64,
}

fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let r: Box<dyn Read> = if path.extension().is_some_and(|e| e == "xz") {
        Box::new(liblzma::read::XzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, r)))
}

/// Reads and plans the readings of an input file, in send order (event time, then client,
/// then SX, SY, SZ). Counts rejected rows into `summary`.
///
/// # Errors
/// Unreadable file, unknown header, or a bad `--base-date`.
pub fn plan(args: &ReplayArgs, summary: &mut ReplaySummary) -> anyhow::Result<Vec<Planned>> {
    let mut lines = open(&args.input)?.lines();
    let header = lines.next().context("input is empty")??;
    let format = match args.format.as_str() {
        "auto" if header.starts_with("Date") => "household",
        "auto" if header.replace(' ', "") == "client,ts_ms,sensor,value" => "generic",
        "auto" => bail!("cannot tell the input format from its header {header:?}; pass --format"),
        f => f,
    };
    summary.input = args.input.display().to_string();
    let mut planned = Vec::new();
    if format == "generic" {
        let mut clients = std::collections::BTreeSet::new();
        for line in lines {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            summary.rows_read += 1;
            match household::parse_generic_line(&line) {
                Ok(r) => {
                    clients.insert(r.client.clone());
                    planned.push(Planned {
                        client: r.client,
                        event_time_ms: r.ts_ms,
                        sensor: r.sensor,
                        value: r.value,
                    });
                }
                Err(e) => {
                    summary.rows_rejected_malformed += 1;
                    tracing::debug!(error = %e, "rejected row");
                }
            }
        }
        summary.clients = clients.len();
        planned.sort_by_key(|p| p.event_time_ms);
        return Ok(planned);
    }
    let today = sensorflow_runtime::now_ms().div_euclid(household::DAY_MS) * household::DAY_MS;
    let base = if args.base_date == "today" {
        today
    } else if args.base_date == "yesterday" {
        today - household::DAY_MS
    } else {
        household::parse_iso_date_ms(&args.base_date).map_err(anyhow::Error::msg)?
    };
    let mut days: Vec<(String, Vec<household::HouseholdRow>)> = Vec::new();
    // Rejected rows per day, so the summary reports those of the replayed days.
    let mut missing: rustc_hash::FxHashMap<String, u64> = rustc_hash::FxHashMap::default();
    let mut malformed: rustc_hash::FxHashMap<String, u64> = rustc_hash::FxHashMap::default();
    for line in lines {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        summary.rows_read += 1;
        match household::parse_household_line(&line) {
            Ok(row) => {
                let id = row.client_id();
                match days.last_mut() {
                    Some((d, rows)) if *d == id => rows.push(row),
                    _ => days.push((id, vec![row])),
                }
            }
            Err(RowError::Missing) => {
                *missing
                    .entry(household::client_of_line(&line).unwrap_or_default())
                    .or_default() += 1;
            }
            Err(RowError::Malformed(e)) => {
                *malformed
                    .entry(household::client_of_line(&line).unwrap_or_default())
                    .or_default() += 1;
                tracing::debug!(error = %e, "rejected row");
            }
        }
    }
    let n = days.len();
    let chosen: Vec<usize> = if args.clients == 0 || args.clients >= n {
        (0..n).collect()
    } else {
        (0..args.clients).map(|i| i * n / args.clients).collect()
    };
    summary.clients = chosen.len();
    let all_days = chosen.len() == n;
    let chosen_ids: rustc_hash::FxHashSet<&str> =
        chosen.iter().map(|&i| days[i].0.as_str()).collect();
    let count = |m: &rustc_hash::FxHashMap<String, u64>| {
        m.iter()
            .filter(|(d, _)| all_days || chosen_ids.contains(d.as_str()))
            .map(|(_, c)| c)
            .sum::<u64>()
    };
    summary.rows_rejected_missing = count(&missing);
    summary.rows_rejected_malformed = count(&malformed);
    // Rows read: the replayed days' rows, good and rejected.
    if !all_days {
        summary.rows_read = chosen.iter().map(|&i| days[i].1.len() as u64).sum::<u64>()
            + summary.rows_rejected_missing
            + summary.rows_rejected_malformed;
    }
    for i in chosen {
        let (client, rows) = &days[i];
        let take = if args.rows_per_client == 0 {
            rows.len()
        } else {
            args.rows_per_client.min(rows.len())
        };
        for row in &rows[..take] {
            for (sensor, value) in row.readings() {
                planned.push(Planned {
                    client: client.clone(),
                    event_time_ms: row.event_time_ms(base),
                    sensor,
                    value,
                });
            }
        }
    }
    // Common clock: minute m of every day goes out together. Stable sort keeps client and
    // sensor order within a timestamp.
    planned.sort_by_key(|p| p.event_time_ms);
    Ok(planned)
}

/// Produces `planned` and returns the summary. Progress goes to stderr.
///
/// # Errors
/// When the producer cannot be created. Delivery failures are counted, not fatal.
pub async fn send(
    args: &ReplayArgs,
    planned: &[Planned],
    mut summary: ReplaySummary,
) -> anyhow::Result<ReplaySummary> {
    let mut cfg = args.client.kafka.producer_config("replay");
    // A full-speed replay queues a whole backlog at once; on a busy broker the last batches
    // wait longer than the processors' 30 s bound. A record still undelivered after 2 min
    // fails the replay (exit 1, counted), as before.
    if !args
        .client
        .kafka
        .properties
        .iter()
        .any(|(k, _)| k == "delivery.timeout.ms")
    {
        cfg.set("delivery.timeout.ms", "120000");
    }
    let producer: FutureProducer = cfg.create().context("creating the producer")?;
    let topics = args.client.topics.topics();
    let framing = args.client.framing.framing();
    let bar = ProgressBar::new(planned.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} replay [{bar:40}] {pos}/{len} readings {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = Instant::now();
    summary.started_at_ms = sensorflow_runtime::now_ms();
    summary.first_event_ms = planned.first().map_or(0, |p| p.event_time_ms);
    summary.last_event_ms = planned.last().map_or(0, |p| p.event_time_ms);
    let mut inflight = FuturesUnordered::new();
    let mut last_log = Instant::now();
    let mut pb = Vec::with_capacity(48);
    let mut value = Vec::with_capacity(64);
    for (i, p) in planned.iter().enumerate() {
        if args.speed > 0.0 {
            let due = Duration::from_secs_f64(
                (p.event_time_ms - summary.first_event_ms) as f64 / 1000.0 / args.speed,
            );
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let topic = match p.sensor {
            Sensor::Sx => &topics.sx,
            Sensor::Sy => &topics.sy,
            _ => &topics.sz,
        };
        let r = SensorReading {
            event_time_ms: p.event_time_ms,
            value: p.value,
            sensor: p.sensor as i32,
            ingest_time_ms: sensorflow_runtime::now_ms(),
        };
        pb.clear();
        r.encode(&mut pb)?;
        framing.encode_into(&pb, &mut value);
        loop {
            let rec = FutureRecord::to(topic)
                .key(p.client.as_bytes())
                .payload(&value[..])
                .timestamp(p.event_time_ms);
            match producer.send_result(rec) {
                Ok(fut) => {
                    inflight.push(async move { (p.sensor, fut.await) });
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Back-pressure: wait for a delivery before enqueueing more.
                    if let Some(done) = inflight.next().await {
                        tally(&mut summary, done);
                    }
                }
                Err((e, _)) => bail!("enqueueing to {topic} failed: {e}"),
            }
        }
        while inflight.len() > 50_000 {
            if let Some(done) = inflight.next().await {
                tally(&mut summary, done);
            }
        }
        if i % 1024 == 0 {
            bar.set_position(i as u64);
            if bar.is_hidden() && last_log.elapsed() > Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(
                    sent = i,
                    total = planned.len(),
                    rate = (i as f64 / started.elapsed().as_secs_f64()) as u64,
                    "replay progress"
                );
            }
        }
    }
    while let Some(done) = inflight.next().await {
        tally(&mut summary, done);
    }
    bar.finish_and_clear();
    summary.elapsed_s = started.elapsed().as_secs_f64();
    let sent = summary.readings_sx + summary.readings_sy + summary.readings_sz;
    summary.rate_per_s = sent as f64 / summary.elapsed_s.max(1e-9);
    Ok(summary)
}

type Done = (
    Sensor,
    Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
);

fn tally(s: &mut ReplaySummary, (sensor, res): Done) {
    match res {
        Ok(Ok(_)) => match sensor {
            Sensor::Sx => s.readings_sx += 1,
            Sensor::Sy => s.readings_sy += 1,
            _ => s.readings_sz += 1,
        },
        Ok(Err((e, _))) => {
            s.failed += 1;
            tracing::error!(error = %e, "delivery failed");
        }
        Err(_) => s.failed += 1,
    }
}

impl ReplaySummary {
    /// The summary as aligned text lines.
    pub fn render(&self) -> String {
        format!(
            "replay summary\n  input                {}\n  rows read            {}\n  rows rejected (?)    {}\n  rows malformed       {}\n  clients              {}\n  readings SX/SY/SZ    {} / {} / {}\n  delivery failures    {}\n  elapsed              {:.1} s\n  rate                 {:.0} readings/s\n",
            self.input,
            self.rows_read,
            self.rows_rejected_missing,
            self.rows_rejected_malformed,
            self.clients,
            self.readings_sx,
            self.readings_sy,
            self.readings_sz,
            self.failed,
            self.elapsed_s,
            self.rate_per_s
        )
    }
}

/// Entry point of the `replay` binary.
///
/// # Errors
/// Unreadable input, broker errors, or any failed delivery (exit code 1: nothing is lost
/// silently).
pub async fn main(args: ReplayArgs) -> anyhow::Result<()> {
    sensorflow_process::telemetry::init(sensorflow_process::telemetry::LogFormat::Text);
    if args.create_topics {
        let t = args.client.topics.topics();
        let configs =
            sensorflow_kafka::topic_configs(&t, &Default::default(), |_| Default::default());
        sensorflow_kafka::admin::ensure_topics_with(
            &args.client.kafka.client_config(),
            &t.all(),
            args.partitions,
            1,
            &configs,
        )
        .await?;
    }
    let mut summary = ReplaySummary::default();
    let planned = plan(&args, &mut summary)?;
    tracing::info!(
        readings = planned.len(),
        clients = summary.clients,
        rejected = summary.rows_rejected_missing,
        "replaying"
    );
    let summary = send(&args, &planned, summary).await?;
    eprint!("{}", summary.render());
    if let Some(path) = &args.summary_json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if summary.failed > 0 {
        bail!("{} readings could not be delivered", summary.failed);
    }
    Ok(())
}
