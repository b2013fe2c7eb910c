//! Latency per hop from the broker's append times: pure matching of each output record to the
//! input record it came from, and nearest-rank percentiles.
//!
//! ```text
//!   sensor ─► SZ ──(window-processor)──► FA ──(join-predict)──► prediction
//!   sensor ─► SX, SY ─────────────(join-predict)──────────────► prediction
//! ```
//!
//! The bench creates its latency topics with `message.timestamp.type=LogAppendTime`, so every
//! record's timestamp is the moment the broker appended it, on one clock. A hop is the
//! difference between the append time of an output and that of the input record it came from,
//! matched by the ids the records carry: a feature names its SZ reading (`source_partition`,
//! `source_offset`, `source_index`), a prediction names its triggering record (`source_topic`,
//! `source_partition`, `source_offset`) and, for a feature trigger, the SZ reading behind the
//! triple (`features_source_*`). Only records whose triggering reading was sent inside the
//! measured span (its `ingest_time_ms`, the load generator's clock) count.

use rustc_hash::FxHashMap;

/// Which record triggered a prediction (the bench's view of `TriggerKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Trigger {
    Sx,
    Sy,
    Features,
}

/// A sensor reading as read back: where it is, when the broker appended it, and when the
/// load generator sent it (its `ingest_time_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reading {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) append_ms: i64,
    pub(crate) ingest_ms: i64,
}

/// An FA record as read back: the SZ reading it came from and its append time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FeatureRec {
    pub(crate) sz_partition: i32,
    pub(crate) sz_offset: i64,
    pub(crate) index: u32,
    pub(crate) append_ms: i64,
    pub(crate) ingest_ms: i64,
}

/// A prediction as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PredictionRec {
    pub(crate) trigger: Trigger,
    /// Partition and offset of the triggering SX or SY record (unused for features).
    pub(crate) source_partition: i32,
    pub(crate) source_offset: i64,
    /// The SZ reading behind the feature triple, with its emission index.
    pub(crate) features_source: (i32, i64, u32),
    pub(crate) append_ms: i64,
    pub(crate) ingest_ms: i64,
}

/// Everything read back from one run's topics.
#[derive(Debug, Default, Clone)]
pub(crate) struct Appends {
    pub(crate) sx: Vec<Reading>,
    pub(crate) sy: Vec<Reading>,
    pub(crate) sz: Vec<Reading>,
    pub(crate) fa: Vec<FeatureRec>,
    pub(crate) predictions: Vec<PredictionRec>,
}

/// The hops of one run, each a list of latencies in ms (unsorted), and the outputs in the span
/// whose input was not found (a matching bug or a record outside what was read).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Hops {
    /// Load generator's send (its wall clock) → SZ appended: the sensors' own hop.
    pub(crate) sensor_sz: Vec<i64>,
    /// SZ appended → its FA appended: the window-processor's hop.
    pub(crate) sz_fa: Vec<i64>,
    /// FA appended → the prediction it triggered appended: the join's hop for features.
    pub(crate) fa_prediction: Vec<i64>,
    /// SX appended → its prediction appended.
    pub(crate) sx_prediction: Vec<i64>,
    /// SY appended → its prediction appended.
    pub(crate) sy_prediction: Vec<i64>,
    /// SZ appended → the prediction its features triggered appended: both hops.
    pub(crate) sz_prediction: Vec<i64>,
    pub(crate) unmatched: usize,
}

/// Matches every output whose reading was sent in `[from, to)` (ingest ms) to its input.
pub(crate) fn hops(a: &Appends, (from, to): (i64, i64)) -> Hops {
    let inside = |ingest: i64| (from..to).contains(&ingest);
    // The first record of an id counts (a repeat after a restart is not the hop).
    let index = |v: &[Reading]| {
        let mut m = FxHashMap::<(i32, i64), i64>::default();
        for r in v {
            m.entry((r.partition, r.offset)).or_insert(r.append_ms);
        }
        m
    };
    let (sx, sy, sz) = (index(&a.sx), index(&a.sy), index(&a.sz));
    let mut fa = FxHashMap::<(i32, i64, u32), i64>::default();
    for f in &a.fa {
        fa.entry((f.sz_partition, f.sz_offset, f.index))
            .or_insert(f.append_ms);
    }
    let mut h = Hops::default();
    for r in a.sz.iter().filter(|r| inside(r.ingest_ms)) {
        h.sensor_sz.push(r.append_ms - r.ingest_ms);
    }
    for f in a.fa.iter().filter(|f| inside(f.ingest_ms)) {
        match sz.get(&(f.sz_partition, f.sz_offset)) {
            Some(s) => h.sz_fa.push(f.append_ms - s),
            None => h.unmatched += 1,
        }
    }
    for p in a.predictions.iter().filter(|p| inside(p.ingest_ms)) {
        let found = match p.trigger {
            Trigger::Sx | Trigger::Sy => {
                let (store, hop) = if p.trigger == Trigger::Sx {
                    (&sx, &mut h.sx_prediction)
                } else {
                    (&sy, &mut h.sy_prediction)
                };
                store
                    .get(&(p.source_partition, p.source_offset))
                    .map(|s| hop.push(p.append_ms - s))
            }
            Trigger::Features => {
                let (sp, so, _) = p.features_source;
                match (fa.get(&p.features_source), sz.get(&(sp, so))) {
                    (Some(f), Some(s)) => {
                        h.fa_prediction.push(p.append_ms - f);
                        h.sz_prediction.push(p.append_ms - s);
                        Some(())
                    }
                    _ => None,
                }
            }
        };
        if found.is_none() {
            h.unmatched += 1;
        }
    }
    h
}

/// Nearest-rank percentiles of a hop, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) p50: i64,
    pub(crate) p90: i64,
    pub(crate) p99: i64,
    pub(crate) max: i64,
    pub(crate) n: usize,
}

/// The value at quantile `q` of sorted `v` by the nearest-rank rule: the smallest value with at
/// least `q · n` values at or below it (`None` when `v` is empty).
pub(crate) fn nearest_rank(v: &[i64], q: f64) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// p50, p90, p99 and max of `v` (`None` when empty).
pub(crate) fn summary(v: &[i64]) -> Option<Summary> {
    let mut s = v.to_vec();
    s.sort_unstable();
    Some(Summary {
        p50: nearest_rank(&s, 0.5)?,
        p90: nearest_rank(&s, 0.9)?,
        p99: nearest_rank(&s, 0.99)?,
        max: *s.last()?,
        n: s.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        let s = summary(&v).unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.max, s.n), (50, 90, 99, 100, 100));
        // Unsorted input, repeats, one value.
        let s = summary(&[7, 3, 3, 9, 1]).unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.max), (3, 9, 9, 9));
        assert_eq!(summary(&[5]).map(|s| (s.p50, s.p99)), Some((5, 5)));
        assert_eq!(summary(&[]), None);
    }

    fn reading(partition: i32, offset: i64, append_ms: i64, ingest_ms: i64) -> Reading {
        Reading {
            partition,
            offset,
            append_ms,
            ingest_ms,
        }
    }

    #[test]
    fn each_output_is_matched_to_its_own_input() {
        let a = Appends {
            sz: vec![reading(0, 5, 1_010, 1_000), reading(1, 5, 1_020, 1_000)],
            sx: vec![reading(1, 5, 1_005, 1_000)],
            sy: vec![reading(0, 5, 1_006, 1_000)],
            fa: vec![
                // Same offset, other partition: must not be confused.
                FeatureRec {
                    sz_partition: 1,
                    sz_offset: 5,
                    index: 0,
                    append_ms: 1_100,
                    ingest_ms: 1_000,
                },
                FeatureRec {
                    sz_partition: 0,
                    sz_offset: 5,
                    index: 0,
                    append_ms: 1_040,
                    ingest_ms: 1_000,
                },
            ],
            predictions: vec![
                PredictionRec {
                    trigger: Trigger::Features,
                    source_partition: 0,
                    source_offset: 77,
                    features_source: (0, 5, 0),
                    append_ms: 1_300,
                    ingest_ms: 1_000,
                },
                PredictionRec {
                    trigger: Trigger::Sx,
                    source_partition: 1,
                    source_offset: 5,
                    features_source: (1, 5, 0),
                    append_ms: 1_205,
                    ingest_ms: 1_000,
                },
                PredictionRec {
                    trigger: Trigger::Sy,
                    source_partition: 0,
                    source_offset: 5,
                    features_source: (0, 5, 0),
                    append_ms: 1_406,
                    ingest_ms: 1_000,
                },
                // Outside the span: not counted, not unmatched.
                PredictionRec {
                    trigger: Trigger::Sy,
                    source_partition: 9,
                    source_offset: 9,
                    features_source: (9, 9, 0),
                    append_ms: 0,
                    ingest_ms: 5_000,
                },
                // Its SX record was not read: unmatched.
                PredictionRec {
                    trigger: Trigger::Sx,
                    source_partition: 3,
                    source_offset: 1,
                    features_source: (1, 5, 0),
                    append_ms: 1_500,
                    ingest_ms: 1_000,
                },
            ],
        };
        let h = hops(&a, (1_000, 2_000));
        assert_eq!(h.sensor_sz, [10, 20]);
        assert_eq!(h.sz_fa, [80, 30]);
        assert_eq!(h.fa_prediction, [260]);
        assert_eq!(h.sz_prediction, [290]);
        assert_eq!(h.sx_prediction, [200]);
        assert_eq!(h.sy_prediction, [400]);
        assert_eq!(h.unmatched, 1);
    }

    /// The naive reference: for each output, scan every input for the one it names.
    fn naive(a: &Appends, (from, to): (i64, i64)) -> Hops {
        let inside = |i: i64| i >= from && i < to;
        let find = |v: &[Reading], p: i32, o: i64| {
            v.iter()
                .find(|r| r.partition == p && r.offset == o)
                .map(|r| r.append_ms)
        };
        let mut h = Hops::default();
        for r in &a.sz {
            if inside(r.ingest_ms) {
                h.sensor_sz.push(r.append_ms - r.ingest_ms);
            }
        }
        for f in &a.fa {
            if !inside(f.ingest_ms) {
                continue;
            }
            match find(&a.sz, f.sz_partition, f.sz_offset) {
                Some(s) => h.sz_fa.push(f.append_ms - s),
                None => h.unmatched += 1,
            }
        }
        for p in &a.predictions {
            if !inside(p.ingest_ms) {
                continue;
            }
            let ok = match p.trigger {
                Trigger::Sx => find(&a.sx, p.source_partition, p.source_offset)
                    .map(|s| h.sx_prediction.push(p.append_ms - s)),
                Trigger::Sy => find(&a.sy, p.source_partition, p.source_offset)
                    .map(|s| h.sy_prediction.push(p.append_ms - s)),
                Trigger::Features => {
                    let (sp, so, si) = p.features_source;
                    let f =
                        a.fa.iter()
                            .find(|f| (f.sz_partition, f.sz_offset, f.index) == (sp, so, si));
                    match (f, find(&a.sz, sp, so)) {
                        (Some(f), Some(s)) => {
                            h.fa_prediction.push(p.append_ms - f.append_ms);
                            h.sz_prediction.push(p.append_ms - s);
                            Some(())
                        }
                        _ => None,
                    }
                }
            };
            if ok.is_none() {
                h.unmatched += 1;
            }
        }
        h
    }

    fn trace() -> impl Strategy<Value = Appends> {
        // Small id spaces so outputs name existing and missing inputs alike; offsets unique
        // per partition within a topic, as in Kafka.
        let readings = || {
            proptest::collection::btree_map((0..3i32, 0..6i64), (0..500i64, 0..40i64), 0..12)
                .prop_map(|m| {
                    m.into_iter()
                        .map(|((p, o), (a, i))| reading(p, o, a, i))
                        .collect::<Vec<_>>()
                })
        };
        let fa = proptest::collection::btree_map(
            (0..3i32, 0..6i64, 0..2u32),
            (0..500i64, 0..40i64),
            0..12,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|((p, o, index), (append_ms, ingest_ms))| FeatureRec {
                    sz_partition: p,
                    sz_offset: o,
                    index,
                    append_ms,
                    ingest_ms,
                })
                .collect::<Vec<_>>()
        });
        let trig = prop_oneof![
            Just(Trigger::Sx),
            Just(Trigger::Sy),
            Just(Trigger::Features)
        ];
        let preds = proptest::collection::vec(
            (
                trig,
                0..3i32,
                0..6i64,
                (0..3i32, 0..6i64, 0..2u32),
                0..900i64,
                0..40i64,
            ),
            0..20,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(
                    |(trigger, sp, so, fs, append_ms, ingest_ms)| PredictionRec {
                        trigger,
                        source_partition: sp,
                        source_offset: so,
                        features_source: fs,
                        append_ms,
                        ingest_ms,
                    },
                )
                .collect::<Vec<_>>()
        });
        (readings(), readings(), readings(), fa, preds).prop_map(|(sx, sy, sz, fa, predictions)| {
            Appends {
                sx,
                sy,
                sz,
                fa,
                predictions,
            }
        })
    }

    proptest! {
        #[test]
        fn matching_agrees_with_a_scan(a in trace(), from in 0..20i64, len in 0..40i64) {
            let w = (from, from + len);
            prop_assert_eq!(hops(&a, w), naive(&a, w));
        }

        #[test]
        fn nearest_rank_agrees_with_counting(mut v in proptest::collection::vec(-50..50i64, 1..60), q in 0.0..=1.0f64) {
            let got = summary(&v).map(|_| ()).and_then(|()| {
                v.sort_unstable();
                nearest_rank(&v, q)
            });
            // The smallest value x of v with #{y ≤ x} ≥ q·n (at least one value).
            let need = (q * v.len() as f64).ceil().max(1.0) as usize;
            let want = v.iter().copied().filter(|x| v.iter().filter(|y| *y <= x).count() >= need).min();
            prop_assert_eq!(got, want);
        }
    }
}
