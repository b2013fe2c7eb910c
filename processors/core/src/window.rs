//! Sliding event-time windows over SZ readings, per client, with amortised O(1) work per reading.
//!
//! ## Definition
//! For each accepted SZ reading `r_k = (t_k, v_k)` of a client, the window is
//! `W_k = { r_j : t_k − size < t_j ≤ t_k }`, taken over the client's accepted readings that
//! arrived up to and including `r_k` (ties in `t` are ordered by arrival). Over `W_k`, sorted by
//! `(t, arrival)`:
//! - **FA** (mean): `Σ v / |W_k|`, in value units;
//! - **FI** (integral, AUC): the trapezoidal rule across consecutive readings,
//!   `Σ (v_i + v_{i+1}) / 2 · (t_{i+1} − t_i) / 1000`, in value·seconds (0 for one reading);
//! - **FD** (derivative): `(v_last − v_first) / ((t_last − t_first) / 1000)`, in value per second
//!   (0 when all readings share one timestamp).
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
//! In-order readings (the common case) cost O(1) amortised: running sums of `v` and of the
//! trapezoids are updated on append and eviction. An out-of-order reading costs O(log n) to find
//! its place plus O(n) to insert and compute its own window (n = readings retained by the client).
//! To bound floating-point drift of the running sums, they are recomputed exactly once as many
//! evictions as the window holds have happened (still O(1) amortised).
//!
//! ## Memory
//! A client retains readings with `t > max − grace − size`, 12 bytes each: the value (`f64`)
//! and the event time as a `u32` millisecond offset from a per-client base (rebased in O(n)
//! when a reading falls outside the 49.7-day range; the retained span is window + grace, so
//! that happens about never). Buffers grow by 25% rather than doubling, so slack stays small.
//! Under partition scope, a client whose newest reading is older than
//! `watermark − size` can no longer influence any window and its state is dropped.
//!
//! [`reference_features`] is the naive O(n²) implementation of the same definition, used by
//! the property tests and by the integration tests as an independent reference.

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

impl std::str::FromStr for WatermarkScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "partition" => Ok(Self::Partition),
            "client" => Ok(Self::Client),
            other => Err(format!(
                "watermark scope must be `partition` or `client`, got {other:?}"
            )),
        }
    }
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

#[inline]
fn trapezoid(a: Reading, b: Reading) -> f64 {
    (a.v + b.v) * 0.5 * ((b.t - a.t) as f64 * 0.001)
}

#[inline]
fn derivative(first: Reading, last: Reading) -> f64 {
    let dt = last.t - first.t;
    if dt == 0 {
        0.0
    } else {
        (last.v - first.v) / (dt as f64 * 0.001)
    }
}

/// A buffered reading: 12 bytes (`packed(4)` keeps the `f64` at 4-byte alignment; fields are
/// only ever read by value).
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Slot {
    dt: u32,
    v: f64,
}

/// The window state of one client.
///
/// `buf` holds retained readings sorted by `(t, arrival)`; `buf[start..]` is the live region
/// `t > max_t − size` over which `sum_v` and `integral` are maintained.
#[derive(Debug, Clone, Default)]
pub struct ClientWindow {
    buf: VecDeque<Slot>,
    base: i64,
    start: usize,
    sum_v: f64,
    integral: f64,
    evictions_since_exact: usize,
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
    fn fit(&mut self, t: i64) -> u32 {
        if let Ok(dt) = u32::try_from(t - self.base) {
            return dt;
        }
        let readings: Vec<Reading> = (0..self.buf.len()).map(|i| self.at(i)).collect();
        let lo = readings.first().map_or(t, |r| r.t.min(t));
        self.base = lo;
        for (slot, r) in self.buf.iter_mut().zip(readings) {
            // Retained readings span window + grace, far below u32::MAX ms.
            slot.dt = u32::try_from(r.t - lo).unwrap_or(u32::MAX);
        }
        u32::try_from(t - lo).unwrap_or(u32::MAX)
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

    fn region_aggregates(&self) -> Aggregates {
        let n = self.buf.len() - self.start;
        debug_assert!(n > 0);
        let first = self.at(self.start);
        let last = self.at(self.buf.len() - 1);
        Aggregates {
            mean: self.sum_v / n as f64,
            integral: self.integral,
            derivative: derivative(first, last),
            count: n as u32,
        }
    }

    fn recompute_exact(&mut self) {
        self.sum_v = 0.0;
        self.integral = 0.0;
        let mut prev: Option<Reading> = None;
        for i in self.start..self.buf.len() {
            let r = self.at(i);
            self.sum_v += r.v;
            if let Some(p) = prev {
                self.integral += trapezoid(p, r);
            }
            prev = Some(r);
        }
        self.evictions_since_exact = 0;
    }

    /// Adds an accepted reading (the caller checked it is not late) and returns its window's
    /// aggregates. `size_ms > 0`, `grace_ms ≥ 0`.
    pub fn push(&mut self, r: Reading, size_ms: i64, grace_ms: i64) -> Aggregates {
        match self.max_t() {
            Some(max_t) if r.t < max_t => self.push_out_of_order(r, max_t, size_ms),
            max_t => self.push_in_order(r, max_t, size_ms, grace_ms),
        }
    }

    fn push_in_order(
        &mut self,
        r: Reading,
        max_t: Option<i64>,
        size_ms: i64,
        grace_ms: i64,
    ) -> Aggregates {
        if max_t.is_some_and(|m| r.t - m >= size_ms + grace_ms) {
            // Everything held is outside this reading's window and below the retention
            // horizon: starting afresh is exactly equivalent (and keeps time offsets small).
            self.buf.clear();
            self.start = 0;
            self.sum_v = 0.0;
            self.integral = 0.0;
            self.evictions_since_exact = 0;
        }
        if self.buf.is_empty() {
            self.base = r.t;
        }
        if self.buf.len() > self.start {
            let prev = self.at(self.buf.len() - 1);
            self.integral += trapezoid(prev, r);
        }
        let dt = self.fit(r.t);
        self.reserve_one();
        self.buf.push_back(Slot { dt, v: r.v });
        self.sum_v += r.v;
        // Evict from the live region everything at or before t − size.
        let cutoff = r.t - size_ms;
        let mut gone = self.at(self.start);
        while gone.t <= cutoff {
            let next = self.at(self.start + 1);
            self.integral -= trapezoid(gone, next);
            self.sum_v -= gone.v;
            self.start += 1;
            self.evictions_since_exact += 1;
            gone = next;
        }
        // Drop what no accepted reading can need any more: t ≤ max − grace − size.
        let keep_after = cutoff - grace_ms;
        while self.start > 0 && self.first().is_some_and(|f| f.t <= keep_after) {
            self.buf.pop_front();
            self.start -= 1;
        }
        let live = self.buf.len() - self.start;
        // Exact recomputation bounds floating-point drift; every 8 windows of evictions keeps
        // it O(1) amortised at ~1/8 of a reading's work.
        if self.evictions_since_exact > 8 * live + 1024 {
            self.recompute_exact();
        }
        if self.buf.capacity() > 2 * self.buf.len() + 64 {
            self.buf.shrink_to(self.buf.len() + self.buf.len() / 4 + 4);
        }
        self.region_aggregates()
    }

    /// First index whose event time is > `t` (readings are sorted by time).
    fn upper_bound(&self, t: i64) -> usize {
        let Ok(dt) = u32::try_from(t - self.base) else {
            return if t < self.base { 0 } else { self.buf.len() };
        };
        self.buf.partition_point(|x| x.dt <= dt)
    }

    fn push_out_of_order(&mut self, r: Reading, max_t: i64, size_ms: i64) -> Aggregates {
        let dt = self.fit(r.t);
        // After every reading with t ≤ r.t: ties keep arrival order.
        let pos = self.upper_bound(r.t);
        self.reserve_one();
        self.buf.insert(pos, Slot { dt, v: r.v });
        if r.t > max_t - size_ms {
            // Inside the live region (pos ≥ start because older readings are ≤ max − size).
            let next = self.at(pos + 1);
            if pos > self.start {
                let prev = self.at(pos - 1);
                self.integral += trapezoid(prev, r) - trapezoid(prev, next);
            }
            self.integral += trapezoid(r, next);
            self.sum_v += r.v;
        } else {
            // Before the live region: shift its start.
            self.start += 1;
        }
        // Its own window: (r.t − size, r.t], over readings up to and including `pos`.
        let lo = self.upper_bound(r.t - size_ms);
        aggregates_of((lo..=pos).map(|i| self.at(i)))
    }
}

/// Aggregates over readings already sorted by `(t, arrival)`; `None` when empty.
fn aggregates_of(readings: impl Iterator<Item = Reading>) -> Aggregates {
    let mut n = 0u32;
    let mut sum = 0.0;
    let mut integral = 0.0;
    let mut first: Option<Reading> = None;
    let mut prev: Option<Reading> = None;
    for r in readings {
        n += 1;
        sum += r.v;
        if let Some(p) = prev {
            integral += trapezoid(p, r);
        }
        first.get_or_insert(r);
        prev = Some(r);
    }
    match (first, prev) {
        (Some(f), Some(l)) => Aggregates {
            mean: sum / f64::from(n),
            integral,
            derivative: derivative(f, l),
            count: n,
        },
        _ => Aggregates {
            mean: 0.0,
            integral: 0.0,
            derivative: 0.0,
            count: 0,
        },
    }
}

#[derive(Debug, Default)]
struct PartitionWindows {
    max_t: Option<i64>,
    clients: FxHashMap<Box<str>, ClientWindow>,
    since_sweep: usize,
}

/// Per-partition, per-client window state for one window-processor instance.
///
/// Not thread-safe by design: one engine per consumer loop.
#[derive(Debug)]
pub struct WindowEngine {
    cfg: WindowConfig,
    partitions: FxHashMap<i32, PartitionWindows>,
}

/// How many readings a partition takes between sweeps for idle clients.
const SWEEP_EVERY: usize = 16_384;

impl WindowEngine {
    /// An empty engine.
    ///
    /// Callers validate the configuration first ([`WindowConfig::validate`]).
    pub fn new(cfg: WindowConfig) -> Self {
        Self {
            cfg,
            partitions: FxHashMap::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> WindowConfig {
        self.cfg
    }

    /// Processes one SZ reading of `client` from `partition`.
    pub fn process(&mut self, partition: i32, client: &str, r: Reading) -> Outcome {
        let cfg = self.cfg;
        let p = self.partitions.entry(partition).or_default();
        let cw = match p.clients.get_mut(client) {
            Some(cw) => cw,
            None => p.clients.entry(client.into()).or_default(),
        };
        let max_seen = match cfg.scope {
            WatermarkScope::Partition => p.max_t,
            WatermarkScope::Client => cw.max_t(),
        };
        if let Some(max_t) = max_seen {
            let watermark = max_t.saturating_sub(cfg.grace_ms);
            if r.t < watermark {
                if cw.is_empty() {
                    p.clients.remove(client);
                }
                return Outcome::Late { watermark };
            }
        }
        let agg = cw.push(r, cfg.size_ms, cfg.grace_ms);
        p.max_t = Some(p.max_t.map_or(r.t, |m| m.max(r.t)));
        p.since_sweep += 1;
        if cfg.scope == WatermarkScope::Partition && p.since_sweep >= SWEEP_EVERY {
            p.since_sweep = 0;
            if let Some(max_t) = p.max_t {
                // A client whose newest reading is ≤ watermark − size can never be in a window
                // of an accepted reading again (those have t ≥ watermark): dropping it is exact.
                let horizon = max_t.saturating_sub(cfg.grace_ms + cfg.size_ms);
                p.clients
                    .retain(|_, cw| cw.max_t().is_some_and(|t| t > horizon));
            }
        }
        Outcome::Emit(agg)
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
    }

    /// Drops all state (e.g. before a full rebuild).
    pub fn clear(&mut self) {
        self.partitions.clear();
    }

    /// Current state size.
    pub fn stats(&self) -> StateStats {
        let mut s = StateStats::default();
        for p in self.partitions.values() {
            s.partitions += 1;
            for (k, cw) in &p.clients {
                s.clients += 1;
                s.readings += cw.len();
                s.reading_heap_bytes += cw.heap_bytes();
                s.overhead_bytes +=
                    std::mem::size_of::<ClientWindow>() + std::mem::size_of::<Box<str>>() + k.len();
            }
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
    /// Per-client bookkeeping bytes (struct, key), excluding hash-table slack.
    pub overhead_bytes: usize,
}

/// Naive reference: recomputes every window from scratch, O(n²). Input is one partition's
/// arrival sequence of `(client, reading)`; output is, per input, `Some(aggregates)` or `None`
/// for a late reading. Follows the module-level definition literally.
pub fn reference_features(
    cfg: WindowConfig,
    arrivals: &[(&str, Reading)],
) -> Vec<Option<Aggregates>> {
    let mut accepted: Vec<(&str, Reading)> = Vec::new();
    let mut out = Vec::with_capacity(arrivals.len());
    for &(client, r) in arrivals {
        let max_seen = accepted
            .iter()
            .filter(|(c, _)| cfg.scope == WatermarkScope::Partition || *c == client)
            .map(|(_, x)| x.t)
            .max();
        if let Some(m) = max_seen
            && r.t < m - cfg.grace_ms
        {
            out.push(None);
            continue;
        }
        accepted.push((client, r));
        // Window members in arrival order, then a stable sort by t keeps ties in arrival order.
        let mut w: Vec<Reading> = accepted
            .iter()
            .filter(|(c, x)| *c == client && x.t > r.t - cfg.size_ms && x.t <= r.t)
            .map(|(_, x)| *x)
            .collect();
        // Readings with t == r.t that arrived after r are not in `accepted` yet; all with
        // equal t arrived before r, so r must be the last of its tie group.
        w.sort_by_key(|x| x.t);
        out.push(Some(aggregates_of(w.into_iter())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(size: i64, grace: i64, scope: WatermarkScope) -> WindowConfig {
        WindowConfig {
            size_ms: size,
            grace_ms: grace,
            scope,
        }
    }

    fn emit(o: Outcome) -> Aggregates {
        match o {
            Outcome::Emit(a) => a,
            Outcome::Late { .. } => panic!("unexpected late"),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    fn assert_agg_eq(fast: &Aggregates, slow: &Aggregates) -> Result<(), TestCaseError> {
        prop_assert_eq!(fast.count, slow.count);
        prop_assert!(
            close(fast.mean, slow.mean),
            "mean {} vs {}",
            fast.mean,
            slow.mean
        );
        prop_assert!(
            close(fast.integral, slow.integral),
            "integral {} vs {}",
            fast.integral,
            slow.integral
        );
        prop_assert!(
            close(fast.derivative, slow.derivative),
            "derivative {} vs {}",
            fast.derivative,
            slow.derivative
        );
        Ok(())
    }

    #[test]
    fn single_reading() {
        let mut e = WindowEngine::new(WindowConfig::default());
        let a = emit(e.process(0, "c", Reading { t: 1_000, v: 2.5 }));
        assert_eq!(a.count, 1);
        assert_eq!(a.mean, 2.5);
        assert_eq!(a.integral, 0.0);
        assert_eq!(a.derivative, 0.0);
    }

    #[test]
    fn hand_computed_window() {
        let mut e = WindowEngine::new(WindowConfig::default());
        e.process(0, "c", Reading { t: 0, v: 1.0 });
        e.process(0, "c", Reading { t: 60_000, v: 3.0 });
        let a = emit(e.process(0, "c", Reading { t: 120_000, v: 2.0 }));
        assert_eq!(a.count, 3);
        assert_eq!(a.mean, 2.0);
        // (1+3)/2·60 + (3+2)/2·60 = 120 + 150
        assert_eq!(a.integral, 270.0);
        // (2 − 1) / 120 s
        assert!((a.derivative - 1.0 / 120.0).abs() < 1e-15);
    }

    #[test]
    fn eviction_at_exactly_the_window_size() {
        let mut e = WindowEngine::new(WindowConfig::default());
        e.process(0, "c", Reading { t: 0, v: 10.0 });
        let a = emit(e.process(0, "c", Reading { t: 600_000, v: 2.0 }));
        // t = 0 is not > 600 000 − 600 000: evicted.
        assert_eq!(a.count, 1);
        assert_eq!(a.mean, 2.0);
        let mut e = WindowEngine::new(WindowConfig::default());
        e.process(0, "c", Reading { t: 1, v: 10.0 });
        let a = emit(e.process(0, "c", Reading { t: 600_000, v: 2.0 }));
        assert_eq!(a.count, 2, "t = 1 > 0 stays in");
    }

    #[test]
    fn late_reading_is_reported_and_not_added() {
        let mut e = WindowEngine::new(cfg(600_000, 10_000, WatermarkScope::Partition));
        e.process(3, "a", Reading { t: 100_000, v: 1.0 });
        assert_eq!(
            e.process(3, "b", Reading { t: 89_999, v: 1.0 }),
            Outcome::Late { watermark: 90_000 }
        );
        // Exactly at the watermark is accepted.
        assert!(matches!(
            e.process(3, "b", Reading { t: 90_000, v: 1.0 }),
            Outcome::Emit(_)
        ));
        // Other partitions have their own watermark.
        assert!(matches!(
            e.process(4, "c", Reading { t: 0, v: 1.0 }),
            Outcome::Emit(_)
        ));
        assert_eq!(e.stats().clients, 3);
    }

    #[test]
    fn client_scope_watermarks_are_independent() {
        let mut e = WindowEngine::new(cfg(600_000, 0, WatermarkScope::Client));
        e.process(
            0,
            "new-day",
            Reading {
                t: 10_000_000,
                v: 1.0,
            },
        );
        assert!(matches!(
            e.process(0, "old-day", Reading { t: 5, v: 1.0 }),
            Outcome::Emit(_)
        ));
        assert!(matches!(
            e.process(0, "old-day", Reading { t: 4, v: 1.0 }),
            Outcome::Late { watermark: 5 }
        ));
    }

    #[test]
    fn idle_clients_are_swept_exactly() {
        let mut e = WindowEngine::new(cfg(1_000, 0, WatermarkScope::Partition));
        e.process(0, "idle", Reading { t: 0, v: 1.0 });
        for i in 0..SWEEP_EVERY as i64 {
            e.process(0, "busy", Reading { t: 10 + i, v: 1.0 });
        }
        assert_eq!(e.stats().clients, 1, "the idle client is gone");
    }

    #[test]
    fn state_is_bounded_by_window_plus_grace() {
        let mut e = WindowEngine::new(cfg(600_000, 30_000, WatermarkScope::Partition));
        for i in 0..100_000i64 {
            e.process(
                0,
                "c",
                Reading {
                    t: i * 1_000,
                    v: 1.0,
                },
            );
        }
        let s = e.stats();
        assert_eq!(s.readings, 630, "600 s window + 30 s grace at 1 reading/s");
    }

    #[test]
    fn gaps_longer_than_the_time_offset_range() {
        let c = cfg(600_000, 30_000, WatermarkScope::Client);
        let day = 86_400_000i64;
        let arrivals: Vec<(&str, Reading)> = [
            0,
            60_000,
            60 * day,
            60 * day + 30_000,
            200 * day,
            200 * day - 10_000,
        ]
        .iter()
        .enumerate()
        .map(|(i, &t)| ("c", Reading { t, v: i as f64 }))
        .collect();
        let want = reference_features(c, &arrivals);
        let mut e = WindowEngine::new(c);
        for (k, &(client, r)) in arrivals.iter().enumerate() {
            match (e.process(0, client, r), want[k]) {
                (Outcome::Emit(a), Some(b)) => {
                    assert_eq!(a.count, b.count, "reading {k}");
                    assert!(
                        close(a.integral, b.integral) && close(a.mean, b.mean),
                        "reading {k}"
                    );
                }
                (got, want) => panic!("reading {k}: {got:?} vs {want:?}"),
            }
        }
        assert!(
            WindowConfig {
                size_ms: MAX_SPAN_MS,
                grace_ms: 1,
                ..c
            }
            .validate()
            .is_err()
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn long_streams_do_not_drift() {
        let mut e = WindowEngine::new(cfg(10_000, 0, WatermarkScope::Client));
        let mut last = None;
        for i in 0..1_000_000i64 {
            let v = ((i * 7919) % 1000) as f64 * 1e-3 + 1e6 * ((i % 2) as f64);
            last = Some(emit(e.process(0, "c", Reading { t: i * 100, v })));
        }
        let got = last.unwrap();
        // The last window holds t in (99 990 000, 99 999 900]: 100 readings.
        let expect = aggregates_of((999_900..1_000_000i64).map(|i| Reading {
            t: i * 100,
            v: ((i * 7919) % 1000) as f64 * 1e-3 + 1e6 * ((i % 2) as f64),
        }));
        assert_eq!(got.count, 100);
        assert!(close(got.mean, expect.mean) && close(got.integral, expect.integral));
    }

    /// Sequences of (client index, time, value) with many equal timestamps, out-of-order
    /// arrivals and gaps around the window size.
    fn arrivals() -> impl Strategy<Value = Vec<(usize, i64, f64)>> {
        prop::collection::vec(
            (
                0usize..3,
                prop_oneof![
                    4 => 0i64..120_000,          // forward steps
                    1 => Just(0i64),             // equal timestamps
                    1 => Just(600_000i64),       // exactly one window
                    1 => -40_000i64..0,          // out of order, maybe late
                ],
                -1000.0f64..1000.0,
            ),
            1..200,
        )
        .prop_map(|steps| {
            let mut t = 1_000_000i64;
            steps
                .into_iter()
                .map(|(c, dt, v)| {
                    t += dt;
                    (c, t, v)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn fast_engine_equals_naive_reference(
            seq in arrivals(),
            grace in prop_oneof![Just(0i64), 1i64..60_000],
            size in prop_oneof![Just(600_000i64), 1i64..700_000],
            client_scope in any::<bool>(),
        ) {
            let scope = if client_scope { WatermarkScope::Client } else { WatermarkScope::Partition };
            let c = cfg(size, grace, scope);
            let names = ["a", "b", "c"];
            let arrivals: Vec<(&str, Reading)> =
                seq.iter().map(|&(i, t, v)| (names[i], Reading { t, v })).collect();
            let slow = reference_features(c, &arrivals);
            let mut e = WindowEngine::new(c);
            for (k, &(client, r)) in arrivals.iter().enumerate() {
                match (e.process(7, client, r), &slow[k]) {
                    (Outcome::Emit(f), Some(s)) => assert_agg_eq(&f, s)?,
                    (Outcome::Late { .. }, None) => {}
                    (f, s) => prop_assert!(false, "reading {k}: fast {f:?} vs reference {s:?}"),
                }
            }
        }
    }
}
