//! Pure flow estimates from end-offset reads: records per second appended to a set of topics
//! and a consumer group's time lag ("seconds behind the head").
//!
//! ```text
//!   every reconcile: (now, Σ end offsets) ─▶ History::record ─▶ samples, oldest first
//!   samples + Σ committed positions ─▶ time_lag()  ─▶ seconds
//!   samples ─────────────────────────▶ rate()      ─▶ records / s
//! ```
//!
//! The end offsets of a topic only grow, so the samples are a monotone map from time to
//! "how many records the topics held then". The time lag of a group at position `P` (the sum
//! of its committed offsets) is `now − t*`, where `t*` is when the topics' end stood at `P`:
//! the append time of the next record the group will process, interpolated linearly between
//! the two samples around `P` (the approach of kafka-lag-exporter's time-lag estimate, here
//! over the sums of a stage's partitions). Its resolution is the reconcile interval. Before the
//! oldest sample it is extrapolated at the mean rate of the samples; when the topics did not
//! grow at all over the samples it is the span of the samples, a lower bound. Nothing here
//! reads a clock: every time is passed in.

use std::collections::{BTreeMap, VecDeque};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::controller::build::Stage;
use sensorflow_kafka::StageOffsets;

/// How long samples are kept (the farthest back a time lag is interpolated, not extrapolated).
pub const KEEP: SignedDuration = SignedDuration::from_secs(3600);
/// Most samples kept per series (one per reconcile; older ones are dropped first).
pub const MAX_SAMPLES: usize = 1024;
/// A rate is measured over at least this span (the newest sample at least this old).
pub const RATE_SPAN: SignedDuration = SignedDuration::from_secs(10);

/// One read of a series: when, and the sum of the end offsets of its topics then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When the end offsets were read.
    pub at: Timestamp,
    /// Sum of the end offsets (records, transaction markers included).
    pub end: u64,
}

/// The samples of one series (a stage's input topics, the dead-letter topic, the late topic),
/// oldest first, with non-decreasing times and end offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds a read. A read earlier than the newest sample is ignored; a read whose end is
    /// below the newest sample's (topics deleted and recreated) starts the history afresh;
    /// samples older than [`KEEP`] before `s.at` (and beyond [`MAX_SAMPLES`]) are dropped,
    /// except that the newest of those stays as the interpolation's lower anchor.
    pub fn record(&mut self, s: Sample) {
        if let Some(last) = self.samples.back() {
            if s.at < last.at {
                return;
            }
            if s.end < last.end {
                self.samples.clear();
            }
        }
        self.samples.push_back(s);
        while self.samples.len() > MAX_SAMPLES
            || (self.samples.len() > 2
                && self
                    .samples
                    .get(1)
                    .is_some_and(|second| s.at.duration_since(second.at) > KEEP))
        {
            self.samples.pop_front();
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().copied().collect()
    }
}

/// Records per second appended between the newest sample and the newest earlier one at least
/// [`RATE_SPAN`] older; `None` when there is no such pair.
pub fn rate(samples: &[Sample]) -> Option<f64> {
    let last = samples.last()?;
    let base = samples
        .iter()
        .rev()
        .find(|s| last.at.duration_since(s.at) >= RATE_SPAN)?;
    let secs = last.at.duration_since(base.at).as_secs_f64();
    Some(last.end.saturating_sub(base.end) as f64 / secs)
}

/// Time lag in seconds of a group at `position` (sum of committed offsets over the same
/// partitions as the samples' end offsets), measured at the newest sample's time (see the
/// module docs). 0 when `position` is at or past the newest end; `None` without samples, or
/// with a single sample that `position` is behind.
pub fn time_lag(samples: &[Sample], position: u64) -> Option<f64> {
    let last = samples.last()?;
    if position >= last.end {
        return Some(0.0);
    }
    let secs = |a: Timestamp, b: Timestamp| b.duration_since(a).as_secs_f64();
    // The newest sample at or below the position: the head passed the position after it.
    if let Some(i) = samples.iter().rposition(|s| s.end <= position) {
        let (a, b) = (samples[i], samples[i + 1]);
        let fraction = (position - a.end) as f64 / (b.end - a.end) as f64;
        let t_star = secs(a.at, b.at) * fraction;
        return Some(secs(a.at, last.at) - t_star);
    }
    let first = samples.first()?;
    let span = secs(first.at, last.at);
    if samples.len() < 2 || span <= 0.0 {
        return None;
    }
    let grown = last.end - first.end;
    if grown == 0 {
        return Some(span);
    }
    let per_second = grown as f64 / span;
    Some(span + (first.end - position) as f64 / per_second)
}

/// A series of end-offset reads the operator keeps per pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Series {
    /// The input topics of a planner-scaled stage.
    Input(Stage),
    /// The dead-letter topic.
    DeadLetter,
    /// The late topic.
    Late,
}

/// The histories of one pipeline (kept in the operator's memory between reconciles: a
/// restarted operator, or a new leader, starts afresh).
pub type Histories = BTreeMap<Series, History>;

/// What one reconcile read from the broker for the flow estimates; `None` where a read failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    /// Lag, position and end offsets of each planner-scaled stage's group on its inputs.
    pub stages: BTreeMap<Stage, Option<StageOffsets>>,
    /// Sum of the dead-letter topic's end offsets.
    pub dead_letter_end: Option<u64>,
    /// Sum of the late topic's end offsets.
    pub late_end: Option<u64>,
}

/// The flow estimates of one reconcile (see the module docs for the definitions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flow {
    /// Time lag per planner-scaled stage, seconds; `None` when unknown.
    pub time_lag: BTreeMap<Stage, Option<f64>>,
    /// Records per second appended to each stage's inputs; `None` when unknown.
    pub records_in: BTreeMap<Stage, Option<f64>>,
    /// Records per second appended to the dead-letter topic.
    pub dead_letter: Option<f64>,
    /// Records per second appended to the late topic.
    pub late: Option<f64>,
}

impl Flow {
    /// A stage's time lag, if known.
    pub fn time_lag(&self, stage: Stage) -> Option<f64> {
        self.time_lag.get(&stage).copied().flatten()
    }
    /// A stage's input rate, if known.
    pub fn records_in(&self, stage: Stage) -> Option<f64> {
        self.records_in.get(&stage).copied().flatten()
    }
}

/// Records this reconcile's `reads` (taken at `now`) into `histories` and estimates the flow
/// from them. A failed read records nothing and leaves its estimates unknown.
pub fn observe(histories: &mut Histories, now: Timestamp, reads: &Reads) -> Flow {
    let mut flow = Flow::default();
    let mut series = |key: Series, end: Option<u64>| -> Option<Vec<Sample>> {
        let end = end?;
        let h = histories.entry(key).or_default();
        h.record(Sample { at: now, end });
        Some(h.samples())
    };
    for (stage, read) in &reads.stages {
        let samples = series(Series::Input(*stage), read.map(|r| r.end));
        let (time_lag, rate_in) = match (samples, read) {
            (Some(s), Some(r)) => (time_lag(&s, r.position), rate(&s)),
            _ => (None, None),
        };
        flow.time_lag.insert(*stage, time_lag);
        flow.records_in.insert(*stage, rate_in);
    }
    flow.dead_letter = series(Series::DeadLetter, reads.dead_letter_end).and_then(|s| rate(&s));
    flow.late = series(Series::Late, reads.late_end).and_then(|s| rate(&s));
    flow
}

/// Whole seconds of a non-negative estimate, rounded to the nearest, saturating.
pub fn whole_seconds(x: f64) -> i64 {
    if x.is_finite() {
        x.max(0.0).round().min(i64::MAX as f64) as i64
    } else {
        i64::MAX
    }
}

/// A rate rounded to two decimals (what the status shows).
pub fn two_decimals(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("time")
    }
    fn s(at: i64, end: u64) -> Sample {
        Sample { at: t(at), end }
    }

    #[test]
    fn time_lag_interpolates_between_the_samples_around_the_position() {
        // 10 records/s from t=0 on.
        let h = [s(0, 0), s(10, 100), s(20, 200), s(30, 300)];
        assert_eq!(time_lag(&h, 300), Some(0.0));
        assert_eq!(time_lag(&h, 400), Some(0.0), "past the head: 0");
        assert_eq!(time_lag(&h, 250), Some(5.0));
        assert_eq!(time_lag(&h, 200), Some(10.0));
        assert_eq!(time_lag(&h, 0), Some(30.0));
        // A pause in the input: the head stood still from 10 to 20 s.
        let h = [s(0, 0), s(10, 100), s(20, 100), s(30, 200)];
        assert_eq!(time_lag(&h, 100), Some(10.0), "appended after the pause");
        assert_eq!(time_lag(&h, 50), Some(25.0));
    }

    #[test]
    fn time_lag_before_the_oldest_sample_is_extrapolated_or_a_lower_bound() {
        let h = [s(0, 1000), s(10, 1100)];
        assert_eq!(
            time_lag(&h, 900),
            Some(20.0),
            "10/s: 100 records = 10 s more"
        );
        let flat = [s(0, 1000), s(10, 1000)];
        assert_eq!(time_lag(&flat, 900), Some(10.0), "no growth: the span");
        assert_eq!(time_lag(&[s(0, 1000)], 900), None);
        assert_eq!(time_lag(&[s(0, 1000)], 1000), Some(0.0));
        assert_eq!(time_lag(&[], 0), None);
    }

    #[test]
    fn rate_spans_at_least_ten_seconds() {
        let h = [s(0, 0), s(5, 50), s(12, 120), s(14, 160)];
        // Newest sample at least 10 s before t=14 is t=0: 160 records in 14 s.
        assert_eq!(rate(&h).map(two_decimals), Some(11.43));
        assert_eq!(rate(&h[..2]), None);
        assert_eq!(rate(&[s(0, 5), s(10, 5)]), Some(0.0));
    }

    #[test]
    fn history_drops_old_samples_and_restarts_on_a_smaller_end() {
        let mut h = History::default();
        for i in 0..10 {
            h.record(s(i * 1000, (i * 10) as u64));
        }
        let kept = h.samples();
        assert_eq!(kept.last(), Some(&s(9000, 90)));
        // The oldest kept is the anchor just beyond the hour.
        assert_eq!(kept.first(), Some(&s(5000, 50)));
        h.record(s(8000, 100));
        assert_eq!(h.samples().len(), kept.len(), "an earlier read is ignored");
        h.record(s(9500, 3));
        assert_eq!(h.samples(), vec![s(9500, 3)], "topics recreated");
    }

    #[test]
    fn observe_keeps_a_history_per_series_and_leaves_failed_reads_unknown() {
        let mut h = Histories::new();
        let read = |end: u64, position: u64| Reads {
            stages: BTreeMap::from([
                (
                    Stage::Window,
                    Some(StageOffsets {
                        end,
                        position,
                        lag: end - position,
                    }),
                ),
                (Stage::Join, None),
            ]),
            dead_letter_end: Some(end / 10),
            late_end: None,
        };
        let f = observe(&mut h, t(0), &read(100, 100));
        assert_eq!(f.time_lag(Stage::Window), Some(0.0));
        assert_eq!(f.records_in(Stage::Window), None, "one read: no rate");
        assert_eq!(f.time_lag(Stage::Join), None);
        let f = observe(&mut h, t(10), &read(300, 100));
        assert_eq!(f.time_lag(Stage::Window), Some(10.0));
        assert_eq!(f.records_in(Stage::Window), Some(20.0));
        assert_eq!(f.dead_letter, Some(2.0));
        assert_eq!((f.late, f.records_in(Stage::Join)), (None, None));
        assert!(!h.contains_key(&Series::Late));
    }

    /// Naive reference: walk the time axis second by second from long before the first
    /// sample, with the end offsets as the piecewise-linear function of time through the
    /// samples (extended back at the mean rate), and return how long before the newest sample
    /// the end first exceeded `position`.
    fn reference(samples: &[Sample], position: u64, step: f64) -> Option<f64> {
        let last = *samples.last()?;
        if position >= last.end {
            return Some(0.0);
        }
        let x = |s: &Sample| s.at.duration_since(samples[0].at).as_secs_f64();
        let first = samples[0];
        let span = x(&last);
        let rate = if span > 0.0 {
            (last.end - first.end) as f64 / span
        } else {
            0.0
        };
        let end_at = |time: f64| -> f64 {
            if time <= 0.0 {
                return first.end as f64 + rate * time;
            }
            for w in samples.windows(2) {
                let (a, b) = (w[0], w[1]);
                if time <= x(&b) {
                    let d = x(&b) - x(&a);
                    let f = if d > 0.0 { (time - x(&a)) / d } else { 1.0 };
                    return a.end as f64 + f * (b.end - a.end) as f64;
                }
            }
            last.end as f64
        };
        // The latest time at which the end was still ≤ position.
        let mut time = span;
        while time > -1.0e7 {
            if end_at(time) <= position as f64 + 1e-9 {
                return Some(span - time);
            }
            time -= step;
        }
        None
    }

    proptest! {
        /// Against the reference, within its one-step resolution, wherever the estimate is
        /// defined by interpolation or by a growing history; monotone in the position.
        #[test]
        fn time_lag_matches_a_stepped_reference_and_is_monotone(
            steps in proptest::collection::vec((1i64..30, 0u64..500), 2..12),
            start in 0u64..1000,
            back in 0u64..3000,
        ) {
            let mut samples = vec![s(0, start)];
            for (dt, grow) in &steps {
                let prev = *samples.last().expect("one");
                samples.push(Sample {
                    at: prev.at + SignedDuration::from_secs(*dt),
                    end: prev.end + grow,
                });
            }
            let last = *samples.last().expect("one");
            let position = last.end.saturating_sub(back);
            let got = time_lag(&samples, position);
            let grown = last.end > samples[0].end;
            if position >= samples[0].end || grown {
                let got = got.expect("defined");
                let want = reference(&samples, position, 0.01).expect("reference");
                prop_assert!((got - want).abs() <= 0.02 + want * 1e-6, "got {} want {}", got, want);
            }
            if let (Some(a), Some(b)) = (got, time_lag(&samples, position.saturating_add(1))) {
                prop_assert!(b <= a + 1e-9, "more progress never means more lag");
                prop_assert!(a >= 0.0);
            }
        }

        /// A constant input rate: the time lag is the backlog divided by the rate.
        #[test]
        fn a_constant_rate_gives_backlog_over_rate(
            per_second in 1u64..1000,
            n in 2i64..50,
            back in 0u64..10_000,
        ) {
            let samples: Vec<Sample> = (0..n).map(|i| s(i * 5, per_second * 5 * i as u64 + 7)).collect();
            let last = *samples.last().expect("one");
            let position = last.end.saturating_sub(back);
            let got = time_lag(&samples, position).expect("defined");
            let want = (last.end - position) as f64 / per_second as f64;
            prop_assert!((got - want).abs() < 1e-6, "got {} want {}", got, want);
        }
    }
}
