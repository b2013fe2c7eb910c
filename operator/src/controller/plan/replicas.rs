//! Pure replica planner: how many consumers a stage should run.
//!
//! ```text
//!  lag (sum over ALL input topics) ─┐
//!  lagTargetPerReplica ─────────────┼─▶ recommend ─▶ want ─┐
//!  min / max / partitions ──────────┘                      ├─▶ plan ─▶ replicas, cooldown start
//!  current replicas, now, cooldown start, cooldown ────────┘
//! ```
//!
//! `recommend` = ceil(lag / target), clamped to [min, min(max, partitions)], then rounded up to
//! the smallest divisor of the partition count within the bounds (100 partitions: 1 2 4 5 10 20
//! 25 50 100), so every consumer gets the same number of partitions. With a time-lag target
//! (`timeLagTargetSeconds`) the raw count is instead `ceil(max(current, 1) × timeLag / target)`
//! ([`recommend_time`], the HorizontalPodAutoscaler's rule for a value target), clamped and
//! rounded the same way. An activation threshold (`activationTimeLagSeconds`) holds every
//! lag-driven scale-up while the time lag is below it or unknown. A lag-driven scale-up
//! adds at most `max_step` replicas per plan (0: no limit), landing on the largest divisor of
//! the partition count within the step when there is one (see [`limit_step`]); scale-ups
//! otherwise happen at once;
//! a scale-down happens only after the recommendation stayed below the current count for the
//! whole cooldown (a stabilisation window, as the HPA does), which avoids rebalance storms.
//! Time is passed in; nothing here reads a clock.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Bounds and target of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Lower bound on replicas.
    pub min: i32,
    /// Upper bound on replicas.
    pub max: i32,
    /// Partitions of the stage's input topics (an upper bound: more consumers would idle).
    pub partitions: i32,
    /// Messages of lag one replica should carry (≥ 1).
    pub lag_target: i64,
}

impl Bounds {
    /// The effective upper bound, `min(max, partitions)`, never below 0.
    pub fn cap(&self) -> i32 {
        self.max.min(self.partitions).max(0)
    }
    /// The effective lower bound, `min(min, cap)`, never below 0.
    pub fn floor(&self) -> i32 {
        self.min.min(self.cap()).max(0)
    }
}

/// Replica count for `lag` messages of backlog, ignoring the current count and the cooldown.
pub fn recommend(lag: u64, b: &Bounds) -> i32 {
    let target = u64::try_from(b.lag_target.max(1)).unwrap_or(1);
    let raw = lag.div_ceil(target);
    let cap = b.cap();
    let floor = b.floor();
    let raw = i32::try_from(raw).unwrap_or(i32::MAX).clamp(floor, cap);
    round_to_divisor(raw, b)
}

/// The smallest divisor of the partition count in `[n, cap]`; `n` itself when there is none
/// (or when `n` or the partition count is 0).
fn round_to_divisor(n: i32, b: &Bounds) -> i32 {
    if n == 0 || b.partitions <= 0 {
        return n;
    }
    (n..=b.cap()).find(|d| b.partitions % d == 0).unwrap_or(n)
}

/// Replica count for a time lag of `time_lag` seconds at `current` replicas against a target
/// of `target` seconds (≥ 1): `ceil(max(current, 1) × time_lag / target)`, clamped to the
/// bounds and rounded up to a divisor of the partition count like [`recommend`].
pub fn recommend_time(time_lag: f64, current: i32, target: f64, b: &Bounds) -> i32 {
    let target = if target.is_finite() && target >= 1.0 {
        target
    } else {
        1.0
    };
    let lag = if time_lag.is_finite() {
        time_lag.max(0.0)
    } else {
        f64::MAX
    };
    let raw = (f64::from(current.max(1)) * lag / target).ceil();
    let raw = if raw >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        raw as i32
    };
    round_to_divisor(raw.clamp(b.floor(), b.cap()), b)
}

/// What the planner decided for a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// No change.
    Steady,
    /// Scaled up from the first to the second count.
    Up(i32, i32),
    /// Scaled down from the first to the second count.
    Down(i32, i32),
    /// Wants fewer replicas (the count held), waiting for the cooldown.
    CoolingDown(i32),
    /// Lag unknown (broker unreachable): the count is only kept within bounds.
    LagUnknown,
}

/// Planner input for one stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Input {
    /// Replicas the Deployment has now; `None` when it does not exist yet.
    pub current: Option<i32>,
    /// Consumer lag summed over the stage's input topics; `None` when unknown.
    pub lag: Option<u64>,
    /// Bounds and target.
    pub bounds: Bounds,
    /// Scale-down stabilisation window.
    pub cooldown: SignedDuration,
    /// Now.
    pub now: Timestamp,
    /// Since when the recommendation has been below `current` (from the previous plan).
    pub pending_since: Option<Timestamp>,
    /// Most replicas one lag-driven scale-up adds (`processors.maxScaleUpStep`); 0: no limit.
    /// A count below the floor (a raised minimum, a resume from 0) goes to the floor at once.
    pub max_step: i32,
    /// The stage's time lag, seconds ([`super::flow::time_lag`]); `None` when unknown.
    pub time_lag: Option<f64>,
    /// `timeLagTargetSeconds`: `Some` scales on `time_lag` ([`recommend_time`]) instead of
    /// `lag`; `None` on record lag.
    pub time_lag_target: Option<f64>,
    /// `activationTimeLagSeconds`: no lag-driven scale-up while `time_lag` is below it or
    /// unknown; 0: no threshold.
    pub activation: f64,
}

/// A scale-up from `current` to `to` limited to `current + step` (no limit for `step` ≤ 0):
/// the largest divisor of the partition count in `(current, current + step]`, else
/// `current + step`.
pub fn limit_step(current: i32, to: i32, step: i32, b: &Bounds) -> i32 {
    let limit = current.saturating_add(step);
    if step <= 0 || to <= limit {
        return to;
    }
    if b.partitions > 0
        && let Some(d) = (current + 1..=limit).rev().find(|d| b.partitions % d == 0)
    {
        return d;
    }
    limit
}

/// Planner output for one stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Replicas to set.
    pub replicas: i32,
    /// Cooldown start to remember for the next plan.
    pub pending_since: Option<Timestamp>,
    /// What changed.
    pub change: Change,
}

/// Decides the replicas of one stage. See the module docs for the rules.
pub fn plan(i: &Input) -> Plan {
    let b = &i.bounds;
    let (floor, cap) = (b.floor(), b.cap());
    // The metric the stage scales on: record lag, or time lag with a time-lag target.
    let want = match i.time_lag_target {
        None => i.lag.map(|lag| recommend(lag, b)),
        Some(target) => i
            .time_lag
            .map(|t| recommend_time(t, i.current.unwrap_or(0), target, b)),
    };
    let Some(want) = want else {
        // Without lag the count is only kept within bounds; a count the bounds move is rounded
        // up to a divisor of the partitions like any recommendation (so the result of a bounds
        // change does not depend on whether the lag read succeeded).
        let replicas = match i.current {
            Some(c) if (floor..=cap).contains(&c) => c,
            other => round_to_divisor(other.unwrap_or(floor).clamp(floor, cap), b),
        };
        return Plan {
            replicas,
            pending_since: i.pending_since,
            change: match i.current {
                Some(c) if c < replicas => Change::Up(c, replicas),
                Some(c) if c > replicas => Change::Down(c, replicas),
                _ => Change::LagUnknown,
            },
        };
    };
    // Below the activation threshold (or with the time lag unknown) a lag-driven scale-up
    // is held; the bounds still apply.
    let activated = i.activation <= 0.0 || i.time_lag.is_some_and(|t| t >= i.activation);
    let Some(current) = i.current else {
        return Plan {
            replicas: if activated {
                want
            } else {
                round_to_divisor(floor, b)
            },
            pending_since: None,
            change: Change::Steady,
        };
    };
    // Bounds changed by the user apply at once, without cooldown.
    if current > cap {
        return Plan {
            replicas: want,
            pending_since: None,
            change: Change::Down(current, want),
        };
    }
    if !activated && want > current && current >= floor {
        return Plan {
            replicas: current,
            pending_since: None,
            change: Change::Steady,
        };
    }
    if current < floor || want > current {
        let to = if current < floor {
            want.max(floor)
        } else {
            limit_step(current, want, i.max_step, b)
        };
        return Plan {
            replicas: to,
            pending_since: None,
            change: Change::Up(current, to),
        };
    }
    if want == current {
        return Plan {
            replicas: current,
            pending_since: None,
            change: Change::Steady,
        };
    }
    // want < current: wait until it has wanted fewer for the whole cooldown.
    let since = i.pending_since.unwrap_or(i.now);
    if i.now.duration_since(since) >= i.cooldown {
        Plan {
            replicas: want,
            pending_since: None,
            change: Change::Down(current, want),
        }
    } else {
        Plan {
            replicas: current,
            pending_since: Some(since),
            change: Change::CoolingDown(want),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bounds(min: i32, max: i32, partitions: i32, lag_target: i64) -> Bounds {
        Bounds {
            min,
            max,
            partitions,
            lag_target,
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid timestamp")
    }

    fn input(current: Option<i32>, lag: Option<u64>, now: i64, pending: Option<i64>) -> Input {
        Input {
            current,
            lag,
            bounds: bounds(1, 10, 100, 1000),
            cooldown: SignedDuration::from_secs(60),
            now: t(now),
            pending_since: pending.map(t),
            max_step: 0,
            time_lag: None,
            time_lag_target: None,
            activation: 0.0,
        }
    }

    /// Time-lag mode: target 10 s, the time lag given.
    fn timed(current: Option<i32>, time_lag: Option<f64>, activation: f64) -> Input {
        Input {
            time_lag,
            time_lag_target: Some(10.0),
            activation,
            ..input(current, Some(0), 0, None)
        }
    }

    #[test]
    fn time_lag_scales_proportionally_to_divisors() {
        let b = bounds(1, 100, 100, 1000);
        assert_eq!(recommend_time(0.0, 4, 10.0, &b), 1);
        assert_eq!(recommend_time(10.0, 4, 10.0, &b), 4, "on target: steady");
        assert_eq!(recommend_time(25.0, 4, 10.0, &b), 10, "4 × 2.5 = 10");
        assert_eq!(recommend_time(26.0, 4, 10.0, &b), 20, "10.4 → 11 → 20");
        assert_eq!(
            recommend_time(30.0, 0, 10.0, &b),
            4,
            "from 0 as from 1: 3 → 4"
        );
        assert_eq!(recommend_time(f64::INFINITY, 1, 10.0, &b), 100);
        assert_eq!(recommend_time(f64::NAN, 1, 10.0, &b), 100);
        let p = plan(&timed(Some(2), Some(50.0), 0.0));
        assert_eq!(p.change, Change::Up(2, 10));
        // The record lag is not looked at in time-lag mode.
        let mut i = timed(Some(2), Some(10.0), 0.0);
        i.lag = Some(1_000_000);
        assert_eq!(plan(&i).change, Change::Steady);
        // Unknown time lag in time-lag mode: held like an unknown record lag.
        let p = plan(&timed(Some(4), None, 0.0));
        assert_eq!((p.replicas, p.change), (4, Change::LagUnknown));
    }

    #[test]
    fn no_scale_up_below_the_activation_threshold() {
        // Time-lag mode: 30 s at 2 replicas wants 6 → 10, held under a 60 s threshold.
        let p = plan(&timed(Some(2), Some(30.0), 60.0));
        assert_eq!((p.replicas, p.change), (2, Change::Steady));
        let p = plan(&timed(Some(2), Some(60.0), 60.0));
        assert_eq!(p.change, Change::Up(2, 10), "12, capped at max 10");
        // Record-lag mode with a threshold: held while the time lag is low or unknown.
        let mut i = input(Some(1), Some(50_000), 0, None);
        i.activation = 30.0;
        assert_eq!(plan(&i).change, Change::Steady);
        i.time_lag = Some(29.0);
        assert_eq!(plan(&i).change, Change::Steady);
        i.time_lag = Some(31.0);
        assert_eq!(plan(&i).change, Change::Up(1, 10));
        // A scale-down is not held, nor a raised minimum.
        let mut i = input(Some(5), Some(0), 100, Some(0));
        i.activation = 30.0;
        assert_eq!(plan(&i).change, Change::Down(5, 1));
        let mut i = input(Some(1), Some(0), 0, None);
        i.activation = 30.0;
        i.bounds.min = 4;
        assert_eq!(plan(&i).change, Change::Up(1, 4));
        // No Deployment yet and not activated: the floor.
        let mut i = input(None, Some(50_000), 0, None);
        i.activation = 30.0;
        assert_eq!(plan(&i).replicas, 1);
    }

    #[test]
    fn recommends_divisors_of_the_partition_count() {
        let b = bounds(1, 100, 100, 1000);
        assert_eq!(recommend(0, &b), 1);
        assert_eq!(recommend(1, &b), 1);
        assert_eq!(recommend(2500, &b), 4); // 3 → 4 (divides 100)
        assert_eq!(recommend(6000, &b), 10); // 6 → 10
        assert_eq!(recommend(30_000, &b), 50); // 30 → 50
        assert_eq!(recommend(u64::MAX, &b), 100);
    }

    #[test]
    fn keeps_a_non_divisor_when_no_divisor_fits_under_max() {
        assert_eq!(recommend(3000, &bounds(1, 3, 100, 1000)), 3);
    }

    #[test]
    fn never_exceeds_partitions() {
        assert_eq!(recommend(1_000_000, &bounds(1, 50, 7, 1)), 7);
    }

    #[test]
    fn scales_up_at_once() {
        let p = plan(&input(Some(1), Some(4500), 0, None));
        assert_eq!(p.replicas, 5);
        assert_eq!(p.change, Change::Up(1, 5));
    }

    #[test]
    fn scales_down_only_after_the_cooldown() {
        let p = plan(&input(Some(5), Some(0), 0, None));
        assert_eq!((p.replicas, p.change), (5, Change::CoolingDown(1)));
        assert_eq!(p.pending_since, Some(t(0)));
        let p = plan(&input(Some(5), Some(0), 59, Some(0)));
        assert_eq!(p.replicas, 5);
        let p = plan(&input(Some(5), Some(0), 60, Some(0)));
        assert_eq!((p.replicas, p.change), (1, Change::Down(5, 1)));
        assert_eq!(p.pending_since, None);
    }

    #[test]
    fn a_lag_spike_during_cooldown_resets_it() {
        let p = plan(&input(Some(5), Some(5000), 30, Some(0)));
        assert_eq!((p.replicas, p.pending_since), (5, None));
    }

    #[test]
    fn unknown_lag_keeps_the_count_within_bounds() {
        let p = plan(&input(Some(4), None, 0, None));
        assert_eq!((p.replicas, p.change), (4, Change::LagUnknown));
        let p = plan(&input(Some(40), None, 0, None));
        assert_eq!(p.replicas, 10);
        let p = plan(&input(None, None, 0, None));
        assert_eq!(p.replicas, 1);
        // A raised minimum moves the count to the next divisor of 100, lag known or not.
        let mut i = input(Some(2), None, 0, None);
        i.bounds.min = 3;
        assert_eq!(plan(&i).replicas, 4);
        i.lag = Some(0);
        assert_eq!(plan(&i).replicas, 4);
    }

    #[test]
    fn the_scale_up_step_limits_a_lag_spike_to_divisors_within_the_step() {
        let mut i = input(Some(1), Some(1_000_000), 0, None);
        i.bounds.max = 100;
        assert_eq!(plan(&i).replicas, 100, "no limit by default");
        i.max_step = 4;
        let p = plan(&i);
        assert_eq!((p.replicas, p.change), (5, Change::Up(1, 5)));
        i.current = Some(5);
        assert_eq!(plan(&i).replicas, 5 + 4, "no divisor of 100 in (5, 9]: 9");
        i.current = Some(20);
        assert_eq!(plan(&i).replicas, 24);
        i.current = Some(21);
        assert_eq!(plan(&i).replicas, 25);
        // Below the floor (a raised minimum, a resume from 0) the floor is reached at once.
        i.current = Some(0);
        i.bounds.min = 20;
        i.lag = Some(0);
        assert_eq!(plan(&i).replicas, 20);
    }

    #[test]
    fn lowered_max_applies_without_cooldown() {
        let p = plan(&input(Some(20), Some(1_000_000), 0, None));
        assert_eq!(p.replicas, 10);
    }

    /// Naive reference: scan every count from floor to cap.
    fn reference(lag: u64, b: &Bounds) -> i32 {
        let (floor, cap) = (b.floor(), b.cap());
        let mut raw = floor;
        while raw < cap && (raw as u64) * (b.lag_target as u64) < lag {
            raw += 1;
        }
        if raw == 0 {
            return 0;
        }
        for d in raw..=cap {
            if b.partitions % d == 0 {
                return d;
            }
        }
        raw
    }

    proptest! {
        #[test]
        fn recommend_matches_reference_and_bounds(
            lag in 0u64..2_000_000,
            min in 0i32..20,
            extra in 0i32..60,
            partitions in 1i32..120,
            target in 1i64..50_000,
        ) {
            let b = bounds(min, min + extra, partitions, target);
            let r = recommend(lag, &b);
            prop_assert_eq!(r, reference(lag, &b));
            prop_assert!(r <= partitions);
            prop_assert!(r <= b.max);
            prop_assert!(r >= b.floor());
        }

        /// With a step limit, a scale-up from within the bounds adds at most `step` replicas,
        /// never goes past what the unlimited plan would set, and a large enough step (or 0)
        /// is the unlimited plan.
        #[test]
        fn a_scale_up_never_exceeds_the_step(
            current in 1i32..100,
            lag in 0u64..2_000_000,
            step in 0i32..30,
            partitions in 1i32..120,
        ) {
            let mut i = input(Some(current), Some(lag), 0, None);
            i.bounds = bounds(1, 100, partitions, 1000);
            let unlimited = plan(&i);
            i.max_step = step;
            let p = plan(&i);
            if current <= i.bounds.cap() && unlimited.replicas > current {
                prop_assert!(p.replicas > current);
                prop_assert!(p.replicas <= unlimited.replicas);
                if step > 0 {
                    prop_assert!(p.replicas - current <= step);
                }
                if step == 0 || current + step >= unlimited.replicas {
                    prop_assert_eq!(p.replicas, unlimited.replicas);
                }
            } else {
                prop_assert_eq!(p, unlimited);
            }
        }

        /// The activation threshold only ever holds scale-ups: with it the plan is the plan
        /// without it, except that a lag-driven scale-up below the threshold keeps the count;
        /// in time-lag mode the plan stays within the bounds and on target keeps the count.
        #[test]
        fn activation_only_holds_scale_ups(
            current in 0i32..150,
            lag in 0u64..2_000_000,
            // Whole seconds: the naive count compares products exactly.
            time_lag in proptest::option::of((0u32..500).prop_map(f64::from)),
            target in proptest::option::of((1u32..120).prop_map(f64::from)),
            activation in 0.0f64..200.0,
            elapsed in 0i64..120,
        ) {
            let mut i = Input { pending_since: Some(t(0)), ..input(Some(current), Some(lag), elapsed, None) };
            i.time_lag = time_lag;
            i.time_lag_target = target;
            let free = plan(&i);
            i.activation = activation;
            let held = plan(&i);
            let activated = activation <= 0.0 || time_lag.is_some_and(|t| t >= activation);
            let (floor, cap) = (i.bounds.floor(), i.bounds.cap());
            prop_assert!(held.replicas >= floor && held.replicas <= cap);
            if activated || free.replicas <= current || current < floor || current > cap {
                prop_assert_eq!(held, free);
            } else {
                prop_assert_eq!((held.replicas, held.change), (current, Change::Steady));
            }
            if let (Some(tl), Some(tt)) = (time_lag, target) {
                // The HPA rule against a naive count: the smallest n with n·target ≥ c·lag,
                // clamped and rounded to a divisor.
                let c = current.clamp(floor, cap);
                let mut n = 0i64;
                while (n as f64) * tt < f64::from(c.max(1)) * tl { n += 1; }
                let n = i32::try_from(n).unwrap_or(i32::MAX).clamp(floor, cap);
                let want = (n..=cap).find(|d| i.bounds.partitions % d == 0).unwrap_or(n);
                prop_assert_eq!(recommend_time(tl, c, tt, &i.bounds), want);
            }
        }

        #[test]
        fn plan_stays_within_bounds_and_never_drops_before_cooldown(
            current in 0i32..150,
            lag in proptest::option::of(0u64..2_000_000),
            elapsed in 0i64..120,
        ) {
            let i = Input { pending_since: Some(t(0)), ..input(Some(current), lag, elapsed, None) };
            let p = plan(&i);
            prop_assert!(p.replicas >= i.bounds.floor() && p.replicas <= i.bounds.cap());
            if elapsed < 60 && current <= i.bounds.cap() {
                prop_assert!(p.replicas >= current.min(i.bounds.cap()));
            }
        }
    }
}
