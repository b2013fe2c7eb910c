//! Outcomes released in offset order per input partition: [`Outbox`].
//!
//! The join commits each input partition up to its first *pinned* offset (the oldest record
//! whose trigger waits for the watermark), but the watermark releases triggers in event-time
//! order, and a partition out of event-time order (clock jitter) has later offsets released
//! first. Produced at once, their outcomes would lie above the commit point, and a restart or
//! rebalance, which re-reads from the commit point, would produce them again (a duplicate
//! even in ExactlyOnce) or route them late.
//!
//! The outbox holds an outcome until, in each input it belongs to, no pinned offset lies
//! below its record. Then, per input partition, the records with an outcome out are exactly
//! those below the commit point, save the records of a triple still held by another input
//! (whose commit point in turn stays below the triple's record there: after a restart that
//! record is read live, the triple is formed again and its outcome produced once):
//!
//! ```text
//!   offsets of SX/0:   … 40 41 42 43 44 45 …        released (event time < W): 40 41 43 45
//!   pinned:                     42    44            commit point: 42
//!   outcomes produced:    40 41                     43 and 45 held until 42 and 44 are released
//! ```
//!
//! Pure: the caller passes each input's commit limit ([`super::PartitionJoin::commit_limit`]).

use super::types::{InputKind, RecordRef};
use std::collections::{BTreeMap, BTreeSet};

/// Outcomes (`T`: an output record, a join event) held until the records they belong to are
/// clear of their inputs' commit limits.
#[derive(Debug)]
pub struct Outbox<T> {
    /// Held outcomes by arrival number, with the records each belongs to.
    held: BTreeMap<u64, (Vec<RecordRef>, T)>,
    /// Per input: (offset, arrival number) of every held outcome's record of that input.
    by_input: [BTreeSet<(i64, u64)>; 5],
    next: u64,
    /// The limits under which everything held was last found not clear (set by
    /// [`Outbox::drain`], kept by an [`Outbox::offer`] under the same limits): while they stay
    /// the same, nothing held can be ready, and the drain is skipped.
    drained_at: Option<[Option<i64>; 5]>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self {
            held: BTreeMap::new(),
            by_input: Default::default(),
            next: 0,
            drained_at: None,
        }
    }
}

/// True when `r` is below its input's commit limit (`None`: nothing pinned).
fn clear(r: &RecordRef, limit: &impl Fn(InputKind) -> Option<i64>) -> bool {
    limit(r.input).is_none_or(|l| r.offset < l)
}

impl<T> Outbox<T> {
    /// Outcomes held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The outcome `item` of `records` (1 to 3 records, e.g. `JoinEvent::records()` flattened;
    /// none: released at once): pushed on `out` when every record is clear of its input's
    /// `limit`, else held for [`Outbox::drain`].
    pub fn offer(
        &mut self,
        records: impl IntoIterator<Item = RecordRef, IntoIter: Clone>,
        item: T,
        limit: impl Fn(InputKind) -> Option<i64>,
        out: &mut Vec<T>,
    ) {
        let records = records.into_iter();
        if records.clone().all(|r| clear(&r, &limit)) {
            out.push(item);
            return;
        }
        // Held under these limits: the drain may skip them only while they stay the same.
        if self.drained_at != Some(InputKind::ALL.map(&limit)) {
            self.drained_at = None;
        }
        let id = self.next;
        self.next += 1;
        for r in records.clone() {
            self.by_input[r.input as usize].insert((r.offset, id));
        }
        self.held.insert(id, (records.collect(), item));
    }

    /// Pushes on `out`, in the order they were offered, the held outcomes whose records are
    /// all clear of their inputs' `limit` now.
    pub fn drain(&mut self, limit: impl Fn(InputKind) -> Option<i64>, out: &mut Vec<T>) {
        let limits = InputKind::ALL.map(&limit);
        if self.held.is_empty() || self.drained_at == Some(limits) {
            self.drained_at = Some(limits);
            return;
        }
        self.drained_at = Some(limits);
        let limit = |k: InputKind| limits[k as usize];
        let mut ready: Vec<u64> = Vec::new();
        for (i, idx) in self.by_input.iter().enumerate() {
            let below = limits[i].unwrap_or(i64::MAX);
            for &(_, id) in idx.range(..(below, 0)) {
                let all_clear = self
                    .held
                    .get(&id)
                    .is_some_and(|(rs, _)| rs.iter().all(|r| clear(r, &limit)));
                if all_clear {
                    ready.push(id);
                }
            }
        }
        ready.sort_unstable();
        ready.dedup();
        for id in ready {
            if let Some((records, item)) = self.held.remove(&id) {
                for r in &records {
                    self.by_input[r.input as usize].remove(&(r.offset, id));
                }
                out.push(item);
            }
        }
    }

    /// Drops everything held (the partition was revoked: its next owner re-processes these
    /// records from the commit point, which never passed them).
    pub fn clear(&mut self) {
        self.held.clear();
        for idx in &mut self.by_input {
            idx.clear();
        }
        self.drained_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(input: InputKind, offset: i64) -> RecordRef {
        RecordRef { input, offset }
    }

    #[test]
    fn an_outcome_waits_for_every_pin_below_its_records() {
        let mut ob = Outbox::default();
        let mut out = Vec::new();
        let mut pinned = [Some(42i64), None, Some(7), None, None];
        ob.offer(
            [r(InputKind::Sx, 40)],
            "sx40",
            |k| pinned[k as usize],
            &mut out,
        );
        ob.offer(
            [r(InputKind::Sx, 43)],
            "sx43",
            |k| pinned[k as usize],
            &mut out,
        );
        let triple = [
            r(InputKind::Fa, 9),
            r(InputKind::Fi, 9),
            r(InputKind::Fd, 9),
        ];
        ob.offer(triple, "triple9", |k| pinned[k as usize], &mut out);
        assert_eq!(out, ["sx40"], "below the pin: out at once");
        assert_eq!(ob.len(), 2);
        pinned[0] = Some(44);
        ob.drain(|k| pinned[k as usize], &mut out);
        assert_eq!(out, ["sx40", "sx43"]);
        pinned[2] = None;
        ob.drain(|k| pinned[k as usize], &mut out);
        assert_eq!(out, ["sx40", "sx43", "triple9"]);
        assert!(ob.is_empty());
    }

    proptest! {
        /// Against a naive model: after every step, an outcome is out exactly when all its
        /// records are clear, nothing is out twice, and what is out never depends on the
        /// order of the checks.
        #[test]
        fn releases_exactly_the_outcomes_whose_records_are_clear(
            ops in prop::collection::vec(
                (prop::collection::vec((0usize..5, 0i64..30), 1..4), prop::array::uniform5(prop::option::of(0i64..30))),
                0..60),
        ) {
            let mut ob = Outbox::default();
            let mut out = Vec::new();
            let mut offered: Vec<Vec<RecordRef>> = Vec::new();
            for (n, (recs, limits)) in ops.iter().enumerate() {
                let recs: Vec<RecordRef> = recs.iter().map(|&(i, o)| r(InputKind::ALL[i], o)).collect();
                let lim = |k: InputKind| limits[k as usize];
                ob.drain(lim, &mut out);
                ob.offer(recs.iter().copied(), n, lim, &mut out);
                offered.push(recs);
                let ok = |rs: &Vec<RecordRef>| rs.iter().all(|x| lim(x.input).is_none_or(|l| x.offset < l));
                for (i, rs) in offered.iter().enumerate() {
                    if ok(rs) {
                        prop_assert!(out.contains(&i), "{} is clear but not out", i);
                    }
                }
                let mut seen = out.clone();
                seen.sort_unstable();
                seen.dedup();
                prop_assert_eq!(seen.len(), out.len(), "an outcome out twice");
                prop_assert_eq!(out.len() + ob.len(), offered.len());
            }
        }
    }
}
