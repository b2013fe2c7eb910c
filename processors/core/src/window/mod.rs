//! Sliding event-time windows over SZ readings, per client, with amortised O(1) work per reading
//! and features that are a pure function of the window's readings.
//!
//! ```text
//!   reading ─► late? (t < watermark) ─► Outcome::Late
//!          └─► insert at its (t, arrival) place ─► evict t ≤ t_k − size ─► exact Σv, Σ(v+v')·Δt
//!                                                   ─► FA, FI (rounded once), FD ─► Outcome::Emit
//! ```
//!
//! ## Definition
//! For each accepted SZ reading `r_k = (t_k, v_k)` of a client, the window is
//! `W_k = { r_j : t_k − size < t_j ≤ t_k }`, taken over the client's accepted readings that
//! arrived up to and including `r_k` (ties in `t` are ordered by arrival). Over `W_k`, sorted by
//! `(t, arrival)`:
//! - **FA** (mean): `round(Σ v) / |W_k|` — the exact real sum of the values rounded once to the
//!   nearest double, then divided by the count (one more IEEE rounding); in value units. A
//!   one-reading window gives that reading bit for bit (also `-0.0`).
//! - **FI** (integral, AUC): the trapezoidal rule across consecutive readings,
//!   `round( Σ (v_i + v_{i+1}) · (t_{i+1} − t_i) / 2000 )` with `t` in ms — the exact real value
//!   rounded once to the nearest double (ties to even); in value·seconds (0 for one reading).
//! - **FD** (derivative): `(v_last − v_first) / ((t_last − t_first) · 0.001)` in IEEE double
//!   arithmetic, in value per second (0 when all readings share one timestamp). It reads two
//!   readings only, so it is already a function of the window alone.
//!
//! FA and FI therefore depend on the readings of the window only: not on what was evicted
//! before, on the arrival order of readings with different times, on restarts or on rebuilds.
//! They are computed with [`crate::exact::HybridSum`], which adds and evicts terms without
//! rounding: a reading that is an exact multiple of 2^-64 with `|v| < 2^30` (any decimal
//! sensor reading from about 6e-5 up: `17.1 = m·2^-48`) enters an `i128` fixed-point integer
//! (and `v · Δt` one integer product); any other reading (larger, tinier, subnormal) enters a
//! Shewchuk expansion ([`crate::exact::ExactSum`], as `math.fsum`) that exists only while such
//! readings are in the window. Both are exact, so the result is the same whichever holds a
//! term; the integer is the fast path (one addition instead of a chain of error-free
//! additions, and a rounding by integer operations). Exactness holds for `|v| ≤ 1e12` (the
//! input bound; in general for readings and products in the expansion's range, 2^-960 to
//! 2^1000, or in the fixed-point range) and any span the configuration allows;
//! `tests/independent/sfref.py` computes the same values with Python's `fractions` and the
//! property tests here compare bit for bit with a big-integer reference.
//!
//! ## Watermarks, lateness and out-of-order readings
//! The watermark is `max event time seen − grace`, tracked per partition (default) or per client
//! ([`WatermarkScope`]). A reading with `t < watermark` is **late**: it is not added to any
//! window and the caller routes it to the late topic with reason `late`. A reading with
//! `watermark ≤ t < max` is **out of order within grace**: it is inserted at its event-time
//! position, its own features are computed over its window as defined above, and it is counted in
//! the windows of later readings. Features already emitted are never revised (no retractions):
//! emission happens on arrival, so latency does not wait for the grace period.
//!
//! ## Cost
//! In-order readings (the common case) cost O(1) amortised: the exact sums of `v` and of the
//! trapezoids are updated on append and eviction (integer additions and one product on the
//! fixed-point path). [`WindowEngine::process_batch`] gives the same outcomes as one
//! [`WindowEngine::process`] per reading and, when the state outgrows the caches, overlaps
//! the cache misses of 32 readings at a time. An out-of-order reading costs O(log n) to find its place plus
//! O(n) to insert and compute its own window (n = readings retained by the client).
//!
//! ## Time arithmetic
//! Event times are any `i64`; every difference and bound is computed with checked or
//! saturating arithmetic, so times near `i64::MIN`/`MAX` never panic or wrap.
//!
//! ## Memory
//! A client retains readings with `t > max − grace − size`, 12 bytes each: the value (`f64`)
//! and the event time as a `u32` millisecond offset from a per-client base (rebased in O(n)
//! when a reading falls outside the 49.7-day range; the retained span is window + grace, so
//! that happens about never). Per client it also holds two exact sums (two `i128`s; the
//! expansions only while out-of-range readings are held), the fixed-point values of its newest
//! and its oldest live reading (two `i128`s, so the in-order path converts a reading on arrival
//! and once more when it becomes the oldest, not at every use) and a key of up to 24 bytes
//! inline in the map. Buffers grow by 25% rather than doubling, so slack stays small.
//! Under partition scope, a client whose newest reading is older than
//! `watermark − size` can no longer influence any window and its state is dropped.
//!
//! [`reference_features`] is the naive O(n²) implementation of the same definition, used by
//! the property tests and by the integration tests as an independent reference.

pub mod aligned;

use crate::exact::{HybridSum, to_fixed};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// One SZ reading: event time `t` in Unix ms and value `v`. 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Event time, Unix epoch milliseconds.
    pub t: i64,
    /// Value (finite).
    pub v: f64,
}

/// Where the watermark is tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatermarkScope {
    /// One watermark per Kafka partition: the max event time seen in the partition − grace
    /// (Kafka Streams' "stream time"). Requires producers whose clocks roughly agree.
    #[default]
    Partition,
    /// One watermark per client key: that client's max event time − grace.
    Client,
}

/// Largest window + grace, ms (≈ 24.8 days): retained readings store their time as a `u32`
/// offset, and the retained span is at most window + 2 × grace.
pub const MAX_SPAN_MS: i64 = (u32::MAX / 2) as i64;

/// Window configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Window length in ms (default 600 000 = 10 min). Must be > 0 and, with the grace,
    /// at most [`MAX_SPAN_MS`].
    pub size_ms: i64,
    /// Allowed lateness in ms (default 30 000). Must be ≥ 0.
    pub grace_ms: i64,
    /// Where the watermark is tracked.
    pub scope: WatermarkScope,
}

impl WindowConfig {
    /// Checks the bounds.
    ///
    /// # Errors
    /// A message when `size_ms ≤ 0`, `grace_ms < 0` or `size_ms + grace_ms > MAX_SPAN_MS`.
    pub fn validate(&self) -> Result<(), String> {
        if self.size_ms <= 0 {
            return Err(format!("window size must be > 0 ms, got {}", self.size_ms));
        }
        if self.grace_ms < 0 {
            return Err(format!("grace must be >= 0 ms, got {}", self.grace_ms));
        }
        if self.size_ms.saturating_add(self.grace_ms) > MAX_SPAN_MS {
            return Err(format!(
                "window size + grace must be at most {MAX_SPAN_MS} ms, got {}",
                self.size_ms.saturating_add(self.grace_ms)
            ));
        }
        Ok(())
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            size_ms: 600_000,
            grace_ms: 30_000,
            scope: WatermarkScope::Partition,
        }
    }
}

/// The three aggregates of one window (see the module docs for formulas and units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregates {
    /// FA: mean value.
    pub mean: f64,
    /// FI: trapezoidal integral, value·seconds.
    pub integral: f64,
    /// FD: (v_last − v_first) / (t_last − t_first), value per second.
    pub derivative: f64,
    /// Number of readings in the window (≥ 1).
    pub count: u32,
    /// `round(Σ v)`: the exact sum rounded once (the reading itself, bit for bit, for one
    /// reading); value units.
    pub sum: f64,
    /// Smallest value in the window; `0.0` unless the engine computes extremes
    /// ([`WindowEngine::with_extremes`]); value units.
    pub min: f64,
    /// Largest value in the window; `0.0` unless the engine computes extremes; value units.
    pub max: f64,
}

/// One aggregate of a window, what a feature topic (FA, FI, FD) carries. All are exact as
/// defined in the module docs: one rounding of the exact real value (sums, mean, integral),
/// or no rounding at all (count, min, max); the derivative reads two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Aggregate {
    /// Number of readings.
    Count,
    /// `round(Σ v)`, value units.
    Sum,
    /// `round(Σ v) / n`, value units (FA's default).
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Trapezoidal integral, value·seconds (FI's default).
    Integral,
    /// `(v_last − v_first) / (t_last − t_first)`, value per second (FD's default).
    Derivative,
}

impl Aggregate {
    /// Every aggregate, in declaration order.
    pub const ALL: [Aggregate; 7] = [
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Mean,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Integral,
        Aggregate::Derivative,
    ];

    /// Its value in `a`.
    #[inline]
    pub fn of(self, a: &Aggregates) -> f64 {
        match self {
            Aggregate::Count => f64::from(a.count),
            Aggregate::Sum => a.sum,
            Aggregate::Mean => a.mean,
            Aggregate::Min => a.min,
            Aggregate::Max => a.max,
            Aggregate::Integral => a.integral,
            Aggregate::Derivative => a.derivative,
        }
    }

    /// True for the aggregates that need the window's extremes (min, max).
    pub fn needs_extremes(self) -> bool {
        matches!(self, Aggregate::Min | Aggregate::Max)
    }
}

/// What happened to one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Accepted: the aggregates of its window.
    Emit(Aggregates),
    /// Older than the watermark: not added; route to the late topic.
    Late {
        /// The watermark it was older than, ms.
        watermark: i64,
    },
}

/// Adds (`remove = false`) or removes the trapezoid `(a.v + b.v) · (b.t − a.t)` (ms, without
/// the ½ and the ms → s factor, applied once at the end) exactly.
#[inline(always)]
fn trapezoid(area: &mut HybridSum, a: Reading, b: Reading, remove: bool) {
    trapezoid_fixed(area, a, to_fixed(a.v), b, to_fixed(b.v), remove);
}

/// [`trapezoid`] with the readings' fixed-point values already known (`fa = to_fixed(a.v)`,
/// `fb = to_fixed(b.v)`), so a reading that enters two terms is converted once.
#[inline(always)]
fn trapezoid_fixed(
    area: &mut HybridSum,
    a: Reading,
    fa: Option<i128>,
    b: Reading,
    fb: Option<i128>,
    remove: bool,
) {
    debug_assert!(fa == to_fixed(a.v) && fb == to_fixed(b.v));
    // Consecutive retained readings are < 2^31 ms apart (window + grace ≤ MAX_SPAN_MS).
    let dt = b.t.saturating_sub(a.t);
    if dt == 0 {
        return;
    }
    if let (Some(fa), Some(fb)) = (fa, fb) {
        // Both in the fixed-point range (the common case): one multiply-add in integers.
        let x = fa.wrapping_add(fb).wrapping_mul(i128::from(dt));
        area.add_fixed(if remove { x.wrapping_neg() } else { x });
    } else {
        let s = if remove { -1.0 } else { 1.0 };
        area.add_scaled(s * a.v, dt);
        area.add_scaled(s * b.v, dt);
    }
}

/// `x ≤ t − d` in exact integer arithmetic (no overflow near the `i64` limits).
#[inline]
fn at_or_before(x: i64, t: i64, d: i64) -> bool {
    i128::from(x) <= i128::from(t) - i128::from(d)
}

#[inline]
fn derivative(first: Reading, last: Reading) -> f64 {
    let dt = last.t.saturating_sub(first.t);
    if dt == 0 {
        0.0
    } else {
        (last.v - first.v) / (dt as f64 * 0.001)
    }
}

/// Sum, FA and FI from the exact sums of a window of `n ≥ 1` readings (`only` = the reading
/// when `n = 1`, returned bit for bit).
#[inline]
pub(crate) fn sum_mean_integral(
    sum_v: &HybridSum,
    area: &HybridSum,
    n: u32,
    only: f64,
) -> (f64, f64, f64) {
    if n == 1 {
        return (only, only, 0.0);
    }
    let sum = sum_v.round();
    // The divisor 2000 turns `Σ (v + v') · Δt_ms` into value·seconds: ½ (trapezoid) × 1/1000.
    (sum, sum / f64::from(n), area.div2000_round())
}

/// A buffered reading: 12 bytes (`packed(4)` keeps the `f64` at 4-byte alignment; fields are
/// only ever read by value).
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Slot {
    dt: u32,
    v: f64,
}

/// A cached [`to_fixed`] of one buffered reading's value, so the in-order path converts each
/// reading once on arrival and once more when it becomes the oldest live reading, not at
/// every use. Two halves keep the client state 8-byte aligned; `hi == i64::MIN` stands for
/// `None` (a fixed-point value is below 2^94 in magnitude, so it never has that high half).
#[derive(Debug, Clone, Copy, PartialEq)]
struct FixedCache {
    lo: u64,
    hi: i64,
}

impl FixedCache {
    const NONE: Self = Self {
        lo: 0,
        hi: i64::MIN,
    };

    #[inline(always)]
    fn new(f: Option<i128>) -> Self {
        match f {
            Some(f) => Self {
                lo: f as u64,
                hi: (f >> 64) as i64,
            },
            None => Self::NONE,
        }
    }

    #[inline(always)]
    fn get(self) -> Option<i128> {
        (self.hi != i64::MIN).then_some((i128::from(self.hi) << 64) | i128::from(self.lo))
    }
}

impl Default for FixedCache {
    fn default() -> Self {
        Self::NONE
    }
}

/// The window state of one client.
///
/// `buf` holds retained readings sorted by `(t, arrival)`; `buf[start..]` is the live region
/// `t > max_t − size` over which the exact sums `sum_v` (Σ v) and `area` (Σ (v + v')·Δt_ms)
/// are maintained. While the live region is not empty, `newest_fixed` is `to_fixed` of the
/// newest reading's value and `oldest_fixed` that of `buf[start]`.
#[derive(Debug, Clone, Default)]
pub struct ClientWindow {
    buf: VecDeque<Slot>,
    base: i64,
    start: usize,
    sum_v: HybridSum,
    area: HybridSum,
    newest_fixed: FixedCache,
    oldest_fixed: FixedCache,
}

impl ClientWindow {
    #[inline]
    fn at(&self, i: usize) -> Reading {
        let s = self.buf[i];
        Reading {
            t: self.base + i64::from(s.dt),
            v: s.v,
        }
    }

    #[inline]
    fn first(&self) -> Option<Reading> {
        (!self.buf.is_empty()).then(|| self.at(0))
    }

    /// Re-anchors the time base so `t` fits (O(n); only when `t` is outside the 49.7-day range
    /// around the current base).
    #[inline]
    fn fit(&mut self, t: i64) -> u32 {
        if let Some(dt) = t.checked_sub(self.base).and_then(|d| u32::try_from(d).ok()) {
            return dt;
        }
        self.rebase(t)
    }

    #[cold]
    fn rebase(&mut self, t: i64) -> u32 {
        let readings: Vec<Reading> = (0..self.buf.len()).map(|i| self.at(i)).collect();
        let lo = readings.first().map_or(t, |r| r.t.min(t));
        self.base = lo;
        for (slot, r) in self.buf.iter_mut().zip(readings) {
            // Retained readings span window + grace, far below u32::MAX ms.
            slot.dt = u32::try_from(r.t.saturating_sub(lo)).unwrap_or(u32::MAX);
        }
        u32::try_from(t.saturating_sub(lo)).unwrap_or(u32::MAX)
    }

    #[inline]
    fn reserve_one(&mut self) {
        let len = self.buf.len();
        if len == self.buf.capacity() {
            // Grow by 25% (not 2×): amortised O(1), at most 25% slack.
            self.buf.reserve_exact((len / 4).max(4));
        }
    }

    /// Newest event time held, if any.
    pub fn max_t(&self) -> Option<i64> {
        (!self.buf.is_empty())
            .then(|| self.at(self.buf.len() - 1))
            .map(|r| r.t)
    }

    /// Reads the newest and the oldest live reading (cache warm-up for `process_batch`).
    #[inline]
    fn touch(&self) -> u64 {
        let newest = self.buf.back().map_or(0, |s| s.dt);
        let oldest = self.buf.get(self.start).map_or(0, |s| s.dt);
        u64::from(newest) ^ u64::from(oldest)
    }

    /// Reads both exact sums (cache warm-up for `process_batch`).
    #[inline]
    fn touch_sums(&self) -> u64 {
        u64::from(self.sum_v.is_fixed_only()) ^ u64::from(self.area.is_fixed_only())
    }

    /// Readings retained (live region plus the grace margin).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Heap bytes held by the reading buffer (capacity × 12).
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<Slot>()
    }

    /// Heap bytes of the exact sums.
    pub fn sums_heap_bytes(&self) -> usize {
        self.sum_v.heap_bytes() + self.area.heap_bytes()
    }

    /// Adds an accepted reading (the caller checked it is not late) and returns its window's
    /// aggregates, with min and max when `extremes` (an O(n) scan of the window; 0 otherwise).
    /// `size_ms > 0`, `grace_ms ≥ 0`.
    #[inline]
    pub fn push(&mut self, r: Reading, size_ms: i64, grace_ms: i64, extremes: bool) -> Aggregates {
        let last = self.buf.back().map(|s| Reading {
            t: self.base + i64::from(s.dt),
            v: s.v,
        });
        match last {
            Some(last) if r.t < last.t => {
                let mut a = self.push_out_of_order(r, last.t, size_ms);
                if !extremes {
                    (a.min, a.max) = (0.0, 0.0);
                }
                a
            }
            last => self.push_in_order(r, last, size_ms, grace_ms, extremes),
        }
    }

    /// Appends `r`, which is at or after `last` (the newest reading held, if any).
    #[inline]
    fn push_in_order(
        &mut self,
        r: Reading,
        mut last: Option<Reading>,
        size_ms: i64,
        grace_ms: i64,
        extremes: bool,
    ) -> Aggregates {
        if last.is_some_and(|l| r.t.saturating_sub(l.t) >= size_ms.saturating_add(grace_ms)) {
            // Everything held is outside this reading's window and below the retention
            // horizon: starting afresh is exactly equivalent (and keeps time offsets small).
            self.buf.clear();
            self.start = 0;
            self.sum_v.clear();
            self.area.clear();
            last = None;
        }
        if self.buf.is_empty() {
            self.base = r.t;
        }
        let fr = to_fixed(r.v);
        let live_empty = self.buf.len() == self.start;
        if !live_empty && let Some(prev) = last {
            let fprev = self.newest_fixed.get();
            trapezoid_fixed(&mut self.area, prev, fprev, r, fr, false);
        }
        let dt = self.fit(r.t);
        self.reserve_one();
        self.buf.push_back(Slot { dt, v: r.v });
        self.sum_v.add_known(r.v, fr);
        self.newest_fixed = FixedCache::new(fr);
        if live_empty {
            self.oldest_fixed = self.newest_fixed;
        }
        // Evict from the live region everything at or before t − size (nothing when that
        // bound is below i64::MIN). `r` itself stays (size > 0), so `start + 1` exists.
        // The oldest live reading afterwards, when the eviction has read it.
        let mut oldest = None;
        if let Some(bound) = r.t.checked_sub(size_ms) {
            let mut gone = self.at(self.start);
            if gone.t <= bound {
                let mut fg = self.oldest_fixed.get();
                loop {
                    let next = self.at(self.start + 1);
                    let fnext = to_fixed(next.v);
                    trapezoid_fixed(&mut self.area, gone, fg, next, fnext, true);
                    // to_fixed(−v) = −to_fixed(v).
                    self.sum_v.add_known(-gone.v, fg.map(i128::wrapping_neg));
                    self.start += 1;
                    gone = next;
                    fg = fnext;
                    if next.t > bound {
                        break;
                    }
                }
                self.oldest_fixed = FixedCache::new(fg);
            }
            oldest = Some(gone);
        }
        debug_assert_eq!(self.oldest_fixed.get(), to_fixed(self.at(self.start).v));
        // Drop what no accepted reading can need any more: t ≤ max − grace − size.
        let horizon = i64::try_from(i128::from(size_ms) + i128::from(grace_ms)).unwrap_or(i64::MAX);
        if self.start > 0
            && let Some(bound) = r.t.checked_sub(horizon)
        {
            while self.start > 0 && self.first().is_some_and(|f| f.t <= bound) {
                self.buf.pop_front();
                self.start -= 1;
            }
        }
        if self.buf.capacity() > 2 * self.buf.len() + 64 {
            self.buf.shrink_to(self.buf.len() + self.buf.len() / 4 + 4);
        }
        // The live region is `buf[start..]`, and `r` is its newest reading (dropping readings
        // before `start` does not change which reading is at `start`).
        let n = u32::try_from(self.buf.len() - self.start).unwrap_or(u32::MAX);
        let first = oldest.unwrap_or_else(|| self.at(self.start));
        debug_assert_eq!(first.t, self.at(self.start).t);
        let (sum, mean, integral) = sum_mean_integral(&self.sum_v, &self.area, n, r.v);
        let (min, max) = if extremes {
            (self.start..self.buf.len()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), i| {
                let v = self.buf[i].v;
                (lo.min(v), hi.max(v))
            })
        } else {
            (0.0, 0.0)
        };
        Aggregates {
            mean,
            integral,
            derivative: derivative(first, r),
            count: n,
            sum,
            min,
            max,
        }
    }

    /// First index whose event time is > `t` (readings are sorted by time).
    fn upper_bound(&self, t: i64) -> usize {
        let Some(dt) = t.checked_sub(self.base).and_then(|d| u32::try_from(d).ok()) else {
            return if t < self.base { 0 } else { self.buf.len() };
        };
        self.buf.partition_point(|x| x.dt <= dt)
    }

    #[inline(never)]
    fn push_out_of_order(&mut self, r: Reading, max_t: i64, size_ms: i64) -> Aggregates {
        let dt = self.fit(r.t);
        // After every reading with t ≤ r.t: ties keep arrival order.
        let pos = self.upper_bound(r.t);
        self.reserve_one();
        self.buf.insert(pos, Slot { dt, v: r.v });
        if !at_or_before(r.t, max_t, size_ms) {
            // Inside the live region (pos ≥ start because older readings are ≤ max − size).
            let next = self.at(pos + 1);
            if pos > self.start {
                let prev = self.at(pos - 1);
                trapezoid(&mut self.area, prev, next, true);
                trapezoid(&mut self.area, prev, r, false);
            }
            trapezoid(&mut self.area, r, next, false);
            self.sum_v.add(r.v);
        } else {
            // Before the live region: shift its start.
            self.start += 1;
        }
        // Its own window: (r.t − size, r.t], over readings up to and including `pos`.
        let base = self.base;
        let lo = self
            .buf
            .partition_point(|x| at_or_before(base + i64::from(x.dt), r.t, size_ms));
        // The newest reading is unchanged (r is older); the oldest live one may be `r`.
        self.oldest_fixed = FixedCache::new(to_fixed(self.at(self.start).v));
        aggregates_of((lo..=pos).map(|i| self.at(i)))
    }
}

/// Aggregates (with min and max) over readings already sorted by `(t, arrival)` (count 0 when
/// empty), computed from scratch with fresh exact sums.
pub(crate) fn aggregates_of(readings: impl Iterator<Item = Reading>) -> Aggregates {
    let mut n = 0u32;
    let mut sum = HybridSum::new();
    let mut area = HybridSum::new();
    let mut first: Option<Reading> = None;
    let mut prev: Option<Reading> = None;
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for r in readings {
        n = n.saturating_add(1);
        sum.add(r.v);
        min = min.min(r.v);
        max = max.max(r.v);
        if let Some(p) = prev {
            trapezoid(&mut area, p, r, false);
        }
        first.get_or_insert(r);
        prev = Some(r);
    }
    match (first, prev) {
        (Some(f), Some(l)) => {
            let (sum, mean, integral) = sum_mean_integral(&sum, &area, n, l.v);
            Aggregates {
                mean,
                integral,
                derivative: derivative(f, l),
                count: n,
                sum,
                min,
                max,
            }
        }
        _ => Aggregates {
            mean: 0.0,
            integral: 0.0,
            derivative: 0.0,
            count: 0,
            sum: 0.0,
            min: 0.0,
            max: 0.0,
        },
    }
}

/// A client key of up to [`PACKED_KEY`] bytes as four words: its length and its bytes
/// (little-endian; keys of 8 to 24 bytes as overlapping 8-byte loads from both ends, which
/// given the length determine every byte). Compared and hashed in a few word operations, with
/// no byte loop and no `memcmp` call; held inline in the map's bucket, so finding a client
/// reads no other cache line.
#[derive(Debug, Clone, Copy)]
struct PackedKey {
    len: u64,
    w: [u64; 3],
}

/// Longest key that [`PackedKey`] holds (longer keys are held on the heap).
const PACKED_KEY: usize = 24;

impl PackedKey {
    /// `None` when `b` is longer than [`PACKED_KEY`].
    #[inline]
    fn new(b: &[u8]) -> Option<Self> {
        let n = b.len();
        let w = match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
            (Some(head), Some(tail)) => {
                let (head, tail) = (u64::from_le_bytes(*head), u64::from_le_bytes(*tail));
                if n <= 16 {
                    [head, tail, 0]
                } else if n <= PACKED_KEY {
                    let mid: [u8; 8] = b[8..16].try_into().unwrap_or_default();
                    [head, u64::from_le_bytes(mid), tail]
                } else {
                    return None;
                }
            }
            _ => {
                // Shorter than 8 bytes.
                let mut x = 0u64;
                for (k, &c) in b.iter().enumerate() {
                    x |= u64::from(c) << (8 * k);
                }
                [x, 0, 0]
            }
        };
        Some(Self { len: n as u64, w })
    }
}

impl PartialEq for PackedKey {
    #[inline]
    fn eq(&self, o: &Self) -> bool {
        ((self.len ^ o.len) | (self.w[0] ^ o.w[0]) | (self.w[1] ^ o.w[1]) | (self.w[2] ^ o.w[2]))
            == 0
    }
}

impl Eq for PackedKey {}

/// `a · b` folded to 64 bits (high half xor low half): a fast mixing step.
#[inline(always)]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl std::hash::Hash for PackedKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Keys such as `client-000123` differ only in their last bytes, i.e. in the high bits
        // of one word; FxHasher alone moves bits upwards only, so mix all words first.
        state.write_u64(
            folded_multiply(
                self.w[0] ^ 0x243f_6a88_85a3_08d3,
                self.w[1] ^ 0x1319_8a2e_0370_7344,
            ) ^ folded_multiply(
                self.w[2] ^ 0xa409_3822_299f_31d0,
                self.len ^ 0x082e_fa98_ec4e_6c89,
            ),
        );
    }
}

/// Client key → index in the partition's slab: keys of up to [`PACKED_KEY`] bytes (typical
/// keys such as `client-000123`) packed, longer ones on the heap. Looked up by the key's
/// bytes (no UTF-8 check).
#[derive(Debug, Default)]
struct ClientIndex {
    short: FxHashMap<PackedKey, usize>,
    long: FxHashMap<Box<[u8]>, usize>,
}

impl ClientIndex {
    #[inline(always)]
    fn get(&self, key: &[u8]) -> Option<usize> {
        match PackedKey::new(key) {
            Some(k) => self.short.get(&k).copied(),
            None => self.long.get(key).copied(),
        }
    }

    fn insert(&mut self, key: &[u8], i: usize) {
        match PackedKey::new(key) {
            Some(k) => self.short.insert(k, i),
            None => self.long.insert(key.into(), i),
        };
    }

    fn remove(&mut self, key: &[u8]) -> Option<usize> {
        match PackedKey::new(key) {
            Some(k) => self.short.remove(&k),
            None => self.long.remove(key),
        }
    }

    fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    /// Keeps the clients whose index `keep` accepts.
    fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        self.short.retain(|_, &mut i| keep(i));
        self.long.retain(|_, &mut i| keep(i));
    }

    /// Every client's slab index with the bytes its entry takes (bucket and heap).
    fn entries(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let short = std::mem::size_of::<(PackedKey, usize)>();
        let long = std::mem::size_of::<(Box<[u8]>, usize)>();
        self.short
            .values()
            .map(move |&i| (i, short))
            .chain(self.long.iter().map(move |(k, &i)| (i, long + k.len())))
    }
}

/// The windows of one partition: a dense slab of client states, found through a map from the
/// client key to the state's index. The index of a client never changes while it is held, so
/// [`WindowEngine::process_batch`] can look a chunk's clients up once, ahead of processing.
#[derive(Debug, Default)]
struct PartitionWindows {
    max_t: Option<i64>,
    /// Client key → index in `windows`.
    index: ClientIndex,
    /// Client states; the entries listed in `free` belong to no client (and are empty).
    windows: Vec<ClientWindow>,
    /// `newest[i]`: the newest event time held by `windows[i]` (its `max_t`), kept beside the
    /// slab so a sweep reads this array instead of every client's reading buffer.
    newest: Vec<i64>,
    free: Vec<usize>,
    since_sweep: usize,
}

impl PartitionWindows {
    /// Index of `client`'s state, created empty when it has none.
    #[inline]
    fn slot(&mut self, client: &str) -> usize {
        match self.index.get(client.as_bytes()) {
            Some(i) => i,
            None => self.insert(client),
        }
    }

    #[cold]
    #[inline(never)]
    fn insert(&mut self, client: &str) -> usize {
        let i = self.free.pop().unwrap_or_else(|| {
            self.windows.push(ClientWindow::default());
            self.newest.push(i64::MIN);
            self.windows.len() - 1
        });
        self.index.insert(client.as_bytes(), i);
        i
    }

    /// Processes `r` for the client whose state is `windows[i]` (`client` is its key).
    /// `removals` counts client states dropped (see [`WindowEngine::process_batch`]).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn process_at(
        &mut self,
        cfg: WindowConfig,
        extremes: bool,
        i: usize,
        client: &str,
        r: Reading,
        removals: &mut u64,
    ) -> Outcome {
        let cw = &mut self.windows[i];
        let max_seen = match cfg.scope {
            WatermarkScope::Partition => self.max_t,
            WatermarkScope::Client => cw.max_t(),
        };
        if let Some(max_t) = max_seen {
            let watermark = max_t.saturating_sub(cfg.grace_ms);
            if r.t < watermark {
                if cw.is_empty() && self.index.remove(client.as_bytes()).is_some() {
                    self.free.push(i);
                    *removals += 1;
                }
                return Outcome::Late { watermark };
            }
        }
        let agg = cw.push(r, cfg.size_ms, cfg.grace_ms, extremes);
        // The newest reading held is the newest accepted (eviction never drops it).
        self.newest[i] = self.newest[i].max(r.t);
        debug_assert_eq!(Some(self.newest[i]), self.windows[i].max_t());
        self.max_t = Some(self.max_t.map_or(r.t, |m| m.max(r.t)));
        self.since_sweep += 1;
        if cfg.scope == WatermarkScope::Partition
            && self.since_sweep >= SWEEP_EVERY.max(4 * self.index.len())
        {
            self.since_sweep = 0;
            if self.sweep(cfg) {
                *removals += 1;
            }
        }
        Outcome::Emit(agg)
    }

    /// Drops the clients that can no longer be in a window; true when any was dropped.
    #[cold]
    #[inline(never)]
    fn sweep(&mut self, cfg: WindowConfig) -> bool {
        let Some(max_t) = self.max_t else {
            return false;
        };
        // A client whose newest reading is ≤ watermark − size can never be in a window of an
        // accepted reading again (those have t ≥ watermark): dropping it is exact.
        let span = cfg.grace_ms.saturating_add(cfg.size_ms);
        let before = self.index.len();
        let Self {
            index,
            windows,
            newest,
            free,
            ..
        } = self;
        index.retain(|i| {
            // Every client in the index holds a reading: newest[i] is its max_t.
            debug_assert_eq!(Some(newest[i]), windows[i].max_t());
            let keep = !at_or_before(newest[i], max_t, span);
            if !keep {
                windows[i] = ClientWindow::default();
                newest[i] = i64::MIN;
                free.push(i);
            }
            keep
        });
        self.index.len() != before
    }
}

/// Per-partition, per-client window state for one window-processor instance.
///
/// Not thread-safe by design: one engine per consumer loop.
#[derive(Debug)]
pub struct WindowEngine {
    cfg: WindowConfig,
    /// Whether [`Aggregates::min`] and [`Aggregates::max`] are computed.
    extremes: bool,
    partitions: FxHashMap<i32, PartitionWindows>,
    /// Client states dropped so far (late first readings, sweeps, revocations): while it does
    /// not change, an index looked up earlier still belongs to the same client.
    removals: u64,
}

/// Readings per chunk of [`WindowEngine::process_batch`]: enough independent cache misses to
/// keep the memory system busy, few enough that the touched lines stay in L1.
pub const BATCH_CHUNK: usize = 32;

/// Clients held above which [`WindowEngine::process_batch`]'s look-ahead also touches each
/// chunk's state (below it, a client's state is a few hundred bytes × clients: it stays in
/// L2, and the run is bound by instructions, not by cache misses).
const WARM_CLIENTS: usize = 4_096;

/// No client state (in the look-ahead of [`WindowEngine::process_batch`]).
const NO_SLOT: usize = usize::MAX;

/// How many readings a partition takes at least between sweeps for idle clients; at least 4
/// per client held, too, so a sweep (which visits every client, a cache miss each when the
/// state is large) costs at most ¼ visit per reading. Sweeping is exact whenever it runs.
const SWEEP_EVERY: usize = 16_384;

impl WindowEngine {
    /// An empty engine.
    ///
    /// Callers validate the configuration first ([`WindowConfig::validate`]).
    pub fn new(cfg: WindowConfig) -> Self {
        Self {
            cfg,
            extremes: false,
            partitions: FxHashMap::default(),
            removals: 0,
        }
    }

    /// The same engine computing [`Aggregates::min`] and [`Aggregates::max`] too (when a
    /// feature asks for them): an O(n) scan of each in-order reading's window (n = readings in
    /// it), where the other aggregates cost O(1) amortised.
    pub fn with_extremes(mut self, extremes: bool) -> Self {
        self.extremes = extremes;
        self
    }

    /// The configuration.
    pub fn config(&self) -> WindowConfig {
        self.cfg
    }

    /// Processes one SZ reading of `client` from `partition`.
    pub fn process(&mut self, partition: i32, client: &str, r: Reading) -> Outcome {
        let cfg = self.cfg;
        let p = self.partitions.entry(partition).or_default();
        let i = p.slot(client);
        p.process_at(cfg, self.extremes, i, client, r, &mut self.removals)
    }

    /// Processes readings in order, exactly as [`WindowEngine::process`] on each in turn
    /// would, appending one [`Outcome`] per reading to `out`.
    ///
    /// The batch is taken in chunks of [`BATCH_CHUNK`]. Before a chunk is processed, its
    /// clients are looked up in one pass of independent loads that, when the state outgrows
    /// the caches (more than 4 096 clients), also touch the state each will use (its newest
    /// and its oldest live reading), so the cache misses of a whole chunk
    /// overlap instead of being paid one after another, and the processing pass reuses the
    /// indices found (unless a client state was dropped in between: then it looks up again).
    /// That pass only reads: the results do not depend on it.
    pub fn process_batch<K: AsRef<str>>(
        &mut self,
        batch: &[(i32, K, Reading)],
        out: &mut Vec<Outcome>,
    ) {
        out.reserve(batch.len());
        let cfg = self.cfg;
        let mut slots = [NO_SLOT; BATCH_CHUNK];
        // Cache-resident state gains nothing from touching it ahead (that only adds
        // instructions): the touches run when the clients held exceed `WARM_CLIENTS`.
        let warm = self
            .partitions
            .values()
            .map(|p| p.index.len())
            .sum::<usize>()
            > WARM_CLIENTS;
        for chunk in batch.chunks(BATCH_CHUNK) {
            let removals = self.removals;
            self.look_ahead(chunk, &mut slots, warm);
            // The partition of the previous reading (batches are mostly one partition's).
            let mut cur: Option<(i32, &mut PartitionWindows)> = None;
            for ((partition, client, r), &slot) in chunk.iter().zip(&slots) {
                let client = client.as_ref();
                if cur.as_ref().is_none_or(|(id, _)| id != partition) {
                    cur = Some((*partition, self.partitions.entry(*partition).or_default()));
                }
                let Some((_, p)) = cur.as_mut() else {
                    unreachable!("set just above")
                };
                let i = if slot != NO_SLOT && self.removals == removals {
                    slot
                } else {
                    p.slot(client)
                };
                out.push(p.process_at(cfg, self.extremes, i, client, *r, &mut self.removals));
            }
        }
    }

    /// Finds the state index of each reading of `chunk` (or [`NO_SLOT`]) and touches that
    /// state (see [`WindowEngine::process_batch`]). Two passes, so each load depends on few
    /// others and many are in flight at once: the map lookups (with the client's state
    /// struct), then the readings each state will use.
    #[inline(never)]
    fn look_ahead<K: AsRef<str>>(
        &self,
        chunk: &[(i32, K, Reading)],
        slots: &mut [usize; BATCH_CHUNK],
        warm: bool,
    ) {
        let mut acc = 0u64;
        let mut parts: [Option<&PartitionWindows>; BATCH_CHUNK] = [None; BATCH_CHUNK];
        let mut last: Option<(i32, &PartitionWindows)> = None;
        for (((partition, client, _), slot), part) in
            chunk.iter().zip(slots.iter_mut()).zip(parts.iter_mut())
        {
            *slot = NO_SLOT;
            let p = match last {
                Some((id, p)) if id == *partition => p,
                _ => match self.partitions.get(partition) {
                    Some(p) => {
                        last = Some((*partition, p));
                        p
                    }
                    None => continue,
                },
            };
            if let Some(i) = p.index.get(client.as_ref().as_bytes())
                && let Some(cw) = p.windows.get(i)
            {
                *slot = i;
                *part = Some(p);
                if warm {
                    // The struct spans two cache lines: read from both ends.
                    acc = acc.wrapping_add(cw.start as u64 ^ cw.base as u64 ^ cw.touch_sums());
                }
            }
        }
        if !warm {
            return;
        }
        for (&slot, part) in slots.iter().zip(&parts) {
            if let Some(cw) = part.and_then(|p| p.windows.get(slot)) {
                acc = acc.wrapping_add(cw.touch());
            }
        }
        std::hint::black_box(acc);
    }

    /// The watermark of `partition` (partition scope) or `None` before its first reading.
    pub fn partition_watermark(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .and_then(|p| p.max_t)
            .map(|m| m.saturating_sub(self.cfg.grace_ms))
    }

    /// Drops the state of a revoked partition.
    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        self.removals += 1;
    }

    /// Drops all state (e.g. before a full rebuild).
    pub fn clear(&mut self) {
        self.partitions.clear();
        self.removals += 1;
    }

    /// Current state size.
    pub fn stats(&self) -> StateStats {
        // A client's state and its newest time.
        const SLAB_ENTRY: usize = std::mem::size_of::<ClientWindow>() + std::mem::size_of::<i64>();
        let mut s = StateStats::default();
        for p in self.partitions.values() {
            s.partitions += 1;
            for (i, key_bytes) in p.index.entries() {
                let cw = &p.windows[i];
                s.clients += 1;
                s.readings += cw.len();
                s.reading_heap_bytes += cw.heap_bytes();
                s.overhead_bytes += SLAB_ENTRY + key_bytes + cw.sums_heap_bytes();
            }
            // Free entries of the slab (and the free list) hold no readings.
            s.overhead_bytes += p.free.len() * (SLAB_ENTRY + std::mem::size_of::<usize>());
        }
        s
    }
}

/// Size of the window state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Partitions with state.
    pub partitions: usize,
    /// Clients with state.
    pub clients: usize,
    /// Readings buffered across clients.
    pub readings: usize,
    /// Heap bytes of the reading buffers (capacity × 16 bytes).
    pub reading_heap_bytes: usize,
    /// Per-client bookkeeping bytes (struct, key and index entry, free slab entries),
    /// excluding hash-table and slab slack.
    pub overhead_bytes: usize,
}

/// Naive reference: recomputes every window from scratch, O(n²). Input is one partition's
/// arrival sequence of `(client, reading)`; output is, per input, `Some(aggregates)` or `None`
/// for a late reading. Follows the module-level definition literally.
pub fn reference_features(
    cfg: WindowConfig,
    arrivals: &[(&str, Reading)],
) -> Vec<Option<Aggregates>> {
    reference_windows(cfg, arrivals)
        .into_iter()
        .map(|w| w.map(|w| aggregates_of(w.into_iter())))
        .collect()
}

/// The members of every reading's window, sorted by `(t, arrival)`, or `None` when late.
pub fn reference_windows(
    cfg: WindowConfig,
    arrivals: &[(&str, Reading)],
) -> Vec<Option<Vec<Reading>>> {
    let mut accepted: Vec<(&str, Reading)> = Vec::new();
    let mut out = Vec::with_capacity(arrivals.len());
    for &(client, r) in arrivals {
        let max_seen = accepted
            .iter()
            .filter(|(c, _)| cfg.scope == WatermarkScope::Partition || *c == client)
            .map(|(_, x)| x.t)
            .max();
        if let Some(m) = max_seen
            && r.t < m.saturating_sub(cfg.grace_ms)
        {
            out.push(None);
            continue;
        }
        accepted.push((client, r));
        // Window members in arrival order, then a stable sort by t keeps ties in arrival order.
        let mut w: Vec<Reading> = accepted
            .iter()
            .filter(|(c, x)| *c == client && !at_or_before(x.t, r.t, cfg.size_ms) && x.t <= r.t)
            .map(|(_, x)| *x)
            .collect();
        // Readings with t == r.t that arrived after r are not in `accepted` yet; all with
        // equal t arrived before r, so r must be the last of its tie group.
        w.sort_by_key(|x| x.t);
        out.push(Some(w));
    }
    out
}

#[cfg(test)]
mod tests;
