//! Exactly one outcome per input record, as the field sends it, against a real Apache Kafka
//! broker (started by `./run.sh test`).
//!
//! 48 clients on 4 partitions send one SX, SY and SZ reading a minute: SZ in event-time order,
//! SX and SY stamped with ±400 ms of clock jitter and sent in shuffled client order, so each SX
//! and SY partition is out of event-time order by up to 800 ms (the scenario). Both
//! processors run as child processes; each scenario may kill them with SIGKILL mid-stream and
//! restart them (as the kubelet does), and may make the broker refuse the window-processor's
//! feature deliveries for a while (a 1 h `message.timestamp.before.max.ms` set on FA
//! mid-stream: a produce of the hours-old features is answered `INVALID_TIMESTAMP`; the
//! window-processor must not exit but resume from its last commit with the limits read anew,
//! dead-lettering from then on the readings whose features FA refuses, `refused-timestamp`).
//!
//! Every SX, SY and SZ record is then traced to its outcomes, counted as a multiset: a
//! prediction (SZ: through its feature triple), a `late` record or a dead letter, from either
//! processor. ExactlyOnce (read_committed reader): each input has exactly one. AtLeastOnce:
//! each has at least one, and all of its outcomes are identical repeats (same kind, same
//! vector or reason). `SENSORFLOW_JITTER_MINUTES` scales the stream (60 by default, sized for
//! CI; `scripts/soak.sh` runs a long one).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use sensorflow_core::proto::{Feature, Prediction, Sensor, SensorReading};
use sensorflow_kafka::config::{KafkaArgs, TopicArgs};
use sensorflow_runtime::dlq;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
const CLIENTS: usize = 48;
const JITTER_MS: i64 = 400;
/// Wall time per event-time minute while sending: 60 minutes take ~15 s.
const PACE: Duration = Duration::from_millis(250);
const DRAIN: Duration = Duration::from_secs(180);

fn minutes() -> i64 {
    std::env::var("SENSORFLOW_JITTER_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// A small deterministic generator (the SplitMix64 sequence of `sensorflow_core::model`), so
/// every run sends the same stream.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let z = sensorflow_core::model::splitmix64(self.0);
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One reading to send: topic index (0 SX, 1 SY, 2 SZ), client, event time, value.
type Reading = (usize, String, i64, f64);

/// The stream, in send order: per event-time minute, the SZ readings in client order, then SX
/// and SY each in a shuffled client order with ±400 ms of jitter on their event times.
fn stream(t0: i64) -> Vec<Reading> {
    let mut rng = Rng(24);
    let mut out = Vec::new();
    for m in 0..minutes() {
        let base = t0 + m * 60_000;
        for c in 0..CLIENTS {
            let v = 0.5 + (rng.below(4000) as f64) / 1000.0;
            out.push((2, format!("client-{c:02}"), base + c as i64 * 10, v));
        }
        for topic in 0..2 {
            let mut order: Vec<usize> = (0..CLIENTS).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for c in order {
                let jitter = rng.below(2 * JITTER_MS as u64 + 1) as i64 - JITTER_MS;
                let v = rng.below(40) as f64;
                out.push((topic, format!("client-{c:02}"), base + 500 + jitter, v));
            }
        }
    }
    out
}

/// Sends `stream` paced by event-time minute, with an idempotent producer (acks=all): each
/// partition's records land in send order.
fn send(t: &TopicArgs, stream: &[Reading]) {
    let p: ThreadedProducer<DefaultProducerContext> = KafkaArgs::plain(&bootstrap())
        .producer_config("jitter-source")
        .create()
        .unwrap();
    let topics = [&t.topic_sx, &t.topic_sy, &t.topic_sz];
    let sensors = [Sensor::Sx, Sensor::Sy, Sensor::Sz];
    let started = Instant::now();
    let mut minute = 0;
    for (topic, client, ts, v) in stream {
        if *topic == 2 && client == "client-00" {
            minute += 1;
            let due = PACE * minute;
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let value = SensorReading {
            event_time_ms: *ts,
            value: *v,
            sensor: sensors[*topic] as i32,
            ingest_time_ms: 0,
        }
        .encode_to_vec();
        let mut rec = BaseRecord::<str, [u8]>::to(topics[*topic])
            .key(client.as_str())
            .payload(&value)
            .timestamp(*ts);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// How a scenario disturbs the pipeline.
#[derive(Clone, Copy, Debug)]
struct Faults {
    exactly_once: bool,
    /// Rounds of SIGKILL: the window-processor, then 1.5 s later join-predict.
    kills: usize,
    /// The broker refuses FA deliveries from mid-stream on.
    refuse_deliveries: bool,
}

/// A processor with its own restart count: restarted when it exits (as a kubelet restarts a
/// container) and when the scenario kills it.
struct Supervised {
    bin: &'static str,
    group: String,
    env: Vec<(&'static str, String)>,
    proc: Proc,
    restarts: usize,
    exits: usize,
}

impl Supervised {
    fn start(
        bin: &'static str,
        t: &TopicArgs,
        group: &str,
        env: Vec<(&'static str, String)>,
    ) -> Self {
        let proc = Self::spawn_with(bin, t, group, &env);
        Self {
            bin,
            group: group.into(),
            env,
            proc,
            restarts: 0,
            exits: 0,
        }
    }

    fn spawn_with(bin: &str, t: &TopicArgs, group: &str, env: &[(&'static str, String)]) -> Proc {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn(bin, t, group, &env, &[])
    }

    /// Restarts it when it has exited; true when it had.
    fn keep_running(&mut self, t: &TopicArgs) -> bool {
        if let Some(status) = self.proc.child.try_wait().unwrap() {
            eprintln!("{} exited ({status}); restarting", self.bin);
            self.exits += 1;
            self.proc = Self::spawn_with(self.bin, t, &self.group, &self.env);
            return true;
        }
        false
    }

    fn kill9_and_restart(&mut self, t: &TopicArgs) {
        self.proc.kill9();
        self.restarts += 1;
        self.proc = Self::spawn_with(self.bin, t, &self.group, &self.env);
    }
}

fn env_for(f: Faults, bin: &str, pre: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![
        // A killed member leaves the group after 6 s.
        ("SF_KAFKA_PROPERTIES", "session.timeout.ms=6000".to_owned()),
        ("SF_COMMIT_INTERVAL_MS", "100".into()),
        ("SF_JOIN_IDLE_TIMEOUT_MS", "3000".into()),
    ];
    if f.exactly_once {
        env.push(("SF_EXACTLY_ONCE", "true".into()));
        env.push(("SF_TRANSACTIONAL_ID", format!("{pre}{bin}")));
    }
    env
}

/// Makes the broker refuse every record of `topic` (its timestamps, hours old, are beyond a
/// 1 h `message.timestamp.before.max.ms`, so each produce is answered `INVALID_TIMESTAMP`).
async fn refuse_old_records(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = config().create().unwrap();
    let cfg = AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("message.timestamp.before.max.ms", "3600000");
    let res = admin
        .alter_configs(&[cfg], &AdminOptions::new())
        .await
        .unwrap();
    for r in res {
        r.unwrap();
    }
}

/// What one input record led to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// A prediction: its trigger kind and vector.
    Predicted(i32, Vec<i64>),
    /// A `late` record (for an SZ reading: its features went late at the join, or the
    /// reading itself at the window-processor).
    Late,
    /// A dead letter with its reason.
    Dead(String),
}

type Source = (String, i32, i64);

fn source_of(m: &OwnedMessage) -> Source {
    (
        header(m, dlq::SOURCE_TOPIC).expect("source topic header"),
        header(m, dlq::SOURCE_PARTITION).unwrap().parse().unwrap(),
        header(m, dlq::SOURCE_OFFSET).unwrap().parse().unwrap(),
    )
}

/// Per input record (SX, SY, SZ: topic, partition, offset), its outcomes.
fn outcomes(t: &TopicArgs) -> (BTreeMap<Source, Vec<Outcome>>, usize) {
    let mut out: BTreeMap<Source, Vec<Outcome>> = BTreeMap::new();
    for topic in [&t.topic_sx, &t.topic_sy, &t.topic_sz] {
        for m in read_all(topic) {
            out.insert((topic.clone(), m.partition(), m.offset()), Vec::new());
        }
    }
    // Feature records → the SZ reading behind them.
    let mut feature_source: HashMap<Source, Source> = HashMap::new();
    for topic in [&t.topic_fa, &t.topic_fi, &t.topic_fd] {
        for m in read_all(topic) {
            let f = Feature::decode(m.payload().unwrap()).unwrap();
            feature_source.insert(
                (topic.clone(), m.partition(), m.offset()),
                (t.topic_sz.clone(), f.source_partition, f.source_offset),
            );
        }
    }
    let input = |s: Source| -> Source { feature_source.get(&s).cloned().unwrap_or(s) };
    for m in read_all(&t.topic_predictions) {
        let p = Prediction::decode(m.payload().unwrap()).unwrap();
        let src = input((p.source_topic.clone(), p.source_partition, p.source_offset));
        out.entry(src)
            .or_default()
            .push(Outcome::Predicted(p.trigger, p.features));
    }
    // A late feature is one record of three: an SZ reading whose features went late at the
    // join has three late records (FA, FI and FD), one outcome.
    let mut late_features: HashMap<Source, [usize; 3]> = HashMap::new();
    for m in read_all(&t.topic_late) {
        let s = source_of(&m);
        let kind = [&t.topic_fa, &t.topic_fi, &t.topic_fd]
            .iter()
            .position(|f| **f == s.0);
        match kind {
            Some(k) => late_features.entry(input(s)).or_default()[k] += 1,
            None => out.entry(s).or_default().push(Outcome::Late),
        }
    }
    let mut partial_late = 0;
    for (s, n) in late_features {
        if n[0] != n[1] || n[1] != n[2] {
            eprintln!("{s:?}: late features FA/FI/FD {n:?}");
            partial_late += 1;
        }
        let e = out.entry(s).or_default();
        e.extend(std::iter::repeat_n(
            Outcome::Late,
            n.into_iter().max().unwrap_or(0),
        ));
    }
    for m in read_all(&t.topic_dlq) {
        let reason = header(&m, dlq::REASON).unwrap_or_default();
        out.entry(input(source_of(&m)))
            .or_default()
            .push(Outcome::Dead(reason));
    }
    (out, partial_late)
}

async fn scenario(name: &str, f: Faults) {
    let pre = prefix(name);
    let t = topics(&pre);
    create_topics(&t, PARTITIONS).await;
    let wg = format!("{pre}window");
    let jg = format!("{pre}join");
    let t0 = (sensorflow_runtime::now_ms() - 6 * 3_600_000) / 60_000 * 60_000;
    let stream = Arc::new(stream(t0));
    let mut w = Supervised::start("window-processor", &t, &wg, env_for(f, "window", &pre));
    let mut j = Supervised::start("join-predict", &t, &jg, env_for(f, "join", &pre));

    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let (t, stream, sending) = (t.clone(), Arc::clone(&stream), Arc::clone(&sending));
        std::thread::spawn(move || {
            send(&t, &stream);
            sending.store(false, Ordering::Release);
        })
    };
    let total = PACE * u32::try_from(minutes()).unwrap();
    let started = Instant::now();
    // Kill rounds and the refusal spread over the sending time.
    let rounds = f.kills + usize::from(f.refuse_deliveries);
    let mut next_round = 1;
    while sending.load(Ordering::Acquire) {
        w.keep_running(&t);
        j.keep_running(&t);
        let due = total * u32::try_from(next_round).unwrap() / u32::try_from(rounds + 1).unwrap();
        if next_round <= rounds && started.elapsed() >= due {
            if f.refuse_deliveries && next_round == rounds.div_ceil(2) {
                eprintln!(
                    "{name}: refusing FA deliveries at {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                refuse_old_records(&t.topic_fa).await;
            } else {
                eprintln!(
                    "{name}: kill -9 at {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                w.kill9_and_restart(&t);
                std::thread::sleep(Duration::from_millis(1500));
                j.kill9_and_restart(&t);
            }
            next_round += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    sender.join().unwrap();
    // Drain: both groups without lag (the join commits a record only once its outcome is out),
    // restarting a processor that exited meanwhile.
    let drained = Instant::now();
    loop {
        w.keep_running(&t);
        j.keep_running(&t);
        if group_lag(&wg, &[&t.topic_sz]) == 0 && group_lag(&jg, &join_inputs(&t)) == 0 {
            break;
        }
        assert!(
            drained.elapsed() < DRAIN,
            "{name}: not drained after {DRAIN:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        w.proc.terminate().success(),
        "window-processor stopped cleanly"
    );
    assert!(j.proc.terminate().success(), "join-predict stopped cleanly");

    let (outcomes, partial_late) = outcomes(&t);
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let (mut lost, mut repeated, mut mixed, mut redone) = (0, 0, 0, 0);
    for (src, o) in &outcomes {
        let kind = |o: &Outcome| match o {
            Outcome::Predicted(..) => "predicted".to_owned(),
            Outcome::Late => "late".to_owned(),
            Outcome::Dead(r) => format!("dead-letter {r}"),
        };
        match o.as_slice() {
            [] => {
                lost += 1;
                if lost <= 10 {
                    eprintln!("{name}: no outcome for {src:?}");
                }
            }
            [one] => *tally.entry(kind(one)).or_default() += 1,
            [first, rest @ ..] => {
                *tally.entry(kind(first)).or_default() += 1;
                // AtLeastOnce: records between the last commit and a refusal the limits read
                // at start-up did not predict are processed again under the new limits, so a
                // repeat may be their dead letter (`refused-*`) instead (ExactlyOnce aborted
                // the first outputs: one outcome).
                let refused_repeat = |r: &Outcome| {
                    !f.exactly_once
                        && f.refuse_deliveries
                        && matches!(r, Outcome::Dead(why) if why.starts_with("refused"))
                };
                if rest.iter().all(|r| r == first) {
                    repeated += 1;
                } else if rest.iter().all(|r| r == first || refused_repeat(r)) {
                    repeated += 1;
                    redone += 1;
                } else {
                    mixed += 1;
                    if mixed <= 10 {
                        eprintln!("{name}: {src:?} has different outcomes {o:?}");
                    }
                }
            }
        }
    }
    eprintln!(
        "{name} ({f:?}): {} inputs, {tally:?}; lost {lost}, repeated {repeated} ({redone} \
         dead-lettered when redone under the refusing limits), different {mixed}, partially \
         late {partial_late}; restarts window {}+{} exits, join {}+{} exits",
        outcomes.len(),
        w.restarts,
        w.exits,
        j.restarts,
        j.exits
    );
    assert_eq!(
        outcomes.len(),
        3 * CLIENTS * usize::try_from(minutes()).unwrap()
    );
    assert_eq!(lost, 0, "{name}: inputs without an outcome");
    assert_eq!(
        mixed, 0,
        "{name}: inputs with outcomes of different kinds or vectors"
    );
    assert_eq!(
        partial_late, 0,
        "{name}: SZ readings with only some features late"
    );
    if f.exactly_once {
        assert_eq!(
            repeated, 0,
            "{name}: outcomes written twice under ExactlyOnce"
        );
    }
    let refused = tally
        .iter()
        .filter(|(k, _)| k.starts_with("dead-letter refused"))
        .map(|(_, n)| *n)
        .sum::<usize>();
    if f.refuse_deliveries {
        assert!(
            refused > 0,
            "{name}: no reading dead-lettered for the refusal"
        );
        assert_eq!(
            (w.exits, j.exits),
            (0, 0),
            "{name}: a refused delivery made a processor exit"
        );
    } else {
        assert_eq!(refused, 0, "{name}: refusals without a refusing topic");
    }
    // With ±400 ms of jitter inside the default join grace, nothing is late: readings get
    // predictions (the first minute's triggers may miss a value and are dead-lettered). Once
    // FA refuses the features, SZ readings are dead-lettered `refused-timestamp`, and SX/SY
    // triggers then miss features (or find only stale ones).
    assert_eq!(tally.get("late"), None, "{name}: late records");
    let predicted = tally.get("predicted").copied().unwrap_or(0);
    let without_features = if f.refuse_deliveries {
        ["dead-letter missing-features", "dead-letter stale-features"]
            .iter()
            .filter_map(|k| tally.get(*k))
            .sum::<usize>()
    } else {
        0
    };
    assert!(
        predicted + refused + without_features + 3 * CLIENTS >= outcomes.len(),
        "{name}: only {predicted} of {} inputs predicted",
        outcomes.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn at_least_once_jittered_clocks_give_one_outcome_per_input() {
    scenario(
        "jitter-alo",
        Faults {
            exactly_once: false,
            kills: 0,
            refuse_deliveries: false,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn at_least_once_kills_and_refused_deliveries_repeat_outcomes_exactly() {
    scenario(
        "jitter-alo-faults",
        Faults {
            exactly_once: false,
            kills: 3,
            refuse_deliveries: true,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn exactly_once_jittered_clocks_give_one_outcome_per_input() {
    scenario(
        "jitter-eos",
        Faults {
            exactly_once: true,
            kills: 0,
            refuse_deliveries: false,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn exactly_once_kills_and_refused_deliveries_give_one_outcome_per_input() {
    scenario(
        "jitter-eos-faults",
        Faults {
            exactly_once: true,
            kills: 3,
            refuse_deliveries: true,
        },
    )
    .await;
}
