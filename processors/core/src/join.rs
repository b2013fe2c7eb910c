//! The event-time (as-of) join of SX, SY and the FA/FI/FD triple by client key, with emission
//! by watermark. Pure: no transport, no clock (wall time is passed in, for the idle timeout).
//!
//! ```text
//!   SX ─┐  late? (t < W) ─► Late          per client, sorted by (t, offset):
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
//! - **Watermark.** `W = min over the five inputs of (max event time seen − grace)`, never
//!   decreasing. A record with event time `< W` is **late** ([`Applied::Late`]; the runtime
//!   routes it to the late topic) and changes nothing. A pending trigger at `t` is released
//!   once `W > t`: from then on no record with event time `≤ t` can be accepted, so the
//!   lookup sees every value it may use. (Strictly greater, not `≥`: readings of other
//!   clients or inputs with the very same timestamp may still arrive at `W = t`.)
//! - **Idle inputs.** When all five inputs of the partition have had no record for
//!   `idle_timeout_ms` of wall time (passed in as `now_ms`), `W` becomes the largest event time
//!   seen + 1, so the last triggers of a stream are released. A single input with no record for
//!   the (longer) `input_idle_timeout_ms` stops holding `W` back while the others go on. These
//!   are the only dependences on wall-clock time: a record arriving after its input was
//!   declared idle may be late where an uninterrupted run would have used it. The per-input
//!   timeout is long on purpose: at start-up, and while an upstream processor restarts, one
//!   input legitimately lags the others by seconds to tens of seconds, and declaring it idle
//!   then would turn its records late.
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
//!   timeout firing, every interleaving of the five inputs yields the same multiset of events
//!   (property-tested against [`reference_join`]), provided each input is ordered within the
//!   grace (then nothing is late in any interleaving).
//!
//! ## State and offsets
//! Per client and input the state keeps the values with event time `≥ W` plus the latest one
//! below `W` (dropped once older than `W − 2S`): exactly what a future lookup (`t ≥ W`) can
//! need. A client with nothing pending and nothing newer than `W − 2S` is evicted. Pending
//! triggers and partial triples *pin* the offsets of their records; [`PartitionJoin::commit_limit`]
//! is the smallest pinned offset of an input, so the runtime never commits past a record
//! whose outcome is not yet produced. Records applied with `replay = true` (state rebuilt
//! from the topics after a restart; their outcomes were produced before the commit) neither
//! pin nor produce events.

use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

/// The five inputs, in the order used in vectors and reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputKind {
    /// SX readings.
    Sx = 0,
    /// SY readings.
    Sy = 1,
    /// FA features.
    Fa = 2,
    /// FI features.
    Fi = 3,
    /// FD features.
    Fd = 4,
}

impl InputKind {
    /// All five, in order.
    pub const ALL: [InputKind; 5] = [Self::Sx, Self::Sy, Self::Fa, Self::Fi, Self::Fd];

    fn idx(self) -> usize {
        self as usize
    }
}

/// Join configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinConfig {
    /// Allowed out-of-orderness per input, ms (≥ 0). Default 0: producers send each partition
    /// in event-time order, and a trigger is released as soon as every input has moved past it.
    pub grace_ms: i64,
    /// `S`: values older than `t − S` are not used (≥ 1).
    pub max_staleness_ms: i64,
    /// Wall-clock ms without records on all five inputs after which everything seen is
    /// released; `None` = never.
    pub idle_timeout_ms: Option<i64>,
    /// Wall-clock ms without records after which one input stops holding the watermark back
    /// while the others still flow; `None` = never.
    pub input_idle_timeout_ms: Option<i64>,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            grace_ms: 0,
            max_staleness_ms: 600_000,
            idle_timeout_ms: Some(10_000),
            input_idle_timeout_ms: Some(300_000),
        }
    }
}

impl JoinConfig {
    /// Checks the bounds.
    ///
    /// # Errors
    /// A message when grace < 0, staleness < 1 or the idle timeout < 1.
    pub fn validate(&self) -> Result<(), String> {
        if self.grace_ms < 0 {
            return Err(format!("join grace must be >= 0 ms, got {}", self.grace_ms));
        }
        if self.max_staleness_ms < 1 {
            return Err(format!(
                "max staleness must be >= 1 ms, got {}",
                self.max_staleness_ms
            ));
        }
        if self.idle_timeout_ms.is_some_and(|t| t < 1)
            || self.input_idle_timeout_ms.is_some_and(|t| t < 1)
        {
            return Err("idle timeouts must be >= 1 ms".into());
        }
        Ok(())
    }
}

/// Identifies the SZ reading behind a triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SzSource {
    /// SZ partition.
    pub partition: i32,
    /// SZ offset.
    pub offset: i64,
}

/// One input record of the join.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JoinInput {
    /// An SX reading (integer value).
    Sx {
        /// Value.
        value: i64,
        /// Event time, ms.
        event_time_ms: i64,
    },
    /// An SY reading (integer value).
    Sy {
        /// Value.
        value: i64,
        /// Event time, ms.
        event_time_ms: i64,
    },
    /// One feature of one SZ reading.
    Feature {
        /// FA, FI or FD ([`InputKind::Fa`] …).
        kind: InputKind,
        /// Bin 0..=9.
        bin: u32,
        /// Event time of the SZ reading, ms.
        event_time_ms: i64,
        /// The SZ reading.
        source: SzSource,
    },
}

impl JoinInput {
    /// Which input it belongs to.
    pub fn kind(&self) -> InputKind {
        match self {
            Self::Sx { .. } => InputKind::Sx,
            Self::Sy { .. } => InputKind::Sy,
            Self::Feature { kind, .. } => *kind,
        }
    }

    /// Event time, ms.
    pub fn event_time_ms(&self) -> i64 {
        match self {
            Self::Sx { event_time_ms, .. }
            | Self::Sy { event_time_ms, .. }
            | Self::Feature { event_time_ms, .. } => *event_time_ms,
        }
    }
}

/// What triggered an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Trigger {
    /// An SX reading.
    Sx,
    /// An SY reading.
    Sy,
    /// A completed triple.
    Features,
}

/// A record of an input partition: its input and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordRef {
    /// Input.
    pub input: InputKind,
    /// Offset in the input's partition.
    pub offset: i64,
}

/// A joined vector, ready for the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinOutput {
    /// Client id.
    pub client: Arc<str>,
    /// `[SX, SY, FA bin, FI bin, FD bin]`.
    pub vector: [i64; 5],
    /// What triggered it.
    pub trigger: Trigger,
    /// Event time of the trigger, ms.
    pub event_time_ms: i64,
    /// The triggering record (for a triple: its FA record).
    pub record: RecordRef,
    /// The SZ reading behind the triple used.
    pub triple_source: SzSource,
    /// Ingest time carried by the triggering record (0 = unknown).
    pub ingest_time_ms: i64,
}

/// Why a trigger yields no prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// No SX value within `2S` before the trigger.
    MissingSx,
    /// The latest SX is older than `t − S`.
    StaleSx,
    /// No SY value within `2S`.
    MissingSy,
    /// The latest SY is older than `t − S`.
    StaleSy,
    /// No complete triple within `2S`.
    MissingFeatures,
    /// The latest triple is older than `t − S`.
    StaleFeatures,
}

impl SkipReason {
    /// Reason code (dead-letter header, metric label).
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingSx => "missing-sx",
            Self::StaleSx => "stale-sx",
            Self::MissingSy => "missing-sy",
            Self::StaleSy => "stale-sy",
            Self::MissingFeatures => "missing-features",
            Self::StaleFeatures => "stale-features",
        }
    }

    /// Every reason, for metrics and summaries.
    pub const ALL: [SkipReason; 6] = [
        Self::MissingSx,
        Self::StaleSx,
        Self::MissingSy,
        Self::StaleSy,
        Self::MissingFeatures,
        Self::StaleFeatures,
    ];
}

/// What the watermark released.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JoinEvent {
    /// A complete vector.
    Prediction(JoinOutput),
    /// A trigger without a usable value of another input.
    Skipped {
        /// Client id.
        client: Arc<str>,
        /// What triggered it.
        trigger: Trigger,
        /// Event time, ms.
        event_time_ms: i64,
        /// The triggering record.
        record: RecordRef,
        /// Why.
        reason: SkipReason,
    },
    /// A triple whose time the watermark passed with features still missing.
    IncompleteTriple {
        /// Client id.
        client: Arc<str>,
        /// Event time of the SZ reading, ms.
        event_time_ms: i64,
        /// The SZ reading.
        source: SzSource,
        /// The features that did arrive (FA, FI, FD order).
        present: Vec<RecordRef>,
    },
}

/// What happened to one applied record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Taken into the state.
    Accepted,
    /// Event time below the watermark: not used; route to the late topic.
    Late {
        /// The watermark, ms.
        watermark: i64,
    },
    /// An exact repeat of a feature already seen: ignored.
    Duplicate,
}

/// A timestamped value in an as-of store, ordered by `(t, tie)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry<V> {
    t: i64,
    tie: (i32, i64),
    v: V,
}

/// Values of one input of one client, sorted by `(t, tie)`.
#[derive(Debug, Clone)]
struct Store<V>(Vec<Entry<V>>);

impl<V: Copy> Default for Store<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V: Copy> Store<V> {
    fn insert(&mut self, e: Entry<V>) {
        let at = self.0.partition_point(|x| (x.t, x.tie) <= (e.t, e.tie));
        self.0.insert(at, e);
    }

    /// Latest with `t ≤ at`.
    fn as_of(&self, at: i64) -> Option<Entry<V>> {
        let i = self.0.partition_point(|x| x.t <= at);
        i.checked_sub(1).map(|i| self.0[i])
    }

    /// Keeps values `≥ w` and the latest below `w` unless it is older than `horizon`.
    fn prune(&mut self, w: i64, horizon: i64) {
        let below = self.0.partition_point(|x| x.t < w);
        if below == 0 {
            return;
        }
        let keep_last = self.0[below - 1].t >= horizon;
        let drop = if keep_last { below - 1 } else { below };
        if drop > 0 {
            self.0.drain(..drop);
        }
    }

    fn newest(&self) -> Option<i64> {
        self.0.last().map(|e| e.t)
    }
}

#[derive(Debug, Default)]
struct ClientJoin {
    /// The client id, shared by its pending triggers, partial triples and join events (one
    /// allocation per client, not one per trigger).
    id: Arc<str>,
    sx: Store<i64>,
    sy: Store<i64>,
    triples: Store<[u32; 3]>,
    /// Pending triggers and partial triples of this client.
    open: u32,
}

impl ClientJoin {
    fn prune(&mut self, w: i64, horizon: i64) {
        self.sx.prune(w, horizon);
        self.sy.prune(w, horizon);
        self.triples.prune(w, horizon);
    }

    fn values(&self) -> usize {
        self.sx.0.len() + self.sy.0.len() + self.triples.0.len()
    }
}

#[derive(Debug, Clone)]
struct Pending {
    client: Arc<str>,
    trigger: Trigger,
    /// SX/SY value, or the triple's bins.
    value: i64,
    bins: [u32; 3],
    source: SzSource,
    /// Every record whose offset this trigger pins (1 for SX/SY, 3 for a triple).
    records: [Option<RecordRef>; 3],
    ingest_time_ms: i64,
    replay: bool,
}

/// The offsets of one input partition that pending triggers and partial triples pin: a set
/// with insert, remove and least, like a `BTreeSet<i64>`, for offsets that arrive in order.
///
/// A consumer reads each partition in offset order, so an insert is almost always at the back
/// (`push_back`, no allocation once grown); a removal marks its entry, found by binary search,
/// and entries leave from the front once every one before them is gone. A `BTreeSet` paid a
/// tree insert and a tree removal per record. An offset below the newest is still placed in
/// order (binary search and insert), so the result never depends on the arrival order.
#[derive(Debug, Default, Clone)]
struct PinnedOffsets {
    /// Sorted, unique offsets, each with whether it is still pinned; the front is pinned.
    q: VecDeque<(i64, bool)>,
}

impl PinnedOffsets {
    fn insert(&mut self, offset: i64) {
        match self.q.back() {
            Some(&(last, _)) if last >= offset => {
                let i = self.q.partition_point(|&(o, _)| o < offset);
                match self.q.get_mut(i) {
                    Some(e) if e.0 == offset => e.1 = true,
                    _ => self.q.insert(i, (offset, true)),
                }
            }
            _ => self.q.push_back((offset, true)),
        }
    }

    fn remove(&mut self, offset: i64) {
        let i = self.q.partition_point(|&(o, _)| o < offset);
        if let Some(e) = self.q.get_mut(i)
            && e.0 == offset
        {
            e.1 = false;
        }
        while self.q.front().is_some_and(|&(_, pinned)| !pinned) {
            self.q.pop_front();
        }
    }

    fn first(&self) -> Option<i64> {
        self.q.front().map(|&(o, _)| o)
    }
}

/// Release order of a pending trigger: (event time, input, offset).
type PendingKey = (i64, InputKind, i64);

/// Pending triggers, released in [`PendingKey`] order: a min-heap of keys over a slab.
///
/// Only two operations are needed, insert and take-the-least; a `BTreeMap<PendingKey,
/// Pending>` did both in O(log n) but moved ~150-byte entries within its nodes and allocated
/// a node on every split (its insert was 6 % of join-predict's CPU). The heap moves 24-byte
/// key/slot pairs, and an insert in event-time order, the common case, stops at the first
/// comparison. Keys are unique: one per input record (an SX/SY offset, or a triple's FA
/// offset), and repeats are filtered before a trigger is made.
#[derive(Debug, Default)]
struct PendingQueue {
    heap: BinaryHeap<Reverse<(PendingKey, u32)>>,
    slab: Vec<Option<Pending>>,
    free: Vec<u32>,
}

impl PendingQueue {
    fn insert(&mut self, key: PendingKey, p: Pending) {
        let slot = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(p);
                i
            }
            None => {
                self.slab.push(Some(p));
                #[allow(clippy::cast_possible_truncation)]
                let i = (self.slab.len() - 1) as u32;
                i
            }
        };
        self.heap.push(Reverse((key, slot)));
    }

    /// The least pending trigger if its event time is below `w`, removed.
    fn pop_below(&mut self, w: i64) -> Option<(PendingKey, Pending)> {
        let &Reverse((key, slot)) = self.heap.peek()?;
        if key.0 >= w {
            return None;
        }
        self.heap.pop();
        self.free.push(slot);
        #[allow(clippy::expect_used)]
        let p = self.slab[slot as usize]
            .take()
            .expect("a slot in the heap holds its trigger");
        Some((key, p))
    }

    fn len(&self) -> usize {
        self.heap.len()
    }
}

#[derive(Debug, Clone)]
struct Partial {
    client: Arc<str>,
    bins: [Option<u32>; 3],
    offsets: [Option<i64>; 3],
    ingest_time_ms: i64,
    replay: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Clock {
    max_t: Option<i64>,
    last_ms: i64,
}

/// Size of the join state of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinStats {
    /// Clients with state.
    pub clients: usize,
    /// As-of values held (SX, SY, triples).
    pub values: usize,
    /// Triggers waiting for the watermark.
    pub pending: usize,
    /// Incomplete triples.
    pub partials: usize,
    /// Approximate heap bytes.
    pub bytes: usize,
}

/// How many applied records between sweeps for idle clients.
const SWEEP_EVERY: u32 = 4096;

/// The SZ source offsets of one feature kind and SZ partition the join has handled: the
/// largest, and the gaps below it (offsets passed over when a later one came first).
///
/// Each feature topic carries one SZ partition's features in source order, so an offset at
/// or below the largest is normally a repeat (the window-processor re-emits after a restart).
/// Not always: a record the producer could not deliver is sent again after later ones, and an
/// upstream restart re-emits it after them. Such a feature fills a gap and is taken (or routed
/// as late): it is never dropped as a repeat. A gap is forgotten once the event time of the
/// feature that passed over it falls below the state's horizon (`W − 2S`, like evicted
/// clients); offsets skipped for good (late or dead-lettered SZ readings, transaction
/// markers) cost one entry until then.
#[derive(Debug, Default, Clone)]
struct SeenOffsets {
    max: Option<i64>,
    /// First offset of a gap → (end of the gap, exclusive; event time of the feature that
    /// passed over it).
    gaps: BTreeMap<i64, (i64, i64)>,
}

impl SeenOffsets {
    /// The gap holding `offset`: (its first offset, end, event time).
    fn gap(&self, offset: i64) -> Option<(i64, i64, i64)> {
        self.gaps
            .range(..=offset)
            .next_back()
            .filter(|(_, (end, _))| offset < *end)
            .map(|(&start, &(end, t))| (start, end, t))
    }

    /// True when the feature at `offset` was handled before: a repeat.
    fn contains(&self, offset: i64) -> bool {
        self.max
            .is_some_and(|max| offset <= max && self.gap(offset).is_none())
    }

    /// Records the feature at `offset` (event time `t`) as handled.
    fn insert(&mut self, offset: i64, t: i64) {
        match self.max {
            None => self.max = Some(offset),
            Some(max) if offset > max => {
                let next = max.saturating_add(1);
                if offset > next {
                    self.gaps.insert(next, (offset, t));
                }
                self.max = Some(offset);
            }
            Some(_) => {
                if let Some((start, end, gt)) = self.gap(offset) {
                    self.gaps.remove(&start);
                    if start < offset {
                        self.gaps.insert(start, (offset, gt));
                    }
                    let after = offset.saturating_add(1);
                    if after < end {
                        self.gaps.insert(after, (end, gt));
                    }
                }
            }
        }
    }

    /// Forgets the gaps passed over at event times below `horizon`.
    fn prune(&mut self, horizon: i64) {
        self.gaps.retain(|_, (_, t)| *t >= horizon);
    }
}

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
        self.clocks[kind.idx()].last_ms = now_ms;
        // A repeat first: a feature re-emitted after an upstream restart is below the
        // watermark by then, and it is a repeat, not late data.
        if let JoinInput::Feature { source, .. } = input
            && self.seen[kind.idx() - 2]
                .get(&source.partition)
                .is_some_and(|seen| seen.contains(source.offset))
        {
            return Applied::Duplicate;
        }
        if let JoinInput::Feature { source, .. } = input {
            // Handled from here on (taken, or routed as late): a later copy is a repeat.
            self.seen[kind.idx() - 2]
                .entry(source.partition)
                .or_default()
                .insert(source.offset, t);
        }
        if t < self.watermark {
            self.advance(now_ms, out);
            return Applied::Late {
                watermark: self.watermark,
            };
        }
        let clock = &mut self.clocks[kind.idx()];
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
                    tie: (0, offset),
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
                        tie: (source.partition, source.offset),
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
            to.is_some_and(|to| now_ms.saturating_sub(c.last_ms) >= to)
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
                tie: (0, 0),
                v: p.value,
            }),
            _ => c.and_then(|c| c.sx.as_of(t)),
        };
        let sy = match p.trigger {
            Trigger::Sy => Some(Entry {
                t,
                tie: (0, 0),
                v: p.value,
            }),
            _ => c.and_then(|c| c.sy.as_of(t)),
        };
        let tr = match p.trigger {
            Trigger::Features => Some(Entry {
                t,
                tie: (p.source.partition, p.source.offset),
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
                triple_source: SzSource {
                    partition: tr.tie.0,
                    offset: tr.tie.1,
                },
                ingest_time_ms: p.ingest_time_ms,
            }),
            (verdict, ..) => JoinEvent::Skipped {
                client: p.client.clone(),
                trigger: p.trigger,
                event_time_ms: t,
                record,
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

/// One record of the naive reference: its input, offset and content.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefRecord {
    /// The record.
    pub input: JoinInput,
    /// Its offset in its input's partition.
    pub offset: i64,
}

/// A partial or complete triple in the reference: bins and record offsets (FA, FI, FD).
type RefTriple = ([Option<u32>; 3], [Option<i64>; 3]);
/// A trigger in the reference: client, kind, time, record, own value, triple source and bins.
type RefTrigger<'a> = (&'a str, Trigger, i64, RecordRef, i64, SzSource, [u32; 3]);

/// Naive as-of reference over one partition's complete input (no lateness, no idleness, no
/// repeats): every trigger's event by scanning all records. O(n²).
pub fn reference_join(cfg: JoinConfig, records: &[(&str, RefRecord)]) -> Vec<JoinEvent> {
    let s = cfg.max_staleness_ms;
    let mut out = Vec::new();
    // Complete triples: (client, t, source) → bins and FA offset.
    let mut triples: BTreeMap<(&str, i64, SzSource), RefTriple> = BTreeMap::new();
    for &(c, r) in records {
        if let JoinInput::Feature {
            kind,
            bin,
            event_time_ms,
            source,
        } = r.input
        {
            let e = triples.entry((c, event_time_ms, source)).or_default();
            e.0[kind.idx() - 2] = Some(bin);
            e.1[kind.idx() - 2] = Some(r.offset);
        }
    }
    // Latest value of `pick` for client `c` with time ≤ t, by (t, tie).
    let latest_reading = |c: &str, want: InputKind, t: i64| -> Option<(i64, i64)> {
        records
            .iter()
            .filter(|(rc, r)| *rc == c && r.input.kind() == want && r.input.event_time_ms() <= t)
            .map(|(_, r)| match r.input {
                JoinInput::Sx {
                    value,
                    event_time_ms,
                }
                | JoinInput::Sy {
                    value,
                    event_time_ms,
                } => ((event_time_ms, r.offset), value),
                JoinInput::Feature { .. } => ((i64::MIN, 0), 0),
            })
            .max_by_key(|(k, _)| *k)
            .map(|((et, _), v)| (et, v))
    };
    let latest_triple = |c: &str, t: i64| {
        triples
            .iter()
            .filter(|((rc, et, _), (b, _))| *rc == c && *et <= t && b.iter().all(Option::is_some))
            .max_by_key(|((_, et, src), _)| (*et, *src))
            .map(|((_, et, src), (b, _))| (*et, *src, b.map(|x| x.unwrap_or(0))))
    };
    let classify = |e: Option<i64>, t: i64, missing, stale| match e {
        Some(et) if et >= t.saturating_sub(s) => Ok(()),
        Some(et) if et >= t.saturating_sub(2 * s) => Err(stale),
        _ => Err(missing),
    };
    let mut triggers: Vec<RefTrigger<'_>> = Vec::new();
    for &(c, r) in records {
        match r.input {
            JoinInput::Sx {
                value,
                event_time_ms,
            } => triggers.push((
                c,
                Trigger::Sx,
                event_time_ms,
                RecordRef {
                    input: InputKind::Sx,
                    offset: r.offset,
                },
                value,
                SzSource {
                    partition: -1,
                    offset: -1,
                },
                [0; 3],
            )),
            JoinInput::Sy {
                value,
                event_time_ms,
            } => triggers.push((
                c,
                Trigger::Sy,
                event_time_ms,
                RecordRef {
                    input: InputKind::Sy,
                    offset: r.offset,
                },
                value,
                SzSource {
                    partition: -1,
                    offset: -1,
                },
                [0; 3],
            )),
            JoinInput::Feature { .. } => {}
        }
    }
    for ((c, t, src), (b, o)) in &triples {
        match (b, o[0]) {
            ([Some(a), Some(i), Some(d)], Some(fa)) => triggers.push((
                c,
                Trigger::Features,
                *t,
                RecordRef {
                    input: InputKind::Fa,
                    offset: fa,
                },
                0,
                *src,
                [*a, *i, *d],
            )),
            _ => out.push(JoinEvent::IncompleteTriple {
                client: (*c).into(),
                event_time_ms: *t,
                source: *src,
                present: o
                    .iter()
                    .zip([InputKind::Fa, InputKind::Fi, InputKind::Fd])
                    .filter_map(|(o, input)| o.map(|offset| RecordRef { input, offset }))
                    .collect(),
            }),
        }
    }
    for (c, trig, t, record, value, src, bins) in triggers {
        let sx = if trig == Trigger::Sx {
            Some((t, value))
        } else {
            latest_reading(c, InputKind::Sx, t)
        };
        let sy = if trig == Trigger::Sy {
            Some((t, value))
        } else {
            latest_reading(c, InputKind::Sy, t)
        };
        let tr = if trig == Trigger::Features {
            Some((t, src, bins))
        } else {
            latest_triple(c, t)
        };
        let verdict = classify(
            sx.map(|x| x.0),
            t,
            SkipReason::MissingSx,
            SkipReason::StaleSx,
        )
        .and_then(|()| {
            classify(
                sy.map(|x| x.0),
                t,
                SkipReason::MissingSy,
                SkipReason::StaleSy,
            )
        })
        .and_then(|()| {
            classify(
                tr.map(|x| x.0),
                t,
                SkipReason::MissingFeatures,
                SkipReason::StaleFeatures,
            )
        });
        let ingest = 0;
        out.push(match (verdict, sx, sy, tr) {
            (Ok(()), Some(sx), Some(sy), Some(tr)) => JoinEvent::Prediction(JoinOutput {
                client: c.into(),
                vector: [
                    sx.1,
                    sy.1,
                    i64::from(tr.2[0]),
                    i64::from(tr.2[1]),
                    i64::from(tr.2[2]),
                ],
                trigger: trig,
                event_time_ms: t,
                record,
                triple_source: tr.1,
                ingest_time_ms: ingest,
            }),
            (v, ..) => JoinEvent::Skipped {
                client: c.into(),
                trigger: trig,
                event_time_ms: t,
                record,
                reason: v.err().unwrap_or(SkipReason::MissingSx),
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const NOW: i64 = 0;

    fn cfg(grace: i64, stale: i64) -> JoinConfig {
        JoinConfig {
            grace_ms: grace,
            max_staleness_ms: stale,
            idle_timeout_ms: None,
            input_idle_timeout_ms: None,
        }
    }

    fn sx(v: i64, t: i64) -> JoinInput {
        JoinInput::Sx {
            value: v,
            event_time_ms: t,
        }
    }
    fn sy(v: i64, t: i64) -> JoinInput {
        JoinInput::Sy {
            value: v,
            event_time_ms: t,
        }
    }
    fn feat(kind: InputKind, bin: u32, t: i64, sz_offset: i64) -> JoinInput {
        JoinInput::Feature {
            kind,
            bin,
            event_time_ms: t,
            source: SzSource {
                partition: 0,
                offset: sz_offset,
            },
        }
    }

    /// Applies then flushes with every input idle (the end of a stream).
    fn run(j: &mut PartitionJoin, recs: &[(&str, JoinInput, i64)]) -> Vec<JoinEvent> {
        let mut out = Vec::new();
        for &(c, i, o) in recs {
            j.apply(c, i, o, 0, false, NOW, &mut out);
        }
        out
    }

    fn flush(j: &mut PartitionJoin) -> Vec<JoinEvent> {
        let mut out = Vec::new();
        j.cfg.idle_timeout_ms = Some(1);
        j.advance(i64::MAX, &mut out);
        out
    }

    fn vectors(ev: &[JoinEvent]) -> Vec<(Trigger, i64, [i64; 5])> {
        ev.iter()
            .filter_map(|e| match e {
                JoinEvent::Prediction(p) => Some((p.trigger, p.event_time_ms, p.vector)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn future_values_are_never_used() {
        let mut j = PartitionJoin::new(cfg(0, 600_000), NOW);
        // The whole day's SX/SY is read before the first features exist.
        let mut recs = vec![];
        for k in 0..5 {
            recs.push(("c", sx(10 + k, k * 60_000), k));
            recs.push(("c", sy(20 + k, k * 60_000), k));
        }
        for k in 0..5 {
            for (kind, b) in [(InputKind::Fa, 1), (InputKind::Fi, 2), (InputKind::Fd, 3)] {
                recs.push(("c", feat(kind, b + k as u32, k * 60_000, 100 + k), k));
            }
        }
        let mut ev = run(&mut j, &recs);
        ev.extend(flush(&mut j));
        let v = vectors(&ev);
        assert_eq!(v.len(), 15, "{ev:?}");
        for (trig, t, vec) in v {
            let k = t / 60_000;
            assert_eq!(
                vec,
                [10 + k, 20 + k, 1 + k, 2 + k, 3 + k],
                "{trig:?} at {t}"
            );
        }
    }

    #[test]
    fn emission_waits_for_the_watermark() {
        let mut j = PartitionJoin::new(cfg(0, 600_000), NOW);
        let mut out = vec![];
        j.apply("c", sx(1, 1000), 0, 0, false, NOW, &mut out);
        j.apply("c", sy(2, 1000), 0, 0, false, NOW, &mut out);
        for k in [InputKind::Fa, InputKind::Fi, InputKind::Fd] {
            j.apply("c", feat(k, 5, 1000, 0), 0, 0, false, NOW, &mut out);
        }
        assert!(out.is_empty(), "W = 1000 does not pass t = 1000");
        assert_eq!(j.commit_limit(InputKind::Sx), Some(0));
        for (i, k) in InputKind::ALL.into_iter().enumerate() {
            let rec = match k {
                InputKind::Sx => sx(1, 2000),
                InputKind::Sy => sy(2, 2000),
                _ => feat(k, 5, 2000, 1),
            };
            j.apply("c", rec, 1, 0, false, NOW, &mut out);
            assert_eq!(out.is_empty(), i < 4);
        }
        assert_eq!(out.len(), 3, "SX, SY and the triple at 1000");
        assert_eq!(j.commit_limit(InputKind::Sx), Some(1));
        // Late: below the watermark.
        assert_eq!(
            j.apply("c", sx(1, 1999), 2, 0, false, NOW, &mut out),
            Applied::Late { watermark: 2000 }
        );
    }

    #[test]
    fn missing_stale_incomplete_and_duplicates() {
        let mut j = PartitionJoin::new(cfg(0, 1000), NOW);
        let mut ev = run(
            &mut j,
            &[
                ("c", sx(1, 0), 0),
                ("c", sy(2, 1500), 0),
                ("c", feat(InputKind::Fa, 1, 1500, 7), 0),
                ("c", feat(InputKind::Fi, 1, 1500, 7), 0),
                ("c", feat(InputKind::Fi, 1, 1500, 7), 1),
                ("c", feat(InputKind::Fa, 1, 1600, 8), 1),
                ("c", sx(1, 5000), 1),
            ],
        );
        assert_eq!(
            j.apply(
                "c",
                feat(InputKind::Fa, 1, 1500, 7),
                9,
                0,
                false,
                NOW,
                &mut ev
            ),
            Applied::Duplicate
        );
        ev.extend(flush(&mut j));
        let reasons: Vec<_> = ev
            .iter()
            .map(|e| match e {
                JoinEvent::Skipped {
                    reason,
                    event_time_ms,
                    ..
                } => format!("{}@{event_time_ms}", reason.code()),
                JoinEvent::IncompleteTriple { source, .. } => {
                    format!("incomplete-{}", source.offset)
                }
                JoinEvent::Prediction(p) => format!("prediction@{}", p.event_time_ms),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                "incomplete-7",
                "incomplete-8",
                "missing-sy@0",
                "stale-sx@1500",
                "missing-sy@5000"
            ]
        );
        assert_eq!(InputKind::ALL.map(|k| j.commit_limit(k)), [None; 5]);
    }

    #[test]
    fn a_feature_that_arrives_after_a_later_one_is_taken_not_dropped_as_a_repeat() {
        let mut j = PartitionJoin::new(cfg(0, 600_000), NOW);
        let mut ev = run(&mut j, &[("c", sx(1, 100), 0), ("c", sy(2, 100), 0)]);
        // SZ offset 3's features, then offset 5's before offset 4's (its delivery was retried).
        for kind in [InputKind::Fa, InputKind::Fi, InputKind::Fd] {
            ev.extend(run(
                &mut j,
                &[
                    ("c", feat(kind, 2, 50, 3), 3),
                    ("c", feat(kind, 3, 200, 5), 5),
                ],
            ));
        }
        for kind in [InputKind::Fa, InputKind::Fi, InputKind::Fd] {
            let mut out = vec![];
            let a = j.apply("c", feat(kind, 4, 100, 4), 4, 0, false, NOW, &mut out);
            assert_eq!(a, Applied::Accepted, "{kind:?} of SZ offset 4");
            ev.extend(out);
        }
        ev.extend(run(&mut j, &[("c", sx(1, 200), 1), ("c", sy(2, 200), 1)]));
        // A copy of either is a repeat.
        for o in [4, 5] {
            let mut out = vec![];
            let a = j.apply(
                "c",
                feat(InputKind::Fa, 4, 100, o),
                9,
                0,
                false,
                NOW,
                &mut out,
            );
            assert_eq!(a, Applied::Duplicate, "FA of SZ offset {o} again");
        }
        ev.extend(flush(&mut j));
        let mut got = vectors(&ev);
        got.sort_by_key(|(_, t, v)| (*t, *v));
        // Each triple is the as-of one of its time: offset 4's at 100, offset 5's at 200.
        assert!(
            got.iter()
                .all(|(_, t, v)| v[2..] == if *t == 100 { [4; 3] } else { [3; 3] }),
            "{got:?}"
        );
        assert_eq!(
            got.len(),
            6,
            "SX, SY and the triple at 100 and at 200: {got:?}"
        );
    }

    #[test]
    fn a_feature_that_arrives_after_the_watermark_passed_its_time_is_late_not_a_repeat() {
        let mut j = PartitionJoin::new(cfg(0, 600_000), NOW);
        let mut ev = run(&mut j, &[("c", sx(1, 300), 0), ("c", sy(2, 300), 0)]);
        for kind in [InputKind::Fa, InputKind::Fi, InputKind::Fd] {
            ev.extend(run(
                &mut j,
                &[
                    ("c", feat(kind, 2, 50, 3), 3),
                    ("c", feat(kind, 3, 300, 5), 5),
                ],
            ));
        }
        assert!(j.watermark() > 100);
        let a = j.apply(
            "c",
            feat(InputKind::Fa, 4, 100, 4),
            4,
            0,
            false,
            NOW,
            &mut ev,
        );
        assert!(matches!(a, Applied::Late { .. }), "{a:?}");
        // Routed once; a copy of it is a repeat.
        let a = j.apply(
            "c",
            feat(InputKind::Fa, 4, 100, 4),
            6,
            0,
            false,
            NOW,
            &mut ev,
        );
        assert_eq!(a, Applied::Duplicate);
    }

    #[test]
    fn idle_inputs_release_the_tail() {
        let mut j = PartitionJoin::new(
            JoinConfig {
                idle_timeout_ms: Some(5_000),
                ..cfg(0, 600_000)
            },
            0,
        );
        let mut out = vec![];
        j.apply("c", sx(1, 100), 0, 0, false, 1_000, &mut out);
        j.apply("c", sy(1, 100), 0, 0, false, 1_000, &mut out);
        j.advance(5_999, &mut out);
        assert!(out.is_empty());
        // FA/FI/FD never had a record: idle since 0; SX/SY idle since 1 000.
        j.advance(6_000, &mut out);
        assert_eq!(j.watermark(), 101);
        assert_eq!(out.len(), 2, "{out:?}");
    }

    /// A join with grace 0, a 10-minute window, the all-quiet release after 5 s and one
    /// input's own idle timeout of 60 s (the idle-rule tests' setting).
    fn idle_5s_input_60s() -> PartitionJoin {
        PartitionJoin::new(
            JoinConfig {
                idle_timeout_ms: Some(5_000),
                input_idle_timeout_ms: Some(60_000),
                ..cfg(0, 600_000)
            },
            0,
        )
    }

    /// A rebuild at wall time 0 replays SX and SY at t = 100 (the features lag: none yet);
    /// live consumption starts 30 s later, after the rebuild, when `restart` says so.
    fn rebuilt_30s_ago(restart: bool) -> (PartitionJoin, Vec<JoinEvent>) {
        let mut j = idle_5s_input_60s();
        let mut out = vec![];
        j.apply("c", sx(1, 100), 0, 0, true, 0, &mut out);
        j.apply("c", sy(1, 100), 0, 0, true, 0, &mut out);
        if restart {
            j.restart_idle_clocks(30_000);
        }
        j.advance(30_001, &mut out);
        (j, out)
    }

    #[test]
    fn a_rebuild_longer_than_the_idle_timeout_does_not_make_the_inputs_idle() {
        // Without the restart, the 30 s rebuild reads as 30 s of all-quiet inputs: the
        // watermark jumps past t = 100 and the lagging features for t = 100 are late.
        let (mut stale, mut out) = rebuilt_30s_ago(false);
        assert_eq!(stale.watermark(), 101);
        let a = stale.apply(
            "c",
            feat(InputKind::Fa, 1, 100, 0),
            0,
            0,
            false,
            30_002,
            &mut out,
        );
        assert!(matches!(a, Applied::Late { .. }), "{a:?}");
        // With it, silence counts from 30 s: the features are taken and complete the triple.
        let (mut j, mut out) = rebuilt_30s_ago(true);
        assert_eq!(j.watermark(), i64::MIN);
        for kind in [InputKind::Fa, InputKind::Fi, InputKind::Fd] {
            let a = j.apply("c", feat(kind, 1, 100, 0), 0, 0, false, 30_002, &mut out);
            assert_eq!(a, Applied::Accepted);
        }
        j.advance(35_002, &mut out);
        assert_eq!(
            out.len(),
            1,
            "the triple's own prediction (SX/SY were replayed): {out:?}"
        );
        assert!(matches!(out[0], JoinEvent::Prediction { .. }), "{out:?}");
    }

    fn with_upstream_backlog() -> (PartitionJoin, Vec<JoinEvent>) {
        let mut j = idle_5s_input_60s();
        let mut out = vec![];
        j.apply("c", sx(1, 100), 0, 0, false, 1_000, &mut out);
        j.apply("c", sy(1, 100), 0, 0, false, 1_000, &mut out);
        j.set_upstream_backlog(true);
        (j, out)
    }

    #[test]
    fn an_upstream_backlog_holds_the_tail_until_the_input_idle_timeout() {
        let (mut j, mut out) = with_upstream_backlog();
        // All five quiet for 10 s, but the window-processor still has SZ to read: its
        // features for t = 100 may come, so the SX/SY triggers wait.
        j.advance(11_000, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(j.watermark(), i64::MIN);
        // Its features arrive; the backlog clears; the ordinary all-quiet rule applies again.
        for kind in [InputKind::Fa, InputKind::Fi, InputKind::Fd] {
            j.apply("c", feat(kind, 1, 100, 0), 0, 0, false, 12_000, &mut out);
        }
        j.set_upstream_backlog(false);
        j.advance(16_999, &mut out);
        assert!(out.is_empty(), "{out:?}");
        j.advance(17_000, &mut out);
        assert_eq!(
            out.len(),
            3,
            "SX, SY and the triple, each with features: {out:?}"
        );
        assert!(
            out.iter()
                .all(|e| matches!(e, JoinEvent::Prediction { .. })),
            "{out:?}"
        );
    }

    #[test]
    fn an_upstream_backlog_holds_no_longer_than_the_input_idle_timeout() {
        let (mut j, mut out) = with_upstream_backlog();
        j.advance(59_999, &mut out);
        assert!(out.is_empty());
        // An upstream that never catches up (stopped for good) holds the tail 60 s, not forever.
        j.advance(60_000, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
    }

    #[test]
    fn an_input_with_records_left_to_read_holds_the_tail_until_the_input_idle_timeout() {
        let mut j = idle_5s_input_60s();
        let mut out = vec![];
        j.apply("c", sx(1, 100), 0, 0, false, 1_000, &mut out);
        for kind in [InputKind::Fa, InputKind::Fi, InputKind::Fd] {
            j.apply("c", feat(kind, 1, 100, 0), 0, 0, false, 1_000, &mut out);
        }
        // SY of this partition is still in the broker: the all-quiet rule must not fire.
        j.set_unread(InputKind::Sy, true);
        j.advance(20_000, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // Its record arrives and is used; then everything is read and the tail is released.
        let a = j.apply("c", sy(2, 100), 0, 0, false, 21_000, &mut out);
        assert_eq!(a, Applied::Accepted);
        j.set_unread(InputKind::Sy, false);
        j.advance(26_000, &mut out);
        let got = vectors(&out);
        assert_eq!(got.len(), 3, "{out:?}");
        assert!(got.iter().all(|(_, _, v)| v[..2] == [1, 2]), "{got:?}");
        // Never read at all: held no longer than the input idle timeout.
        let mut j = idle_5s_input_60s();
        let mut out = vec![];
        j.apply("c", sx(1, 100), 0, 0, false, 1_000, &mut out);
        j.set_unread(InputKind::Sy, true);
        j.advance(59_999, &mut out);
        assert!(out.is_empty(), "{out:?}");
        j.advance(61_000, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
    }

    #[test]
    fn one_lagging_input_holds_the_watermark_until_its_own_timeout() {
        let mut j = idle_5s_input_60s();
        let mut out = vec![];
        // SX and SY stream for 30 s of wall time; the features have not started yet.
        for k in 0..30 {
            j.apply("c", sx(1, k * 1000), k, 0, false, k * 1000, &mut out);
            j.apply("c", sy(1, k * 1000), k, 0, false, k * 1000, &mut out);
        }
        assert!(out.is_empty());
        assert_eq!(j.watermark(), i64::MIN, "the features hold it back");
        // They start: nothing of theirs is late.
        let mut late = 0;
        for (k, kind) in [InputKind::Fa, InputKind::Fi, InputKind::Fd]
            .into_iter()
            .enumerate()
        {
            if j.apply(
                "c",
                feat(kind, 1, 0, 0),
                0,
                0,
                false,
                30_000 + k as i64,
                &mut out,
            ) != Applied::Accepted
            {
                late += 1;
            }
        }
        assert_eq!(late, 0);
        // A feature input silent for 60 s stops holding it back.
        j.advance(100_000, &mut out);
        assert!(j.watermark() > 0);
    }

    #[test]
    fn idle_clients_are_evicted() {
        let mut j = PartitionJoin::new(cfg(0, 10), NOW);
        let mut out = vec![];
        j.apply("old", sx(1, 0), 0, 0, false, NOW, &mut out);
        for k in 1..=SWEEP_EVERY as i64 + 10 {
            for (i, kind) in InputKind::ALL.into_iter().enumerate() {
                let rec = match kind {
                    InputKind::Sx => sx(1, k * 100),
                    InputKind::Sy => sy(1, k * 100),
                    _ => feat(kind, 1, k * 100, k),
                };
                j.apply("new", rec, k * 10 + i as i64, 0, false, NOW, &mut out);
            }
        }
        assert_eq!(j.stats().clients, 1);
        assert!(j.stats().values <= 6, "{:?}", j.stats());
    }

    /// One partition of each input: records of two clients, each input in event-time order
    /// (steps of 0–2 units, so equal times are common); the three features of one SZ reading
    /// share its source, numbered in SZ order; now and then a feature never arrives.
    fn partition() -> impl Strategy<Value = Vec<Vec<(&'static str, JoinInput, i64)>>> {
        let reading = (any::<bool>(), 0i64..3, 0i64..9);
        let sz = (
            any::<bool>(),
            0i64..3,
            [0u32..10, 0u32..10, 0u32..10],
            0u8..12,
        );
        (
            prop::collection::vec(reading.clone(), 0..12),
            prop::collection::vec(reading, 0..12),
            prop::collection::vec(sz, 0..12),
        )
            .prop_map(|(xs, ys, zs)| {
                let u = 1000;
                let name = |b: bool| if b { "a" } else { "b" };
                let readings = |rs: &[(bool, i64, i64)], f: fn(i64, i64) -> JoinInput| {
                    let mut t = 0;
                    rs.iter()
                        .enumerate()
                        .map(|(o, &(c, dt, v))| {
                            t += dt * u;
                            (name(c), f(v, t), o as i64)
                        })
                        .collect::<Vec<_>>()
                };
                let mut f: [Vec<(&'static str, JoinInput, i64)>; 3] = Default::default();
                let mut t = 0;
                for (src, &(c, dt, bins, drop)) in zs.iter().enumerate() {
                    t += dt * u;
                    for slot in 0..3 {
                        if drop as usize != slot + 9 {
                            let kind = [InputKind::Fa, InputKind::Fi, InputKind::Fd][slot];
                            let off = f[slot].len() as i64;
                            f[slot].push((name(c), feat(kind, bins[slot], t, src as i64), off));
                        }
                    }
                }
                let [fa, fi, fd] = f;
                vec![readings(&xs, sx), readings(&ys, sy), fa, fi, fd]
            })
    }

    fn interleave(
        parts: &[Vec<(&'static str, JoinInput, i64)>],
        picks: &[usize],
    ) -> Vec<(&'static str, JoinInput, i64)> {
        let mut at = [0usize; 5];
        let mut out = Vec::new();
        let mut k = 0;
        loop {
            let open: Vec<usize> = (0..5).filter(|&i| at[i] < parts[i].len()).collect();
            if open.is_empty() {
                return out;
            }
            let i = open[picks.get(k).copied().unwrap_or(0) % open.len()];
            k += 1;
            out.push(parts[i][at[i]]);
            at[i] += 1;
        }
    }

    fn sorted(mut v: Vec<JoinEvent>) -> Vec<JoinEvent> {
        v.sort();
        v
    }

    proptest! {
        /// `SeenOffsets` answers "handled before?" exactly like the set of offsets inserted,
        /// for any arrival order, as long as no gap has been pruned.
        #[test]
        fn seen_offsets_match_the_set_of_handled_offsets(
            offsets in prop::collection::vec(0i64..60, 0..80),
            probes in prop::collection::vec(0i64..70, 0..40),
        ) {
            // The first offset handled is the floor: anything below it was handled before the
            // join started (a rebuild starts mid-stream), so the reference starts with 0.
            let mut seen = SeenOffsets::default();
            seen.insert(0, 0);
            let mut naive = BTreeSet::from([0]);
            for &o in &offsets {
                prop_assert_eq!(seen.contains(o), naive.contains(&o), "before inserting {}", o);
                seen.insert(o, 0);
                naive.insert(o);
            }
            for &o in &probes {
                prop_assert_eq!(seen.contains(o), naive.contains(&o), "probe {}", o);
            }
        }
    }

    proptest! {
        /// `PendingQueue` releases what a `BTreeMap` keyed the same way releases, in the same
        /// order, for any mix of inserts (unique keys, any order) and releases below a moving
        /// watermark.
        #[test]
        fn pending_queue_releases_like_an_ordered_map(
            ops in prop::collection::vec(prop_oneof![
                (0i64..50, 0usize..5, 0i64..1000).prop_map(|(t, k, o)| Some((t, k, o))),
                Just(None),
            ], 0..200),
            steps in prop::collection::vec(0i64..8, 0..200),
        ) {
            let mut q = PendingQueue::default();
            let mut naive: BTreeMap<PendingKey, i64> = BTreeMap::new();
            let (mut w, mut steps) = (0i64, steps.into_iter());
            for op in ops {
                match op {
                    Some((t, k, o)) => {
                        let key = (t, InputKind::ALL[k], o);
                        if naive.contains_key(&key) {
                            continue;
                        }
                        naive.insert(key, o);
                        q.insert(key, pending_with_value(o));
                    }
                    None => {
                        w += steps.next().unwrap_or(1);
                        let mut got = Vec::new();
                        while let Some((key, p)) = q.pop_below(w) {
                            got.push((key, p.value));
                        }
                        let mut want = Vec::new();
                        while let Some(e) = naive.first_entry() {
                            if e.key().0 >= w {
                                break;
                            }
                            want.push(e.remove_entry());
                        }
                        prop_assert_eq!(got, want);
                        prop_assert_eq!(q.len(), naive.len());
                    }
                }
            }
        }
    }

    proptest! {
        /// `PinnedOffsets` answers like a `BTreeSet<i64>` for any mix of inserts (mostly in
        /// order, some not, some repeated) and removals (present or not).
        #[test]
        fn pinned_offsets_behave_like_an_ordered_set(
            ops in prop::collection::vec(prop_oneof![
                3 => (0i64..4).prop_map(|d| (true, d)),
                1 => (0i64..40).prop_map(|o| (true, -1 - o)),
                3 => (0i64..40).prop_map(|o| (false, o)),
            ], 0..300),
        ) {
            let mut pinned = PinnedOffsets::default();
            let mut naive = BTreeSet::new();
            let mut next = 0i64;
            for (insert, x) in ops {
                if insert {
                    // x ≥ 0: the next offset in order (x apart); x < 0: an earlier one.
                    let o = if x >= 0 { next += x; next } else { (next + 1 + x).max(0) };
                    pinned.insert(o);
                    naive.insert(o);
                } else {
                    pinned.remove(x);
                    naive.remove(&x);
                }
                prop_assert_eq!(pinned.first(), naive.first().copied());
            }
            for o in naive.clone() {
                pinned.remove(o);
                naive.remove(&o);
                prop_assert_eq!(pinned.first(), naive.first().copied());
            }
            prop_assert!(pinned.q.is_empty());
        }
    }

    fn pending_with_value(value: i64) -> Pending {
        Pending {
            client: "c".into(),
            trigger: Trigger::Sx,
            value,
            bins: [0; 3],
            source: SzSource {
                partition: -1,
                offset: -1,
            },
            records: [None; 3],
            ingest_time_ms: 0,
            replay: false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Every interleaving that keeps each input partition's order gives the same multiset
        /// of events, equal to the naive as-of reference.
        #[test]
        fn every_interleaving_gives_the_reference(
            parts in partition(),
            orders in prop::collection::vec(prop::collection::vec(0usize..5, 0..120), 1..6),
            stale in prop_oneof![Just(1000i64), Just(2500), Just(1_000_000)],
        ) {
            let c = cfg(0, stale);
            let all: Vec<(&str, RefRecord)> = parts
                .iter()
                .flatten()
                .map(|&(cl, input, offset)| (cl, RefRecord { input, offset }))
                .collect();
            let want = sorted(reference_join(c, &all));
            for picks in &orders {
                let seq = interleave(&parts, picks);
                let mut j = PartitionJoin::new(c, NOW);
                let mut got = run(&mut j, &seq);
                got.extend(flush(&mut j));
                prop_assert_eq!(sorted(got), want.clone());
                prop_assert_eq!(InputKind::ALL.map(|k| j.commit_limit(k)), [None; 5]);
            }
        }

        /// A crash after any prefix, then a rebuild that replays (silently, in event-time
        /// order) every record below the commit limits and re-consumes the rest: together with
        /// what was emitted before the crash, exactly the uninterrupted run's events.
        #[test]
        fn crash_rebuild_resume_repeats_exactly(parts in partition(), picks in prop::collection::vec(0usize..5, 0..120), cut in 0usize..60) {
            let c = cfg(0, 1_000_000);
            let seq = interleave(&parts, &picks);
            let mut j = PartitionJoin::new(c, NOW);
            let mut full = run(&mut j, &seq);
            full.extend(flush(&mut j));
            let cut = cut.min(seq.len());
            let mut first = PartitionJoin::new(c, NOW);
            let before = run(&mut first, &seq[..cut]);
            // Commit points: the limit, or everything consumed.
            let committed: Vec<i64> = InputKind::ALL
                .iter()
                .map(|&k| {
                    first.commit_limit(k).unwrap_or_else(|| {
                        seq[..cut]
                            .iter()
                            .filter(|(_, r, _)| r.kind() == k)
                            .map(|(_, _, o)| o + 1)
                            .max()
                            .unwrap_or(0)
                    })
                })
                .collect();
            let below = |r: &JoinInput, o: i64| o < committed[r.kind().idx()];
            let mut replayed: Vec<_> = parts.iter().flatten().filter(|(_, r, o)| below(r, *o)).copied().collect();
            replayed.sort_by_key(|(_, r, _)| r.event_time_ms());
            let mut k = PartitionJoin::new(c, NOW);
            let mut after = Vec::new();
            for &(cl, r, o) in &replayed {
                k.apply(cl, r, o, 0, true, NOW, &mut after);
            }
            prop_assert!(after.is_empty());
            for &(cl, r, o) in seq.iter().filter(|(_, r, o)| !below(r, *o)) {
                k.apply(cl, r, o, 0, false, NOW, &mut after);
            }
            after.extend(flush(&mut k));
            let full_set: BTreeSet<_> = full.iter().cloned().collect();
            for e in &after {
                prop_assert!(full_set.contains(e), "{:?} not in the uninterrupted run", e);
            }
            let union: BTreeSet<_> = before.into_iter().chain(after).collect();
            prop_assert_eq!(union, full_set);
        }
    }
}
