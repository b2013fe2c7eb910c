//! The event-time (as-of) join of SX, SY and the FA/FI/FD triple by client key, with emission
//! by watermark. Pure: no transport, no clock (wall time is passed in, for the idle timeout).
//!
//! ```text
//!   SX ─┐  late? (t < own bound) ─► Late  per client, sorted by (t, offset):
//!   SY ─┤  repeat? ──────► Duplicate        SX values, SY values, complete triples
//!   FA ─┤  ─► as-of stores ─┬─ trigger (SX, SY, completed triple) ─► pending, ordered by t
//!   FI ─┤     partial triples by SZ (partition, offset) ──┘
//!   FD ─┘
//!   W = min over the five inputs (max event time − grace)        [idle inputs left out]
//!   W passes t ─► pending trigger at t: as-of lookup ─► Prediction | Skipped(reason)
//!              ─► partial triple at t still incomplete ─► IncompleteTriple
//! ```
//!
//! ## Semantics (one [`PartitionJoin`] per co-partitioned partition number)
//! - **Triggers.** Every SX reading, every SY reading and every completed FA/FI/FD triple (the
//!   three features of one SZ reading, matched by its source partition/offset) is a trigger at
//!   its event time `t`. A trigger yields exactly one [`JoinEvent`]: a prediction vector or a
//!   skip with its reason.
//! - **As-of lookup.** For a trigger at `t`, each *other* input contributes its latest value
//!   with event time `≤ t`; ties in event time go to the larger offset (SX, SY) or the larger
//!   SZ source (partition, offset) (triples). A value with event time `> t` is never used. The
//!   trigger's own input contributes the trigger itself.
//! - **Staleness.** A value with event time `< t − S` (`S` = `max_staleness_ms`) is not used:
//!   the trigger is skipped as `stale-<input>` when the latest value is in `[t − 2S, t − S)`,
//!   and as `missing-<input>` when there is none in `[t − 2S, t]` (inputs checked in the order
//!   SX, SY, features; the first failing one names the reason). The `2S` horizon makes the
//!   stale/missing distinction a function of the data although idle clients are evicted.
//! - **Lateness.** A record is **late** ([`Applied::Late`]; the runtime routes it to the late
//!   topic, and it changes nothing) when its event time is below its *own input partition's*
//!   bound: the largest event time of the records before it in that partition, minus the
//!   grace. That is a function of the partition's order alone, so whether a record is late
//!   does not depend on how the five inputs interleave, on restarts, or on how far another
//!   input has been read: a record re-read after a crash gets the same outcome again (an
//!   earlier rule, `t < W`, made the same record late in one run and predicted in the next).
//! - **Watermark.** `W = min over the five inputs of (max event time seen − grace)`, never
//!   decreasing; `W` is at most every input's own bound, so an accepted record is never
//!   below it. A pending trigger at `t` is released once `W > t`: from then on no record with
//!   event time `≤ t` can be accepted, so the lookup sees every value it may use. (Strictly
//!   greater, not `≥`: readings of other clients or inputs with the very same timestamp may
//!   still arrive at `W = t`.)
//! - **Idle inputs.** When all five inputs of the partition have had no record for
//!   `idle_timeout_ms` of wall time (passed in as `now_ms`), `W` becomes the largest event time
//!   seen + 1, so the last triggers of a stream are released. A single input with no record for
//!   the (longer) `input_idle_timeout_ms` stops holding `W` back while the others go on. These
//!   are the only dependences on wall-clock time: a record arriving after its input was
//!   declared idle is late when below the `W` that moved (its lateness bound is then the larger
//!   of its own and `W`), where an uninterrupted run might have used it. The per-input
//!   timeout is long on purpose: at start-up, and while an upstream processor restarts, one
//!   input legitimately lags the others by seconds to tens of seconds, and declaring it idle
//!   then would turn its records late. Only an *accepted* record is activity: an input that
//!   receives nothing but late records or repeats goes idle like a silent one (otherwise it
//!   froze `W`, and every trigger of the partition piled up in memory with commits stopped).
//!   An input the runtime paused ([`PartitionJoin::set_paused`]) is never idle.
//! - **Memory budget.** The runtime bounds what the join holds (pending triggers, partial
//!   triples, and its outboxes): above its budget it pauses fetching the inputs that run
//!   ahead of `W` ([`PartitionJoin::ahead`]: pausing them never holds `W` back), which does not
//!   change any outcome; above twice the budget it releases the oldest triggers at once as
//!   [`SkipReason::Overflow`] ([`PartitionJoin::force_release`]), moving `W` past them: a
//!   wall-clock and load dependence, like the idle rules, counted and dead-lettered.
//! - **Incomplete triples.** A partial triple whose event time `W` has passed is released as
//!   [`JoinEvent::IncompleteTriple`] (dead-lettered by the runtime); a later feature of it is
//!   late.
//! - **Repeats.** A feature whose SZ source offset was handled before for its kind and SZ
//!   partition is an exact repeat (the window-processor re-emits after a crash):
//!   [`Applied::Duplicate`], ignored (checked before lateness: a repeat is not late data). Each
//!   feature topic carries one SZ partition's features in source order, so "handled" is the
//!   largest offset seen minus the gaps below it: a feature that arrives after a later one (a
//!   delivery retried after later records were acknowledged) fills its gap and is taken, or
//!   routed as late, never dropped as a repeat (gaps are kept down to the `W − 2S` horizon).
//! - **Determinism.** Given the records of each input in partition order, and no idle
//!   timeout firing, every interleaving of the five inputs yields the same multiset of
//!   outcomes, events and late records, whatever the disorder within each input
//!   (property-tested against [`reference_outcomes`] with jittered inputs).
//!
//! ## State and offsets
//! Per client and input the state keeps the values with event time `≥ W` plus the latest one
//! below `W` (dropped once older than `W − 2S`): exactly what a future lookup (`t ≥ W`) can
//! need. A client with nothing pending and nothing newer than `W − 2S` is evicted. Pending
//! triggers and partial triples *pin* the offsets of their records; [`PartitionJoin::commit_limit`]
//! is the smallest pinned offset of an input, so the runtime never commits past a record
//! whose outcome is not yet produced. The watermark releases in event-time order, so with
//! inputs out of order a later offset can be released before a pinned earlier one: the
//! runtime passes every outcome through an [`Outbox`], which holds it until its records are
//! below their inputs' commit limits. Outcomes out are then exactly those of the records
//! below the commit points, and a restart that re-reads from them produces each missing
//! outcome once (property-tested: `a_restart_from_the_commit_points_gives_each_record_one_outcome`).
//! Records applied with `replay = true` (state rebuilt from the topics after a restart; their
//! outcomes were produced before the commit) neither pin nor produce events.

use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

mod outbox;
mod reference;
mod state;
#[cfg(test)]
mod tests;
mod types;

pub use outbox::Outbox;
pub use reference::{RefRecord, reference_join, reference_outcomes};
use state::*;
pub use types::*;

/// How many applied records between sweeps for idle clients.
const SWEEP_EVERY: u32 = 4096;

/// The join state of one partition number (all five inputs' partitions of that number).
#[derive(Debug)]
pub struct PartitionJoin {
    cfg: JoinConfig,
    clocks: [Clock; 5],
    watermark: i64,
    clients: FxHashMap<Arc<str>, ClientJoin>,
    /// Keyed by (event time, input, offset): release order.
    pending: PendingQueue,
    /// Keyed by (event time, SZ source).
    partials: BTreeMap<(i64, SzSource), Partial>,
    pinned: [PinnedOffsets; 5],
    /// SZ source offsets applied per feature kind and SZ partition (repeats told apart from
    /// features that arrive after a later one).
    seen: [FxHashMap<i32, SeenOffsets>; 3],
    since_sweep: u32,
    /// The upstream stage that writes this partition's features has unprocessed input (set by
    /// the runtime from that stage's consumer-group lag): see [`PartitionJoin::set_upstream_backlog`].
    upstream_backlog: bool,
    /// Per input: this partition of it has records in the broker the join has not read yet
    /// (set by the runtime from its consumer's position): see [`PartitionJoin::set_unread`].
    unread: [bool; 5],
}

impl PartitionJoin {
    /// Empty state; `now_ms` starts the inputs' idle clocks.
    pub fn new(cfg: JoinConfig, now_ms: i64) -> Self {
        Self {
            cfg,
            clocks: [Clock {
                max_t: None,
                last_ms: now_ms,
                paused: false,
            }; 5],
            watermark: i64::MIN,
            clients: FxHashMap::default(),
            pending: PendingQueue::default(),
            partials: BTreeMap::new(),
            pinned: Default::default(),
            seen: Default::default(),
            since_sweep: 0,
            upstream_backlog: false,
            unread: [false; 5],
        }
    }

    /// Restarts every input's idle clock at wall time `now_ms`, ms. Call it when live
    /// consumption of a rebuilt partition begins: the rebuild applied its records at the wall
    /// time it started, and a rebuild longer than `idle_timeout_ms` would otherwise make every
    /// input look all-quiet idle at the first [`PartitionJoin::advance`], jumping the watermark
    /// past the lagging inputs and turning their next records late.
    pub fn restart_idle_clocks(&mut self, now_ms: i64) {
        for c in &mut self.clocks {
            c.last_ms = now_ms;
        }
    }

    /// Tells the join whether the stage that writes this partition's FA/FI/FD (the
    /// window-processor) still has unprocessed SZ input: its consumer group's committed offset
    /// on the co-partitioned SZ partition is below that partition's end. While it has, the
    /// feature inputs are not *all-quiet* idle after `idle_timeout_ms` (their silence means the
    /// upstream lags, not that the stream ended); they count as idle only after
    /// `input_idle_timeout_ms`, as when one input lags. Without it a window-processor more than
    /// `idle_timeout_ms` behind made the join release SX/SY triggers before their features
    /// existed (issue 10: a second demo run under load lost 33,120 features as late). The
    /// runtime observes the lag on its flush tick; `false` (the default) keeps the wall-clock
    /// rule alone.
    pub fn set_upstream_backlog(&mut self, backlog: bool) {
        self.upstream_backlog = backlog;
    }

    /// Tells the join whether its own consumer has records of `input`'s partition left to read
    /// (position below the partition's end). Such an input is not *all-quiet* idle after
    /// `idle_timeout_ms`: its silence means the consumer has not fetched it yet (one of
    /// hundreds of partitions behind a large backlog), not that the stream ended; it counts as
    /// idle only after `input_idle_timeout_ms`. Without it, a full-speed replay of 6.1 M
    /// readings sent 1.2 M SY records to the late topic: the join read the other four inputs of
    /// a partition to the end, did not fetch its SY for 10 s, and released by wall clock.
    pub fn set_unread(&mut self, input: InputKind, unread: bool) {
        self.unread[input.idx()] = unread;
    }

    /// Tells the join whether the runtime paused fetching `input`'s partition (watermark
    /// alignment, see [`PartitionJoin::ahead`]). A paused input is never idle: its silence is
    /// ours, and declaring it idle would let the watermark pass records it has not fetched.
    /// Resumed at wall time `now_ms`, its idle clock starts again there (it was silent because
    /// it was paused).
    pub fn set_paused(&mut self, input: InputKind, paused: bool, now_ms: i64) {
        let c = &mut self.clocks[input.idx()];
        if c.paused && !paused {
            c.last_ms = now_ms;
        }
        c.paused = paused;
    }

    /// Triggers and partial triples held until the watermark passes them.
    pub fn held(&self) -> usize {
        self.pending.len() + self.partials.len()
    }

    /// Per input: whether it runs ahead of the watermark (its own bound, max event time −
    /// grace, is above it). Pausing such an input cannot hold the watermark back, and stops
    /// the triggers it adds while a slower input holds the watermark: the join's watermark
    /// alignment (as Flink's FLIP-182 pauses splits whose watermark drifts ahead).
    pub fn ahead(&self) -> [bool; 5] {
        let w = self.watermark;
        self.clocks.map(|c| {
            c.max_t
                .is_some_and(|m| m.saturating_sub(self.cfg.grace_ms) > w)
        })
    }

    /// Releases the `n` oldest held triggers before the watermark passed them, each as
    /// [`SkipReason::Overflow`], and moves the watermark past them (so a record at or below
    /// their event time that arrives later is late, as after any release); partial triples
    /// the watermark then passed are released as incomplete. The runtime calls it when the
    /// join holds more than its budget although the inputs that run ahead are paused.
    pub fn force_release(&mut self, n: usize, now_ms: i64, out: &mut Vec<JoinEvent>) {
        let mut last = None;
        for _ in 0..n {
            let Some(((t, _, _), p)) = self.pending.pop_below(i64::MAX) else {
                break;
            };
            for r in p.records.iter().flatten() {
                self.unpin(*r);
            }
            self.close(&p.client);
            last = Some(t);
            if !p.replay {
                #[allow(clippy::expect_used)]
                let record = p.records[0].expect("every trigger has its record");
                out.push(JoinEvent::Skipped {
                    client: p.client.clone(),
                    trigger: p.trigger,
                    event_time_ms: t,
                    record,
                    records: p.records,
                    reason: SkipReason::Overflow,
                });
            }
        }
        if let Some(t) = last {
            self.watermark = self.watermark.max(t.saturating_add(1));
        }
        self.advance(now_ms, out);
    }

    /// The current watermark, ms (`i64::MIN` before every input has a record).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// The smallest offset of `input` whose outcome is still pending (`None`: nothing pinned;
    /// everything consumed may be committed).
    pub fn commit_limit(&self, input: InputKind) -> Option<i64> {
        self.pinned[input.idx()].first()
    }

    fn horizon(&self, w: i64) -> i64 {
        w.saturating_sub(self.cfg.max_staleness_ms.saturating_mul(2))
    }

    fn client(&mut self, client: &str) -> &mut ClientJoin {
        if !self.clients.contains_key(client) {
            let id: Arc<str> = client.into();
            self.clients.insert(
                id.clone(),
                ClientJoin {
                    id,
                    ..ClientJoin::default()
                },
            );
        }
        let w = self.watermark;
        let h = self.horizon(w);
        let c = self.clients.get_mut(client);
        #[allow(clippy::expect_used)]
        let c = c.expect("inserted above");
        c.prune(w, h);
        c
    }

    fn pin(&mut self, r: RecordRef, replay: bool) {
        if !replay {
            self.pinned[r.input.idx()].insert(r.offset);
        }
    }

    fn unpin(&mut self, r: RecordRef) {
        self.pinned[r.input.idx()].remove(r.offset);
    }

    /// Applies one record at wall time `now_ms`, then releases what the watermark allows into
    /// `out`. `replay` marks records re-read to rebuild state: their outcomes were produced
    /// before, so they pin nothing and produce no events.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        client: &str,
        input: JoinInput,
        offset: i64,
        ingest_time_ms: i64,
        replay: bool,
        now_ms: i64,
        out: &mut Vec<JoinEvent>,
    ) -> Applied {
        let kind = input.kind();
        let t = input.event_time_ms();
        // A repeat first: a feature re-emitted after an upstream restart is below the
        // watermark by then, and it is a repeat, not late data.
        if let JoinInput::Feature { source, .. } = input
            && self.seen[kind.idx() - 2]
                .get(&source.partition)
                .is_some_and(|seen| seen.contains(source.seq()))
        {
            return Applied::Duplicate;
        }
        if let JoinInput::Feature { source, .. } = input {
            // Handled from here on (taken, or routed as late): a later copy is a repeat.
            self.seen[kind.idx() - 2]
                .entry(source.partition)
                .or_default()
                .insert(source.seq(), t);
        }
        // Late by its own input partition's order (max event time before it − grace), which
        // no interleaving of the five inputs changes; or below a watermark that idle inputs
        // moved further (the wall-clock rules).
        let bound = self.clocks[kind.idx()]
            .max_t
            .map_or(i64::MIN, |m| m.saturating_sub(self.cfg.grace_ms))
            .max(self.watermark);
        if t < bound {
            self.advance(now_ms, out);
            return Applied::Late { watermark: bound };
        }
        // Only an accepted record is activity: an input that receives nothing but repeats or
        // late records goes idle (and stops holding the watermark) like a silent one, instead
        // of freezing the watermark while every trigger of the partition piles up.
        let clock = &mut self.clocks[kind.idx()];
        clock.last_ms = now_ms;
        clock.max_t = Some(clock.max_t.map_or(t, |m| m.max(t)));
        let me = RecordRef {
            input: kind,
            offset,
        };
        match input {
            JoinInput::Sx { value, .. } | JoinInput::Sy { value, .. } => {
                let c = self.client(client);
                let store = if kind == InputKind::Sx {
                    &mut c.sx
                } else {
                    &mut c.sy
                };
                store.insert(Entry {
                    t,
                    tie: (0, offset, 0),
                    v: value,
                });
                c.open += 1;
                let id = c.id.clone();
                self.pin(me, replay);
                self.pending.insert(
                    (t, kind, offset),
                    Pending {
                        client: id,
                        trigger: if kind == InputKind::Sx {
                            Trigger::Sx
                        } else {
                            Trigger::Sy
                        },
                        value,
                        bins: [0; 3],
                        source: SzSource {
                            partition: -1,
                            offset: -1,
                            index: 0,
                        },
                        records: [Some(me), None, None],
                        ingest_time_ms,
                        replay,
                    },
                );
            }
            JoinInput::Feature { bin, source, .. } => {
                let slot = kind.idx() - 2;
                let key = (t, source);
                if !self.partials.contains_key(&key) {
                    let c = self.client(client);
                    c.open += 1;
                    let id = c.id.clone();
                    self.partials.insert(
                        key,
                        Partial {
                            client: id,
                            bins: [None; 3],
                            offsets: [None; 3],
                            ingest_time_ms,
                            replay: true,
                        },
                    );
                }
                self.pin(me, replay);
                #[allow(clippy::expect_used)]
                let p = self.partials.get_mut(&key).expect("inserted above");
                p.bins[slot] = Some(bin);
                p.offsets[slot] = Some(offset);
                p.replay &= replay;
                if slot == 0 {
                    p.ingest_time_ms = ingest_time_ms;
                }
                if let ([Some(fa), Some(fi), Some(fd)], [Some(ofa), Some(ofi), Some(ofd)]) =
                    (p.bins, p.offsets)
                {
                    #[allow(clippy::expect_used)]
                    let p = self.partials.remove(&key).expect("present");
                    let bins = [fa, fi, fd];
                    let c = self.client(client);
                    c.triples.insert(Entry {
                        t,
                        tie: (source.partition, source.offset, source.index),
                        v: bins,
                    });
                    // The partial's `open` carries over to the pending trigger.
                    let records = [
                        Some(RecordRef {
                            input: InputKind::Fa,
                            offset: ofa,
                        }),
                        Some(RecordRef {
                            input: InputKind::Fi,
                            offset: ofi,
                        }),
                        Some(RecordRef {
                            input: InputKind::Fd,
                            offset: ofd,
                        }),
                    ];
                    self.pending.insert(
                        (t, InputKind::Fa, ofa),
                        Pending {
                            client: p.client,
                            trigger: Trigger::Features,
                            value: 0,
                            bins,
                            source,
                            records,
                            ingest_time_ms: p.ingest_time_ms,
                            replay: p.replay,
                        },
                    );
                }
            }
        }
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.since_sweep = 0;
            self.sweep();
        }
        self.advance(now_ms, out);
        Applied::Accepted
    }

    fn compute_watermark(&self, now_ms: i64) -> i64 {
        let idle_for = |c: &Clock, to: Option<i64>| {
            !c.paused && to.is_some_and(|to| now_ms.saturating_sub(c.last_ms) >= to)
        };
        let features_timeout = if self.upstream_backlog {
            self.cfg.input_idle_timeout_ms
        } else {
            self.cfg.idle_timeout_ms
        };
        let all_idle = self.clocks.iter().enumerate().all(|(i, c)| {
            let to = if self.unread[i] {
                self.cfg.input_idle_timeout_ms
            } else if i >= InputKind::Fa.idx() {
                features_timeout
            } else {
                self.cfg.idle_timeout_ms
            };
            idle_for(c, to)
        });
        let mut w = i64::MAX;
        let mut active = !all_idle;
        let mut max_seen: Option<i64> = None;
        for c in &self.clocks {
            if let Some(m) = c.max_t {
                max_seen = Some(max_seen.map_or(m, |x| x.max(m)));
            }
            if all_idle || idle_for(c, self.cfg.input_idle_timeout_ms) {
                continue;
            }
            active = true;
            w = w.min(
                c.max_t
                    .map_or(i64::MIN, |m| m.saturating_sub(self.cfg.grace_ms)),
            );
        }
        if !active {
            w = max_seen.map_or(i64::MIN, |m| m.saturating_add(1));
        }
        w.max(self.watermark)
    }

    /// Recomputes the watermark at wall time `now_ms` (idle inputs) and releases into `out`
    /// every partial triple and pending trigger whose event time it passed, in event-time
    /// order. Call it periodically (the runtime's flush tick) so idle timeouts take effect.
    pub fn advance(&mut self, now_ms: i64, out: &mut Vec<JoinEvent>) {
        self.watermark = self.compute_watermark(now_ms);
        let w = self.watermark;
        while let Some(entry) = self.partials.first_entry() {
            if entry.key().0 >= w {
                break;
            }
            let ((t, source), p) = entry.remove_entry();
            let present: Vec<RecordRef> = p
                .offsets
                .iter()
                .zip([InputKind::Fa, InputKind::Fi, InputKind::Fd])
                .filter_map(|(o, input)| o.map(|offset| RecordRef { input, offset }))
                .collect();
            for r in &present {
                self.unpin(*r);
            }
            self.close(&p.client);
            if !p.replay {
                out.push(JoinEvent::IncompleteTriple {
                    client: p.client,
                    event_time_ms: t,
                    source,
                    present,
                });
            }
        }
        while let Some(((t, _, _), p)) = self.pending.pop_below(w) {
            for r in p.records.iter().flatten() {
                self.unpin(*r);
            }
            let ev = self.evaluate(t, &p);
            self.close(&p.client);
            if !p.replay {
                out.push(ev);
            }
        }
    }

    fn close(&mut self, client: &str) {
        if let Some(c) = self.clients.get_mut(client) {
            c.open = c.open.saturating_sub(1);
        }
    }

    fn evaluate(&self, t: i64, p: &Pending) -> JoinEvent {
        let s = self.cfg.max_staleness_ms;
        let used = t.saturating_sub(s);
        let horizon = t.saturating_sub(s.saturating_mul(2));
        let c = self.clients.get(&p.client);
        let check = |e: Option<i64>, missing: SkipReason, stale: SkipReason| match e {
            Some(et) if et >= used => Ok(()),
            Some(et) if et >= horizon => Err(stale),
            _ => Err(missing),
        };
        let sx = match p.trigger {
            Trigger::Sx => Some(Entry {
                t,
                tie: (0, 0, 0),
                v: p.value,
            }),
            _ => c.and_then(|c| c.sx.as_of(t)),
        };
        let sy = match p.trigger {
            Trigger::Sy => Some(Entry {
                t,
                tie: (0, 0, 0),
                v: p.value,
            }),
            _ => c.and_then(|c| c.sy.as_of(t)),
        };
        let tr = match p.trigger {
            Trigger::Features => Some(Entry {
                t,
                tie: (p.source.partition, p.source.offset, p.source.index),
                v: p.bins,
            }),
            _ => c.and_then(|c| c.triples.as_of(t)),
        };
        #[allow(clippy::expect_used)]
        let record = p.records[0].expect("every trigger has its record");
        let verdict = check(sx.map(|e| e.t), SkipReason::MissingSx, SkipReason::StaleSx)
            .and_then(|()| check(sy.map(|e| e.t), SkipReason::MissingSy, SkipReason::StaleSy))
            .and_then(|()| {
                check(
                    tr.map(|e| e.t),
                    SkipReason::MissingFeatures,
                    SkipReason::StaleFeatures,
                )
            });
        match (verdict, sx, sy, tr) {
            (Ok(()), Some(sx), Some(sy), Some(tr)) => JoinEvent::Prediction(JoinOutput {
                client: p.client.clone(),
                vector: [
                    sx.v,
                    sy.v,
                    i64::from(tr.v[0]),
                    i64::from(tr.v[1]),
                    i64::from(tr.v[2]),
                ],
                trigger: p.trigger,
                event_time_ms: t,
                record,
                records: p.records,
                triple_source: SzSource {
                    partition: tr.tie.0,
                    offset: tr.tie.1,
                    index: tr.tie.2,
                },
                ingest_time_ms: p.ingest_time_ms,
            }),
            (verdict, ..) => JoinEvent::Skipped {
                client: p.client.clone(),
                trigger: p.trigger,
                event_time_ms: t,
                record,
                records: p.records,
                reason: verdict.err().unwrap_or(SkipReason::MissingSx),
            },
        }
    }

    /// Evicts clients with nothing open and no value a future lookup could use.
    fn sweep(&mut self) {
        let w = self.watermark;
        let h = self.horizon(w);
        for seen in self.seen.iter_mut().flat_map(FxHashMap::values_mut) {
            seen.prune(h);
        }
        self.clients.retain(|_, c| {
            c.prune(w, h);
            c.open > 0
                || [c.sx.newest(), c.sy.newest(), c.triples.newest()]
                    .into_iter()
                    .flatten()
                    .any(|t| t >= h)
        });
    }

    /// Current state size.
    pub fn stats(&self) -> JoinStats {
        let values: usize = self.clients.values().map(ClientJoin::values).sum();
        let key_bytes: usize = self.clients.keys().map(|k| k.len()).sum();
        JoinStats {
            clients: self.clients.len(),
            values,
            pending: self.pending.len(),
            partials: self.partials.len(),
            bytes: values * 24
                + key_bytes
                + self.clients.len() * (std::mem::size_of::<ClientJoin>() + 16)
                + self.pending.len() * (std::mem::size_of::<Pending>() + 40)
                + self.partials.len() * (std::mem::size_of::<Partial>() + 48),
        }
    }
}
