//! The poison suite: more than 10,000 bad records across SX, SY, SZ, FA, FI and FD, interleaved
//! with a real-data slice, through both processor binaries on the real broker (values in the
//! Confluent wire format, so wrong framing is a poison of its own).
//!
//! Checked: every bad record is in the dead-letter topic exactly once, with its reason (counts
//! equal per reason), its source and its original bytes (a value over 1 MB cut to 64 KiB with
//! its original size in a header: the processors' producers refuse it whole); neither processor
//! restarted (both still running at the end, then exit 0 on SIGTERM); nothing is late; every
//! good SZ reading's FA/FI/FD equal the naive reference (`reference_features`), and every
//! prediction holds the as-of SX, SY and feature triple of the good records and the logistic
//! model's probability; every good SX/SY record is a prediction or a join dead letter.
//!
//! Run with `cargo test --release -p sensorflow-runtime --test poison -- --ignored` against the
//! broker in `SENSORFLOW_TEST_BOOTSTRAP` (see `scripts/test.sh`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity,
    missing_docs
)]

mod common;

use common::*;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sensorflow_core::config::FeatureRanges;
use sensorflow_core::model::{FeatureVector, Logistic, Predictor, splitmix64};
use sensorflow_core::proto::{Feature, FeatureKind, Prediction, Sensor, SensorReading};
use sensorflow_core::window::{Aggregates, WindowConfig};
use sensorflow_core::wire::Framing;
use sensorflow_kafka::config::{KafkaArgs, TopicArgs};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
const DRAIN: Duration = Duration::from_secs(120);
const FRAMING: Framing = Framing::Confluent { schema_id: 1 };
/// Poison records after every good record.
const PER_GOOD: usize = 6;
/// Values over 1 MB (the processors' producers refuse them whole; the test's input topics take
/// them: [`INPUT_MAX_MESSAGE_BYTES`]).
const BIG: usize = 1_100_000;
/// `max.message.bytes` of the test's topics (2 MiB, above the stock 1 MiB): the inputs must
/// accept the oversize poison for the processors to meet it.
const INPUT_MAX_MESSAGE_BYTES: &str = "2097152";

/// The six input topics by role: SX, SY, SZ, FA, FI, FD.
fn topic_of(t: &TopicArgs, role: usize) -> &str {
    [
        &t.topic_sx,
        &t.topic_sy,
        &t.topic_sz,
        &t.topic_fa,
        &t.topic_fi,
        &t.topic_fd,
    ][role]
}

fn framed(pb: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    FRAMING.encode_into(pb, &mut v);
    v
}

fn unframe(v: &[u8]) -> &[u8] {
    FRAMING.decode(v).unwrap().0
}

/// A deterministic stream of pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = splitmix64(self.0);
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One bad record and the reason it must be dead-lettered with.
struct Poison {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    reason: &'static str,
}

fn sensor_of(role: usize) -> Sensor {
    [Sensor::Sx, Sensor::Sy, Sensor::Sz][role]
}

fn kind_of(role: usize) -> FeatureKind {
    [FeatureKind::Fa, FeatureKind::Fi, FeatureKind::Fd][role - 3]
}

/// A well-formed reading or feature of `role` at `t` (only the defect under test is added).
fn valid(role: usize, t: i64, value: f64) -> Vec<u8> {
    if role < 3 {
        SensorReading {
            event_time_ms: t,
            value,
            sensor: sensor_of(role) as i32,
            ingest_time_ms: 1_700_000_000_000,
        }
        .encode_to_vec()
    } else {
        Feature {
            client_id: "x".into(),
            kind: kind_of(role) as i32,
            event_time_ms: t,
            source_partition: 0,
            source_offset: 1_000_000,
            bin: 3,
            value,
            window_count: 2,
            ingest_time_ms: 1_700_000_000_000,
            ..Feature::default()
        }
        .encode_to_vec()
    }
}

/// True when `pb` is not a decodable message of `role`'s type.
fn undecodable(role: usize, pb: &[u8]) -> bool {
    if role < 3 {
        SensorReading::decode(pb).is_err()
    } else {
        Feature::decode(pb).is_err()
    }
}

/// The `kind`-th poison of `role` (kinds cycle through every defect), keyed by a good client
/// (`client`) or by a poison key.
fn poison(rng: &mut Rng, role: usize, kind: u64, client: &str, now: i64) -> Poison {
    let key = Some(if rng.below(2) == 0 {
        client.as_bytes().to_vec()
    } else {
        format!("poison-{}", rng.below(50)).into_bytes()
    });
    let t = now - 86_400_000;
    let p = |value: Vec<u8>, reason| Poison {
        key: key.clone(),
        value: Some(value),
        reason,
    };
    match kind % 14 {
        // Random bytes: no schema-registry header (first byte not the magic 0).
        0 => {
            let n = 1 + rng.below(200) as usize;
            let mut v = rng.bytes(n);
            v[0] = v[0].max(1);
            p(v, "framing")
        }
        // Random bytes inside a valid header that are no protobuf message.
        1 => loop {
            let n = 1 + rng.below(64) as usize;
            let b = rng.bytes(n);
            if undecodable(role, &b) {
                break p(framed(&b), "decode");
            }
        },
        // A valid message cut short.
        2 => {
            let full = valid(role, t, 1.0);
            let mut cut = 1 + rng.below(full.len() as u64 - 1) as usize;
            while !undecodable(role, &full[..cut]) {
                cut = full.len() - 1;
            }
            p(framed(&full[..cut]), "decode")
        }
        // An enum value the schema does not define.
        3 => {
            let v = if role < 3 {
                SensorReading {
                    event_time_ms: t,
                    value: 1.0,
                    sensor: 7 + rng.below(1000) as i32,
                    ingest_time_ms: 0,
                }
                .encode_to_vec()
            } else {
                let mut f = Feature::decode(&valid(role, t, 1.0)[..]).unwrap();
                f.kind = -1 - rng.below(1000) as i32;
                f.encode_to_vec()
            };
            p(framed(&v), "unknown-enum")
        }
        // Event time far in the future (in the body: Kafka refuses absurd record timestamps).
        4 => {
            let at = if rng.below(4) == 0 {
                i64::MAX
            } else {
                now + 3 * 86_400_000 + rng.below(1 << 50) as i64
            };
            p(framed(&valid(role, at, 1.0)), "future")
        }
        // Before the floor (1970): far past and i64::MIN.
        5 => {
            let at = match rng.below(3) {
                0 => i64::MIN,
                1 => i64::MIN + 1,
                _ => -1 - rng.below(1 << 50) as i64,
            };
            p(framed(&valid(role, at, 1.0)), "too-old")
        }
        // Non-finite values (readings), a bin out of range (features).
        6 if role < 3 => {
            let v = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY][rng.below(3) as usize];
            p(framed(&valid(role, t, v)), "non-finite")
        }
        6 => {
            let mut f = Feature::decode(&valid(role, t, 1.0)[..]).unwrap();
            f.bin = 10 + rng.below(u64::from(u32::MAX - 10)) as u32;
            p(framed(&f.encode_to_vec()), "invalid-feature")
        }
        // Huge finite values (readings; integral for the categorical SX/SY), another feature's
        // kind on this topic (features).
        7 if role == 2 => {
            let v = [f64::MAX, -1e300, 1e13][rng.below(3) as usize];
            p(framed(&valid(role, t, v)), "out-of-range")
        }
        7 if role < 3 => {
            let v = [1e13, -1e14, 8e15][rng.below(3) as usize];
            p(framed(&valid(role, t, v)), "out-of-range")
        }
        7 => {
            let other = 3 + (role - 3 + 1 + rng.below(2) as usize) % 3;
            p(framed(&valid(other, t, 1.0)), "invalid-feature")
        }
        // No key, or an empty one.
        8 => Poison {
            key: (rng.below(2) == 0).then(Vec::new),
            value: Some(framed(&valid(role, t, 1.0))),
            reason: "missing-key",
        },
        // No value.
        9 => Poison {
            key: key.clone(),
            value: None,
            reason: "missing-value",
        },
        // Wrong framing: plain protobuf, too short, a message-index path that is not [0].
        10 => {
            let v = match rng.below(3) {
                0 => valid(role, t, 1.0),
                1 => vec![0, 0, 0],
                _ => {
                    let mut v = vec![0, 0, 0, 0, 1, 2, 2];
                    v.extend(valid(role, t, 1.0));
                    v
                }
            };
            p(v, "framing")
        }
        // A key that is not UTF-8.
        11 => Poison {
            key: Some(vec![0xc3, 0x28, rng.below(256) as u8]),
            value: Some(framed(&valid(role, t, 1.0))),
            reason: "key-not-utf8",
        },
        // Another sensor's reading on this topic (readings); a fractional categorical value
        // (SX/SY); a feature of an unknown kind 0 (features: "unspecified" is not this topic's).
        12 if role < 3 => {
            let mut r = SensorReading::decode(&valid(role, t, 1.0)[..]).unwrap();
            r.sensor = sensor_of((role + 1) % 3) as i32;
            p(framed(&r.encode_to_vec()), "sensor-mismatch")
        }
        12 => {
            let mut f = Feature::decode(&valid(role, t, 1.0)[..]).unwrap();
            f.kind = 0;
            p(framed(&f.encode_to_vec()), "invalid-feature")
        }
        13 if role < 2 => p(framed(&valid(role, t, 2.5)), "non-integer"),
        // SZ and features: protobuf garbage with a valid header, starting with an invalid wire
        // type.
        _ => {
            let n = 1 + rng.below(30) as usize;
            let mut b = rng.bytes(n);
            b[0] = ((1 + rng.below(15) as u8) << 3) | (6 + rng.below(2) as u8);
            p(framed(&b), "decode")
        }
    }
}

/// (topic, partition, offset) of a record.
type Id = (String, i32, i64);

fn id(m: &OwnedMessage) -> Id {
    (m.topic().to_owned(), m.partition(), m.offset())
}

fn client(m: &OwnedMessage) -> String {
    String::from_utf8(m.key().unwrap().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn poison_is_dead_lettered_with_its_reason_and_good_readings_stay_exact() {
    let started = Instant::now();
    // 1. A real-data slice, written by the replay binary (Confluent framing) to staging topics.
    let stage = topics(&prefix("poison-stage"));
    create_topics(&stage, PARTITIONS).await;
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/household_power.csv.xz"
    );
    let mut r = spawn(
        "replay",
        &stage,
        "poison-replay",
        &[("SF_WIRE_FORMAT", "confluent")],
        &[
            "--input",
            data,
            "--clients",
            "4",
            "--rows-per-client",
            "150",
            "--base-date",
            "2021-03-05",
        ],
    );
    assert!(r.child.wait().unwrap().success(), "replay failed");
    let mut good: Vec<(usize, OwnedMessage)> = Vec::new();
    for role in 0..3 {
        for m in read_all(topic_of(&stage, role)) {
            good.push((role, m));
        }
    }
    // One global order that keeps each partition in event-time order.
    good.sort_by_key(|(role, m)| (m.timestamp().to_millis(), *role, client(m)));
    let clients: Vec<String> = {
        let s: HashSet<String> = good.iter().map(|(_, m)| client(m)).collect();
        let mut v: Vec<String> = s.into_iter().collect();
        v.sort();
        v
    };

    // 2. The pipeline, running before any input arrives.
    let pre = prefix("poison");
    let t = topics(&pre);
    create_topics_with(
        &t,
        PARTITIONS,
        &[("max.message.bytes", INPUT_MAX_MESSAGE_BYTES)],
    )
    .await;
    let wg = format!("{pre}window");
    let jg = format!("{pre}join");
    let env = [
        ("SF_WIRE_FORMAT", "confluent"),
        ("SF_JOIN_IDLE_TIMEOUT_MS", "4000"),
    ];
    let mut w = spawn("window-processor", &t, &wg, &env, &[]);
    let mut j = spawn("join-predict", &t, &jg, &env, &[]);

    // 3. Good records interleaved with poison, in one producer's order.
    let producer: FutureProducer = {
        let mut c = KafkaArgs::plain(&bootstrap()).producer_config("poison-test");
        c.set("message.max.bytes", "8000000");
        c.create().unwrap()
    };
    let now = sensorflow_runtime::now_ms();
    let mut rng = Rng(0x5eed);
    let mut pending = Vec::new();
    let mut sent_poison = 0usize;
    let mut big_left = 12usize;
    for (i, (role, m)) in good.iter().enumerate() {
        let rec = FutureRecord::<[u8], [u8]>::to(topic_of(&t, *role))
            .key(m.key().unwrap())
            .payload(m.payload().unwrap())
            .timestamp(m.timestamp().to_millis().unwrap());
        pending.push((None, producer.send_result(rec).map_err(|(e, _)| e).unwrap()));
        for k in 0..PER_GOOD {
            let prole = rng.below(6) as usize;
            let c = &clients[rng.below(clients.len() as u64) as usize];
            let mut p = poison(&mut rng, prole, (i * PER_GOOD + k) as u64, c, now);
            // A dozen values over 1 MB, two per topic, spread over the run (no header: the
            // framing is wrong).
            let mut prole = prole;
            if big_left > 0 && k == 0 && i % (good.len() / 12) == 0 {
                big_left -= 1;
                prole = big_left % 6;
                let mut v = vec![1u8; BIG];
                v[1..64].copy_from_slice(&rng.bytes(63));
                p = Poison {
                    key: Some(c.as_bytes().to_vec()),
                    value: Some(v),
                    reason: "framing",
                };
            }
            let topic = topic_of(&t, prole).to_owned();
            let fut = send(&producer, &topic, &p);
            pending.push((Some((topic, p.value, p.reason)), fut));
            sent_poison += 1;
        }
    }
    // Delivery reports name each record's partition and offset.
    let mut expected: HashMap<Id, (&'static str, Option<Vec<u8>>)> = HashMap::new();
    for (poison, fut) in pending {
        let d = fut.await.unwrap().map_err(|(e, _)| e).unwrap();
        let (partition, offset) = (d.partition, d.offset);
        if let Some((topic, value, reason)) = poison {
            expected.insert((topic, partition, offset), (reason, value));
        }
    }
    assert!(sent_poison >= 10_000, "{sent_poison} poison records");
    assert_eq!(expected.len(), sent_poison);
    let produced = started.elapsed();

    // 4. Drain, then check.
    wait_drained(&wg, &[&t.topic_sz], DRAIN);
    let join_inputs = [
        &t.topic_sx[..],
        &t.topic_sy,
        &t.topic_fa,
        &t.topic_fi,
        &t.topic_fd,
    ];
    wait_drained(&jg, &join_inputs, DRAIN);
    // Released by the idle timeout: the last predictions of the slice.
    std::thread::sleep(Duration::from_secs(6));
    wait_drained(&jg, &join_inputs, DRAIN);
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "window-processor exited ({})",
        w.name
    );
    assert!(
        j.child.try_wait().unwrap().is_none(),
        "join-predict exited ({})",
        j.name
    );

    // Dead letters: every poison record once, with its reason and its bytes.
    let mut want_reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (reason, _) in expected.values() {
        *want_reasons.entry(reason).or_default() += 1;
    }
    let mut got_reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen: HashSet<Id> = HashSet::new();
    let mut join_outcomes: Vec<(String, Id)> = Vec::new();
    let mut truncated = 0;
    for m in read_all(&t.topic_dlq) {
        let reason = header(&m, "sensorflow.reason").unwrap();
        let src: Id = (
            header(&m, "sensorflow.source.topic").unwrap(),
            header(&m, "sensorflow.source.partition")
                .unwrap()
                .parse()
                .unwrap(),
            header(&m, "sensorflow.source.offset")
                .unwrap()
                .parse()
                .unwrap(),
        );
        let Some((want, value)) = expected.get(&src) else {
            // The join's own outcomes (a trigger without its inputs) name good records.
            assert!(
                [
                    "missing-sx",
                    "missing-sy",
                    "missing-features",
                    "stale-sx",
                    "stale-sy",
                    "stale-features",
                    "incomplete-triple"
                ]
                .contains(&reason.as_str()),
                "dead letter {reason} for a record that is no poison: {src:?}"
            );
            join_outcomes.push((reason, src));
            continue;
        };
        assert_eq!(&reason, want, "reason of {src:?}");
        assert!(seen.insert(src.clone()), "{src:?} dead-lettered twice");
        *got_reasons.entry(reason).or_default() += 1;
        let payload = m.payload().unwrap_or_default();
        match value {
            Some(v) if v.len() > 64 * 1024 => {
                truncated += 1;
                assert_eq!(payload, &v[..64 * 1024], "truncated copy of {src:?}");
                assert_eq!(
                    header(&m, "sensorflow.original.size"),
                    Some(v.len().to_string())
                );
            }
            Some(v) => assert_eq!(payload, &v[..], "bytes of {src:?}"),
            None => assert!(payload.is_empty()),
        }
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|(k, _)| !seen.contains(*k))
        .take(5)
        .map(|(k, (r, _))| (k.clone(), *r))
        .collect();
    assert!(
        missing.is_empty(),
        "{} poison records not dead-lettered, e.g. {missing:?}",
        expected.len() - seen.len()
    );
    let got: BTreeMap<&str, usize> = got_reasons.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(got, want_reasons, "dead letters per reason");
    assert_eq!(truncated, 12, "values over 1 MB");
    assert!(read_all(&t.topic_late).is_empty(), "late records");

    // Features of the good SZ readings against the naive reference.
    let is_poison = |m: &OwnedMessage| expected.contains_key(&id(m));
    let sz: Vec<OwnedMessage> = read_all(&t.topic_sz)
        .into_iter()
        .filter(|m| !is_poison(m))
        .collect();
    let reference: HashMap<(i32, i64), Aggregates> =
        reference(&sz, WindowConfig::default(), unframe)
            .into_iter()
            .map(|(k, agg)| (k, agg.expect("no good reading is late")))
            .collect();
    let ranges = FeatureRanges::default();
    // client → (t, SZ partition, SZ offset) → bins
    let mut triples: BTreeMap<String, BTreeMap<(i64, i32, i64), [Option<u32>; 3]>> =
        BTreeMap::new();
    for (slot, role) in (3..6).enumerate() {
        let kind = kind_of(role);
        let range = [ranges.fa, ranges.fi, ranges.fd][slot];
        let mut covered = HashSet::new();
        for m in read_all(topic_of(&t, role))
            .into_iter()
            .filter(|m| !is_poison(m))
        {
            let f = Feature::decode(unframe(m.payload().unwrap())).unwrap();
            let key = (f.source_partition, f.source_offset);
            let agg = reference.get(&key).unwrap_or_else(|| {
                panic!("{kind:?} feature for a record that is no good SZ reading: {key:?}")
            });
            let want = [agg.mean, agg.integral, agg.derivative][slot];
            assert!(
                close(f.value, want),
                "{kind:?} at {key:?}: {} != {want}",
                f.value
            );
            assert!(bin_ok(range, want, f.bin), "{kind:?} bin at {key:?}");
            assert_eq!(f.window_count, agg.count, "{kind:?} window at {key:?}");
            assert!(
                covered.insert(key),
                "{kind:?} repeated at {key:?} without a restart"
            );
            triples
                .entry(f.client_id.clone())
                .or_default()
                .entry((f.event_time_ms, f.source_partition, f.source_offset))
                .or_default()[slot] = Some(f.bin);
        }
        assert_eq!(
            covered.len(),
            sz.len(),
            "{kind:?}: a feature per good SZ reading"
        );
    }

    // Predictions: as-of values of the good records, the model's probability.
    let index = |role: usize| {
        let mut by: BTreeMap<String, Vec<(i64, i64, i64)>> = BTreeMap::new();
        for m in read_all(topic_of(&t, role))
            .into_iter()
            .filter(|m| !is_poison(m))
        {
            let r = SensorReading::decode(unframe(m.payload().unwrap())).unwrap();
            by.entry(client(&m))
                .or_default()
                .push((r.event_time_ms, m.offset(), r.value as i64));
        }
        for v in by.values_mut() {
            v.sort();
        }
        by
    };
    let (sx, sy) = (index(0), index(1));
    let as_of = |idx: &BTreeMap<String, Vec<(i64, i64, i64)>>, c: &str, at: i64| {
        idx.get(c)
            .and_then(|v| v.iter().rev().find(|(et, _, _)| *et <= at))
            .map(|x| x.2)
    };
    let model = Logistic::default();
    let mut predicted: HashSet<Id> = HashSet::new();
    let preds = read_all(&t.topic_predictions);
    for m in &preds {
        let p = Prediction::decode(unframe(m.payload().unwrap())).unwrap();
        let src: Id = (p.source_topic.clone(), p.source_partition, p.source_offset);
        assert!(
            !expected.contains_key(&src),
            "a prediction from poison: {p:?}"
        );
        assert!(
            predicted.insert(src),
            "a repeated prediction without a restart: {p:?}"
        );
        let (c, at) = (p.client_id.as_str(), p.event_time_ms);
        assert_eq!(Some(p.features[0]), as_of(&sx, c, at), "SX of {p:?}");
        assert_eq!(Some(p.features[1]), as_of(&sy, c, at), "SY of {p:?}");
        let triple = triples.get(c).and_then(|m| {
            m.iter()
                .rev()
                .find(|((et, _, _), b)| *et <= at && b.iter().all(Option::is_some))
                .map(|((_, sp, so), b)| ((*sp, *so), b.map(Option::unwrap)))
        });
        let (source, bins) = triple.expect("a triple at or before the trigger");
        assert_eq!(
            (p.features_source_partition, p.features_source_offset),
            source,
            "triple of {p:?}"
        );
        assert_eq!(p.features[2..], bins.map(i64::from), "bins of {p:?}");
        let v = FeatureVector(p.features.clone().try_into().unwrap());
        assert!(
            close(p.probability, model.predict(&v, 0)),
            "probability of {p:?}"
        );
        assert_eq!(p.alert, p.probability >= 0.5);
    }
    // Every good SX/SY record is a prediction or a join dead letter saying why not.
    let explained: HashSet<Id> = join_outcomes.iter().map(|(_, s)| s.clone()).collect();
    for role in 0..2 {
        for m in read_all(topic_of(&t, role))
            .into_iter()
            .filter(|m| !is_poison(m))
        {
            let i = id(&m);
            assert!(
                predicted.contains(&i) || explained.contains(&i),
                "{i:?} silently dropped"
            );
        }
    }
    assert!(
        preds.len() + 3 * clients.len() >= good.len(),
        "{} predictions for {} good readings",
        preds.len(),
        good.len()
    );

    // Neither processor restarted; both stop cleanly.
    assert!(w.terminate().success());
    assert!(j.terminate().success());
    eprintln!(
        "poison: {sent_poison} bad records ({want_reasons:?}) among {} good readings, produced in \
         {:.1} s; {} predictions, {} join dead letters; whole test {:.1} s",
        good.len(),
        produced.as_secs_f64(),
        preds.len(),
        join_outcomes.len(),
        started.elapsed().as_secs_f64()
    );
}

fn send(producer: &FutureProducer, topic: &str, p: &Poison) -> rdkafka::producer::DeliveryFuture {
    let mut rec = FutureRecord::<[u8], [u8]>::to(topic);
    if let Some(k) = &p.key {
        rec = rec.key(&k[..]);
    }
    if let Some(v) = &p.value {
        rec = rec.payload(&v[..]);
    }
    loop {
        match producer.send_result(rec) {
            Ok(f) => return f,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((e, _)) => panic!("producing poison to {topic}: {e}"),
        }
    }
}
