//! Epoch-aligned windows over SZ readings, per client: tumbling, hopping and global (a running
//! total since the client's first reading), emitted per record or once final.
//!
//! ```text
//!   reading ─► late? (t < watermark) ─► Late
//!          └─► each window [s, e) holding t (created on its first reading) ─► insert exactly
//!              ─► PerRecord: the updated aggregates of each of them
//!          watermark passes e ─► window closed ─► Final: its aggregates, once
//! ```
//!
//! ## Definition
//! - **Windows.** Tumbling (size `S`): `[k·S, (k+1)·S)`; hopping (size `S`, advance `A ≤ S`):
//!   `[k·A, k·A + S)`, so a reading is in `⌈S/A⌉` windows (or one fewer); global: one window
//!   `[i64::MIN, i64::MAX)`. `k` is any integer: windows are aligned to the Unix epoch, the
//!   definition of Kafka Streams' `TimeWindows` and Flink's `TUMBLE`/`HOP`. A window exists
//!   for a client once one of its readings falls in it (no empty windows).
//! - **Aggregates** of a window are those of [`super::Aggregates`] over its readings sorted by
//!   `(t, arrival)`, with the same exact arithmetic as the sliding window: count, `round(Σ v)`,
//!   mean, min, max, the trapezoidal integral across consecutive readings *of the window*, and
//!   the derivative from its first to its last reading.
//! - **Watermark, lateness.** As for the sliding window: `watermark = max event time − grace`,
//!   per partition or per client ([`WatermarkScope`]); a reading with `t < watermark` is late
//!   and joins no window.
//! - **Closing.** A window `[s, e)` is *closed* once the watermark is `≥ e`: no reading it could
//!   take can be accepted any more (Kafka Streams closes at stream time `≥ e + grace`, the same
//!   instant since our watermark already subtracts the grace). The global window never closes.
//!   Under partition scope a reading of one client can close the windows of every client of
//!   the partition; under client scope only the client's own readings close its windows.
//! - **Emission.** [`Emit::PerRecord`] (Spark's update mode, Kafka Streams without suppress):
//!   each accepted reading yields the updated aggregates of every window holding it, in
//!   window-start order, stamped with the window's newest reading time. [`Emit::Final`]
//!   (Spark's append mode, Kafka Streams' `suppress(untilWindowCloses)`): each window yields
//!   its aggregates once, when it closes, stamped `e − 1` (Flink's `maxTimestamp`), in the
//!   order `(e, s, client key)`; a reading's own windows never close on that reading, so it
//!   yields nothing at once. Final emission is refused for the global window.
//!
//! The outcome of every reading is therefore a pure function of the partition's arrival order:
//! a rebuild that replays the same readings reaches the same open windows and closes them at
//! the same readings.
//!
//! ## Cost and memory
//! An in-order reading costs O(log n) to find its place plus O(1) per window holding it; an
//! out-of-order one O(n) to insert (n = readings retained by the client). A client retains the
//! readings of its open windows with `t ≥ watermark`, plus the newest one below the
//! watermark (the left neighbour of any reading still acceptable), 16 bytes each, and per open
//! window its exact sums (two [`HybridSum`]s), first and last reading, min and max. Under
//! partition scope a client with no open window is dropped; the global window keeps a client
//! for ever (one window per client, its retained readings bounded by the grace).
//!
//! [`reference`] is the naive implementation of the same definition, for the property tests.

use super::{Aggregates, Reading, WatermarkScope, derivative, sum_mean_integral, trapezoid};
use crate::exact::HybridSum;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

/// The shape of an aligned window (durations in ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlignedKind {
    /// `[k·size, (k+1)·size)`: each reading in exactly one window.
    Tumbling {
        /// Window length, ms (> 0).
        size_ms: i64,
    },
    /// `[k·advance, k·advance + size)`: overlapping when `advance < size`.
    Hopping {
        /// Window length, ms (> 0).
        size_ms: i64,
        /// Distance between window starts, ms (`0 < advance ≤ size`).
        advance_ms: i64,
    },
    /// One window per client over all its readings: a running total since its first.
    Global,
}

/// Most windows one reading may fall in (`⌈size / advance⌉`): each is an output per record
/// (per-record emission) and state per client.
pub const MAX_WINDOWS_PER_READING: i64 = 1_000;

/// When a window's aggregates are emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Emit {
    /// On every accepted reading, for each window holding it (Spark's update mode).
    #[default]
    PerRecord,
    /// Once, when the watermark closes the window (Spark's append mode, Kafka Streams'
    /// `suppress(untilWindowCloses)`).
    Final,
}

/// Configuration of an [`AlignedEngine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlignedConfig {
    /// Window shape.
    pub kind: AlignedKind,
    /// Emission mode.
    pub emit: Emit,
    /// Allowed lateness, ms (≥ 0): watermark = max event time − grace.
    pub grace_ms: i64,
    /// Where the watermark is tracked.
    pub scope: WatermarkScope,
}

impl AlignedConfig {
    /// Checks the bounds.
    ///
    /// # Errors
    /// A message when a size or advance is ≤ 0, `advance > size`, more than
    /// [`MAX_WINDOWS_PER_READING`] windows would hold one reading, `size + grace` exceeds
    /// [`super::MAX_SPAN_MS`], the grace is negative, or final emission is asked of the
    /// global window (it never closes).
    pub fn validate(&self) -> Result<(), String> {
        if self.grace_ms < 0 {
            return Err(format!("grace must be >= 0 ms, got {}", self.grace_ms));
        }
        let (size, advance) = match self.kind {
            AlignedKind::Tumbling { size_ms } => (size_ms, size_ms),
            AlignedKind::Hopping {
                size_ms,
                advance_ms,
            } => (size_ms, advance_ms),
            AlignedKind::Global => {
                if self.emit == Emit::Final {
                    return Err(
                        "final emission needs windows that close: the global window never closes"
                            .into(),
                    );
                }
                return Ok(());
            }
        };
        if size <= 0 || advance <= 0 {
            return Err(format!(
                "window size and advance must be > 0 ms, got {size} and {advance}"
            ));
        }
        if advance > size {
            return Err(format!(
                "window advance ({advance} ms) must be at most its size ({size} ms)"
            ));
        }
        // Both positive: ⌈size / advance⌉ without overflow.
        let per_reading = (size - 1) / advance + 1;
        if per_reading > MAX_WINDOWS_PER_READING {
            return Err(format!(
                "a {size} ms window advancing by {advance} ms puts each reading in {per_reading} windows; at most {MAX_WINDOWS_PER_READING}"
            ));
        }
        if size.saturating_add(self.grace_ms) > super::MAX_SPAN_MS {
            return Err(format!(
                "window size + grace must be at most {} ms",
                super::MAX_SPAN_MS
            ));
        }
        Ok(())
    }

    /// `(size, advance)` of the windows, `None` for the global window.
    fn grid(&self) -> Option<(i64, i64)> {
        match self.kind {
            AlignedKind::Tumbling { size_ms } => Some((size_ms, size_ms)),
            AlignedKind::Hopping {
                size_ms,
                advance_ms,
            } => Some((size_ms, advance_ms)),
            AlignedKind::Global => None,
        }
    }

    /// The windows holding `t`, as `[start, end)` in start order (clipped to the `i64` range
    /// near its ends).
    pub fn windows_of(&self, t: i64) -> impl Iterator<Item = (i64, i64)> + use<> {
        let (size, advance, lo, hi) = match self.grid() {
            Some((size, advance)) => {
                let (t, s, a) = (i128::from(t), i128::from(size), i128::from(advance));
                // k·a ≤ t < k·a + s  ⇔  (t − s)/a < k ≤ t/a.
                (s, a, (t - s).div_euclid(a) + 1, t.div_euclid(a))
            }
            None => (0, 1, 0, -1),
        };
        let global = self.grid().is_none();
        let grid = (lo..=hi).map(move |k| {
            let s = k * advance;
            (clip(s), clip(s + size))
        });
        global
            .then_some((i64::MIN, i64::MAX))
            .into_iter()
            .chain(grid)
    }
}

fn clip(x: i128) -> i64 {
    i64::try_from(x).unwrap_or(if x < 0 { i64::MIN } else { i64::MAX })
}

/// One window's aggregates, emitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Emission {
    /// The client.
    pub client: Arc<str>,
    /// Window start, ms (inclusive; `i64::MIN` for the global window).
    pub start: i64,
    /// Window end, ms (exclusive; `i64::MAX` for the global window).
    pub end: i64,
    /// The event time the output carries, ms: `end − 1` when final, else the window's newest
    /// reading time.
    pub time: i64,
    /// The aggregates of the window's readings.
    pub aggregates: Aggregates,
}

/// One open window's running aggregates (exact sums; updated by insertion only).
#[derive(Debug, Clone)]
struct Win {
    start: i64,
    end: i64,
    count: u32,
    sum: HybridSum,
    area: HybridSum,
    first: Reading,
    last: Reading,
    min: f64,
    max: f64,
}

impl Win {
    fn new(start: i64, end: i64, r: Reading) -> Self {
        let mut sum = HybridSum::new();
        sum.add(r.v);
        Self {
            start,
            end,
            count: 1,
            sum,
            area: HybridSum::new(),
            first: r,
            last: r,
            min: r.v,
            max: r.v,
        }
    }

    /// Inserts `r` between its neighbours in the window, `prev` (the last reading with
    /// `t ≤ r.t`) and `next` (the first with `t > r.t`), when they are in the window.
    fn insert(&mut self, r: Reading, prev: Option<Reading>, next: Option<Reading>) {
        let prev = prev.filter(|p| p.t >= self.start);
        let next = next.filter(|n| n.t < self.end);
        if let (Some(p), Some(n)) = (prev, next) {
            trapezoid(&mut self.area, p, n, true);
        }
        if let Some(p) = prev {
            trapezoid(&mut self.area, p, r, false);
        }
        if let Some(n) = next {
            trapezoid(&mut self.area, r, n, false);
        }
        self.count = self.count.saturating_add(1);
        self.sum.add(r.v);
        if r.t < self.first.t {
            self.first = r;
        }
        if r.t >= self.last.t {
            self.last = r;
        }
        self.min = self.min.min(r.v);
        self.max = self.max.max(r.v);
    }

    fn aggregates(&self) -> Aggregates {
        let (sum, mean, integral) =
            sum_mean_integral(&self.sum, &self.area, self.count, self.first.v);
        Aggregates {
            mean,
            integral,
            derivative: derivative(self.first, self.last),
            count: self.count,
            sum,
            min: self.min,
            max: self.max,
        }
    }
}

/// The state of one client.
#[derive(Debug, Default)]
struct Client {
    /// Newest accepted event time.
    max_t: Option<i64>,
    /// Retained readings sorted by `(t, arrival)`.
    buf: VecDeque<Reading>,
    /// Open windows, sorted by start (and so by end: all have one size).
    wins: VecDeque<Win>,
}

impl Client {
    /// Drops the readings no acceptable reading can neighbour and that no open window holds.
    fn prune(&mut self, watermark: Option<i64>) {
        let oldest = self.wins.front().map_or(i64::MAX, |w| w.start);
        while let Some(first) = self.buf.front() {
            let below_wm = watermark.is_some_and(|wm| self.buf.get(1).is_some_and(|n| n.t < wm));
            if first.t < oldest || below_wm {
                self.buf.pop_front();
            } else {
                break;
            }
        }
    }
}

/// The windows of one partition.
#[derive(Debug, Default)]
struct Part {
    max_t: Option<i64>,
    clients: FxHashMap<Arc<str>, Client>,
    /// Open windows under partition scope, in closing order `(end, start, client)`.
    closing: BTreeSet<(i64, i64, Arc<str>)>,
}

/// Per-partition, per-client aligned-window state of one window-processor (see the module
/// docs). Not thread-safe by design: one engine per consumer loop.
#[derive(Debug)]
pub struct AlignedEngine {
    cfg: AlignedConfig,
    parts: FxHashMap<i32, Part>,
}

/// A reading older than the watermark: joins no window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    /// The watermark it was older than, ms.
    pub watermark: i64,
}

impl AlignedEngine {
    /// An empty engine. Callers validate the configuration first ([`AlignedConfig::validate`]).
    pub fn new(cfg: AlignedConfig) -> Self {
        Self {
            cfg,
            parts: FxHashMap::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> AlignedConfig {
        self.cfg
    }

    /// Processes one reading of `client` from `partition`, appending what it emits to `out`
    /// (per record: its windows' updates; final: the windows it closed, of any client under
    /// partition scope).
    ///
    /// # Errors
    /// [`Late`] when `r.t` is below the watermark; nothing changes then.
    pub fn process(
        &mut self,
        partition: i32,
        client: &str,
        r: Reading,
        out: &mut Vec<Emission>,
    ) -> Result<(), Late> {
        let cfg = self.cfg;
        let part = self.parts.entry(partition).or_default();
        let seen = match cfg.scope {
            WatermarkScope::Partition => part.max_t,
            WatermarkScope::Client => part.clients.get(client).and_then(|c| c.max_t),
        };
        if let Some(m) = seen {
            let watermark = m.saturating_sub(cfg.grace_ms);
            if r.t < watermark {
                return Err(Late { watermark });
            }
        }
        let key: Arc<str> = match part.clients.get_key_value(client) {
            Some((k, _)) => k.clone(),
            None => client.into(),
        };
        let c = part.clients.entry(key.clone()).or_default();
        // Neighbours in the retained readings: ties keep arrival order, so `r` goes after
        // every reading with the same time.
        let pos = c.buf.partition_point(|x| x.t <= r.t);
        let prev = pos.checked_sub(1).map(|i| c.buf[i]);
        let next = c.buf.get(pos).copied();
        let first_emission = out.len();
        for (start, end) in cfg.windows_of(r.t) {
            let i = c.wins.partition_point(|w| w.start < start);
            if c.wins.get(i).is_some_and(|w| w.start == start) {
                c.wins[i].insert(r, prev, next);
            } else {
                c.wins.insert(i, Win::new(start, end, r));
                if cfg.scope == WatermarkScope::Partition && end != i64::MAX {
                    part.closing.insert((end, start, key.clone()));
                }
            }
            if cfg.emit == Emit::PerRecord {
                let w = &c.wins[c.wins.partition_point(|w| w.start < start)];
                out.push(Emission {
                    client: key.clone(),
                    start,
                    end,
                    time: w.last.t,
                    aggregates: w.aggregates(),
                });
            }
        }
        debug_assert!(cfg.emit == Emit::Final || out.len() > first_emission);
        c.buf.insert(pos, r);
        c.max_t = Some(c.max_t.map_or(r.t, |m| m.max(r.t)));
        part.max_t = Some(part.max_t.map_or(r.t, |m| m.max(r.t)));
        match cfg.scope {
            WatermarkScope::Client => {
                let wm = c.max_t.map(|m| m.saturating_sub(cfg.grace_ms));
                while let Some(w) = c.wins.front()
                    && wm.is_some_and(|wm| w.end <= wm)
                {
                    let Some(w) = c.wins.pop_front() else { break };
                    if cfg.emit == Emit::Final {
                        out.push(final_of(&key, &w));
                    }
                }
                c.prune(wm);
            }
            WatermarkScope::Partition => {
                let wm = part.max_t.map(|m| m.saturating_sub(cfg.grace_ms));
                c.prune(wm);
                close_partition(part, cfg, wm, out);
            }
        }
        Ok(())
    }

    /// The watermark of `partition` under partition scope, `None` before its first reading.
    pub fn partition_watermark(&self, partition: i32) -> Option<i64> {
        self.parts
            .get(&partition)
            .and_then(|p| p.max_t)
            .map(|m| m.saturating_sub(self.cfg.grace_ms))
    }

    /// Drops the state of a revoked partition.
    pub fn revoke(&mut self, partition: i32) {
        self.parts.remove(&partition);
    }

    /// Drops all state.
    pub fn clear(&mut self) {
        self.parts.clear();
    }

    /// Current state size: `(clients, open windows, retained readings)`.
    pub fn stats(&self) -> (usize, usize, usize) {
        let mut s = (0, 0, 0);
        for p in self.parts.values() {
            for c in p.clients.values() {
                s.0 += 1;
                s.1 += c.wins.len();
                s.2 += c.buf.len();
            }
        }
        s
    }
}

fn final_of(client: &Arc<str>, w: &Win) -> Emission {
    Emission {
        client: client.clone(),
        start: w.start,
        end: w.end,
        time: w.end.saturating_sub(1),
        aggregates: w.aggregates(),
    }
}

/// Closes the partition's windows with `end ≤ wm` in `(end, start, client)` order, emitting
/// them when final, and drops the clients left with no open window.
fn close_partition(part: &mut Part, cfg: AlignedConfig, wm: Option<i64>, out: &mut Vec<Emission>) {
    let Some(wm) = wm else { return };
    while let Some(first) = part.closing.first()
        && first.0 <= wm
    {
        let Some((_, start, key)) = part.closing.pop_first() else {
            break;
        };
        let Some(c) = part.clients.get_mut(&key) else {
            continue;
        };
        // A client's windows share one size, so they close in start order: this is its first.
        debug_assert_eq!(c.wins.front().map(|w| w.start), Some(start));
        let Some(w) = c.wins.pop_front() else {
            continue;
        };
        if cfg.emit == Emit::Final {
            out.push(final_of(&key, &w));
        }
        if c.wins.is_empty() {
            part.clients.remove(&key);
        } else {
            c.prune(Some(wm));
        }
    }
}

/// Naive reference of the module's definition: one partition's arrivals `(client, reading)`
/// in order → per arrival, `None` when late, else what it emits. Recomputes every window
/// from its members with [`super::aggregates_of`]; O(n²) and more.
pub fn reference(cfg: AlignedConfig, arrivals: &[(&str, Reading)]) -> Vec<Option<Vec<Emission>>> {
    let mut accepted: Vec<(&str, Reading)> = Vec::new();
    // Closed windows: (client, start).
    let mut closed: BTreeSet<(String, i64)> = BTreeSet::new();
    let mut out = Vec::with_capacity(arrivals.len());
    let wm_of = |acc: &[(&str, Reading)], client: &str| {
        acc.iter()
            .filter(|(c, _)| cfg.scope == WatermarkScope::Partition || *c == client)
            .map(|(_, x)| x.t)
            .max()
            .map(|m| m.saturating_sub(cfg.grace_ms))
    };
    let members = |acc: &[(&str, Reading)], client: &str, start: i64, end: i64| {
        let mut w: Vec<Reading> = acc
            .iter()
            .filter(|(c, x)| *c == client && x.t >= start && x.t < end)
            .map(|(_, x)| *x)
            .collect();
        w.sort_by_key(|x| x.t); // stable: ties in arrival order
        w
    };
    for &(client, r) in arrivals {
        if wm_of(&accepted, client).is_some_and(|wm| r.t < wm) {
            out.push(None);
            continue;
        }
        accepted.push((client, r));
        let mut em = Vec::new();
        if cfg.emit == Emit::PerRecord {
            for (start, end) in cfg.windows_of(r.t) {
                let w = members(&accepted, client, start, end);
                em.push(Emission {
                    client: client.into(),
                    start,
                    end,
                    time: w.last().map_or(r.t, |x| x.t),
                    aggregates: super::aggregates_of(w.into_iter()),
                });
            }
        } else {
            // Every window of every client (in scope) that is now closed and was not before.
            let mut newly: Vec<(i64, i64, &str)> = Vec::new();
            for &(c, x) in &accepted {
                let Some(wm) = wm_of(&accepted, c) else {
                    continue;
                };
                if cfg.scope == WatermarkScope::Client && c != client {
                    continue;
                }
                for (start, end) in cfg.windows_of(x.t) {
                    if end <= wm && !closed.contains(&(c.to_owned(), start)) {
                        closed.insert((c.to_owned(), start));
                        newly.push((end, start, c));
                    }
                }
            }
            newly.sort();
            for (end, start, c) in newly {
                let w = members(&accepted, c, start, end);
                em.push(Emission {
                    client: c.into(),
                    start,
                    end,
                    time: end.saturating_sub(1),
                    aggregates: super::aggregates_of(w.into_iter()),
                });
            }
        }
        out.push(Some(em));
    }
    out
}

#[cfg(test)]
mod tests;
