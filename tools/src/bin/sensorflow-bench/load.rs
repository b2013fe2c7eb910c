//! The backlog the broker figures run over, and the raw consume rate of the broker.

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use sensorflow_core::proto::{Sensor, SensorReading};
use sensorflow_kafka::admin;
use sensorflow_kafka::config::{KafkaArgs, TopicArgs};
use std::time::{Duration, Instant};

/// What the bench's sensor producer writes: `n` rounds-worth of readings (or, paced, for
/// `duration` at `rate` SZ readings/s).
pub(crate) struct Load<'a> {
    pub(crate) sz: &'a str,
    /// SX and SY topics: each client's SX and SY at the same event time as its SZ, written
    /// before it (the as-of join needs them; without them every features trigger is
    /// dead-lettered as `missing-sx`, and SX/SY hold the join watermark back).
    pub(crate) sx_sy: Option<(&'a str, &'a str)>,
    pub(crate) n: usize,
    pub(crate) clients: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) duration: Option<Duration>,
    /// Counts the SZ readings whose ingest time (ms) falls in `[from, to)`.
    pub(crate) window: Option<(i64, i64)>,
    /// librdkafka properties over the producer defaults.
    pub(crate) overrides: &'a [(&'a str, &'a str)],
    /// All clients at the same instants (else each at its own offset within the second).
    pub(crate) common_clock: bool,
}

/// Rounds of clients (event-time seconds) `load` spans: `n / clients`, or paced,
/// `rate × duration / clients`, rounded up.
fn rounds(load: &Load<'_>) -> i64 {
    let clients = load.clients.max(1) as f64;
    let readings = match (load.rate, load.duration) {
        (Some(r), Some(d)) => r * d.as_secs_f64(),
        _ => load.n as f64,
    };
    (readings / clients).ceil() as i64
}

/// Produces the load; returns (SZ readings sent, SZ readings sent inside `window`).
pub(crate) async fn produce(kafka: &KafkaArgs, load: &Load<'_>) -> anyhow::Result<(usize, usize)> {
    let mut cfg = kafka.producer_config("bench");
    for (k, v) in load.overrides {
        cfg.set(*k, *v);
    }
    let p: FutureProducer = cfg.create()?;
    let started = Instant::now();
    // Event times advance 1 s per round of clients. The run's last round ends at the clock's
    // present, not ahead of it: a stock broker refuses records more than 1 h ahead of its
    // clock (`log.message.timestamp.after.max.ms`, KIP-1030), and a large backlog spans hours.
    let t0 = sensorflow_runtime::now_ms() - (rounds(load) + 1) * 1000;
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

pub(crate) fn raw_consume_rate(kafka: &KafkaArgs, topic: &str, n: usize) -> anyhow::Result<f64> {
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

/// Deletes a phase's topics once it is measured: a bench run creates thousands of partitions,
/// and the broker holds files open for each (it died with "Too many open files" at 20 000
/// descriptors after four runs' topics).
pub(crate) async fn drop_topics(
    kafka: &KafkaArgs,
    t: &sensorflow_api::TopicNames,
) -> anyhow::Result<()> {
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
pub(crate) async fn pipeline_topics(
    kafka: &KafkaArgs,
    prefix: &str,
    partitions: i32,
) -> anyhow::Result<(TopicArgs, sensorflow_api::TopicNames)> {
    pipeline_topics_with(kafka, prefix, partitions, &[]).await
}

/// [`pipeline_topics`] with topic configs `common` on every topic.
pub(crate) async fn pipeline_topics_with(
    kafka: &KafkaArgs,
    prefix: &str,
    partitions: i32,
    common: &[(&str, &str)],
) -> anyhow::Result<(TopicArgs, sensorflow_api::TopicNames)> {
    let topics = TopicArgs::prefixed(prefix);
    let t = topics.topics();
    let common = common
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let configs = sensorflow_kafka::topic_configs(&t, &common, |_| Default::default());
    admin::ensure_topics_with(&kafka.client_config(), &t.all(), partitions, 1, &configs).await?;
    Ok((topics, t))
}
