//! The per-partition state behind [`super::PartitionJoin`]: as-of stores per client, pending
//! triggers ordered by event time, the offsets they pin, partial triples, input clocks and
//! the SZ source offsets already handled.

use super::types::*;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

/// A timestamped value in an as-of store, ordered by `(t, tie)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry<V> {
    pub(super) t: i64,
    pub(super) tie: (i32, i64, u32),
    pub(super) v: V,
}

/// Values of one input of one client, sorted by `(t, tie)`.
#[derive(Debug, Clone)]
pub(super) struct Store<V>(pub(super) Vec<Entry<V>>);

impl<V: Copy> Default for Store<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V: Copy> Store<V> {
    pub(super) fn insert(&mut self, e: Entry<V>) {
        let at = self.0.partition_point(|x| (x.t, x.tie) <= (e.t, e.tie));
        self.0.insert(at, e);
    }

    /// Latest with `t ≤ at`.
    pub(super) fn as_of(&self, at: i64) -> Option<Entry<V>> {
        let i = self.0.partition_point(|x| x.t <= at);
        i.checked_sub(1).map(|i| self.0[i])
    }

    /// Keeps values `≥ w` and the latest below `w` unless it is older than `horizon`.
    pub(super) fn prune(&mut self, w: i64, horizon: i64) {
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

    pub(super) fn newest(&self) -> Option<i64> {
        self.0.last().map(|e| e.t)
    }
}

#[derive(Debug, Default)]
pub(super) struct ClientJoin {
    /// The client id, shared by its pending triggers, partial triples and join events (one
    /// allocation per client, not one per trigger).
    pub(super) id: Arc<str>,
    pub(super) sx: Store<i64>,
    pub(super) sy: Store<i64>,
    pub(super) triples: Store<[u32; 3]>,
    /// Pending triggers and partial triples of this client.
    pub(super) open: u32,
}

impl ClientJoin {
    pub(super) fn prune(&mut self, w: i64, horizon: i64) {
        self.sx.prune(w, horizon);
        self.sy.prune(w, horizon);
        self.triples.prune(w, horizon);
    }

    pub(super) fn values(&self) -> usize {
        self.sx.0.len() + self.sy.0.len() + self.triples.0.len()
    }
}

#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) client: Arc<str>,
    pub(super) trigger: Trigger,
    /// SX/SY value, or the triple's bins.
    pub(super) value: i64,
    pub(super) bins: [u32; 3],
    pub(super) source: SzSource,
    /// Every record whose offset this trigger pins (1 for SX/SY, 3 for a triple).
    pub(super) records: [Option<RecordRef>; 3],
    pub(super) ingest_time_ms: i64,
    pub(super) replay: bool,
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
pub(super) struct PinnedOffsets {
    /// Sorted, unique offsets, each with whether it is still pinned; the front is pinned.
    pub(super) q: VecDeque<(i64, bool)>,
}

impl PinnedOffsets {
    pub(super) fn insert(&mut self, offset: i64) {
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

    pub(super) fn remove(&mut self, offset: i64) {
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

    pub(super) fn first(&self) -> Option<i64> {
        self.q.front().map(|&(o, _)| o)
    }
}

/// Release order of a pending trigger: (event time, input, offset).
pub(super) type PendingKey = (i64, InputKind, i64);

/// Pending triggers, released in [`PendingKey`] order: a min-heap of keys over a slab.
///
/// Only two operations are needed, insert and take-the-least; a `BTreeMap<PendingKey,
/// Pending>` did both in O(log n) but moved ~150-byte entries within its nodes and allocated
/// a node on every split (its insert was 6 % of join-predict's CPU). The heap moves 24-byte
/// key/slot pairs, and an insert in event-time order, the common case, stops at the first
/// comparison. Keys are unique: one per input record (an SX/SY offset, or a triple's FA
/// offset), and repeats are filtered before a trigger is made.
#[derive(Debug, Default)]
pub(super) struct PendingQueue {
    pub(super) heap: BinaryHeap<Reverse<(PendingKey, u32)>>,
    pub(super) slab: Vec<Option<Pending>>,
    pub(super) free: Vec<u32>,
}

impl PendingQueue {
    pub(super) fn insert(&mut self, key: PendingKey, p: Pending) {
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
    pub(super) fn pop_below(&mut self, w: i64) -> Option<(PendingKey, Pending)> {
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

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[derive(Debug, Clone)]
pub(super) struct Partial {
    pub(super) client: Arc<str>,
    pub(super) bins: [Option<u32>; 3],
    pub(super) offsets: [Option<i64>; 3],
    pub(super) ingest_time_ms: i64,
    pub(super) replay: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Clock {
    pub(super) max_t: Option<i64>,
    pub(super) last_ms: i64,
    /// The runtime paused fetching this input: never idle meanwhile.
    pub(super) paused: bool,
}

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
/// markers) cost one entry until then. "Offsets" here are [`super::SzSource::seq`]: the SZ
/// offset with the emission's index, so the several triples one SZ reading emits (hopping
/// windows, final emissions) are told apart and kept in order.
#[derive(Debug, Default, Clone)]
pub(super) struct SeenOffsets {
    pub(super) max: Option<i128>,
    /// First offset of a gap → (end of the gap, exclusive; event time of the feature that
    /// passed over it).
    pub(super) gaps: BTreeMap<i128, (i128, i64)>,
}

impl SeenOffsets {
    /// The gap holding `offset`: (its first offset, end, event time).
    pub(super) fn gap(&self, offset: i128) -> Option<(i128, i128, i64)> {
        self.gaps
            .range(..=offset)
            .next_back()
            .filter(|(_, (end, _))| offset < *end)
            .map(|(&start, &(end, t))| (start, end, t))
    }

    /// True when the feature at `offset` was handled before: a repeat.
    pub(super) fn contains(&self, offset: i128) -> bool {
        self.max
            .is_some_and(|max| offset <= max && self.gap(offset).is_none())
    }

    /// Records the feature at `offset` (event time `t`) as handled.
    pub(super) fn insert(&mut self, offset: i128, t: i64) {
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
    pub(super) fn prune(&mut self, horizon: i64) {
        self.gaps.retain(|_, (_, t)| *t >= horizon);
    }
}
