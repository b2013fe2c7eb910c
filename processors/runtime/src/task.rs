//! A task's offsets: what the loop has processed per partition and may commit.

use crate::consumer::TopicPartition;
use crate::driver::Assignment;
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap;

/// Per-topic maps keyed by `&str` lookups, so the hot path does not allocate. `next` is the
/// offset after the last processed record; `committed` what was last committed, so a partition
/// whose commit limit moves (the join released records) is committed again without new input.
#[derive(Default)]
pub(crate) struct OffsetTracker {
    next: FxHashMap<String, FxHashMap<i32, i64>>,
    committed: FxHashMap<(String, i32), i64>,
}

impl OffsetTracker {
    pub(crate) fn mark(&mut self, topic: &str, partition: i32, offset: i64) {
        let parts = match self.next.get_mut(topic) {
            Some(p) => p,
            None => self.next.entry(topic.to_owned()).or_default(),
        };
        let n = parts.entry(partition).or_insert(offset + 1);
        *n = (*n).max(offset + 1);
    }

    /// Offsets to commit: per assigned partition, the next offset clamped by `limit`, when it
    /// moved since the last commit.
    ///
    /// `positions` are the consumer's positions. A `read_committed` consumer moves its
    /// position past transaction markers, which are never delivered: after the last record of
    /// a transaction, "last processed offset + 1" points at the marker, and a group that
    /// committed it would show a lag of 1 per partition for ever (seen with inputs written by
    /// an exactly-once producer). A record is processed before the next is received, so a
    /// position past the tracked offset is as safe to commit, except for the record in hand
    /// while rebalance events are handled ([`Assignment::in_hand`]): the position is capped
    /// at its offset.
    pub(crate) fn take(
        &mut self,
        assigned: &Assignment,
        positions: &[(String, i32, i64)],
        limit: impl Fn(&str, i32) -> Option<i64>,
    ) -> TopicPartitionList {
        for (t, p, pos) in positions {
            let pos = match assigned.in_hand() {
                Some((ht, hp, ho)) if ht == t && hp == *p => ho.min(*pos),
                _ => *pos,
            };
            // Only past what was processed here: a position alone (no record since the last
            // commit) moves the commit when it passed a marker after that commit.
            let known = self
                .next
                .get(t.as_str())
                .and_then(|m| m.get(p))
                .copied()
                .or_else(|| self.committed.get(&(t.clone(), *p)).copied());
            if let Some(k) = known
                && pos > k
            {
                self.next.entry(t.clone()).or_default().insert(*p, pos);
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (t, parts) in &self.next {
            for (&p, &o) in parts {
                if !assigned.contains(t, p) {
                    continue;
                }
                let o = limit(t, p).map_or(o, |l| l.min(o));
                let key = (t.clone(), p);
                if self.committed.get(&key).is_some_and(|&c| c >= o) {
                    continue;
                }
                let _ = tpl.add_partition_offset(t, p, Offset::Offset(o));
                self.committed.insert(key, o);
            }
        }
        tpl
    }

    /// Forgets a partition (revoked, or assigned afresh).
    pub(crate) fn forget(&mut self, (t, p): &TopicPartition) {
        if let Some(parts) = self.next.get_mut(t.as_str()) {
            parts.remove(p);
        }
        self.committed.remove(&(t.clone(), *p));
    }
}

#[cfg(test)]
mod tests {
    use super::OffsetTracker;
    use crate::driver::Assignment;

    fn offsets(tpl: &rdkafka::TopicPartitionList) -> Vec<(String, i32, i64)> {
        tpl.elements()
            .iter()
            .map(|e| {
                let o = e.offset().to_raw().unwrap_or(-1);
                (e.topic().to_owned(), e.partition(), o)
            })
            .collect()
    }

    #[test]
    fn a_position_past_a_marker_is_committed_but_never_past_the_record_in_hand() {
        let mut a = Assignment::default();
        a.add(("SZ".into(), 0), Some(30));
        let mut t = OffsetTracker::default();
        for o in 30..=40 {
            t.mark("SZ", 0, o);
        }
        // The position is past a transaction marker at 41: 42 is committed.
        let pos = [("SZ".to_owned(), 0, 42)];
        assert_eq!(
            offsets(&t.take(&a, &pos, |_, _| None)),
            [("SZ".into(), 0, 42)]
        );

        // Record 42 was returned by the poll that also served a revocation; the revocation's
        // flush runs before it is handled. The position (43) is one past it: the commit must
        // stop at 42, else the next owner starts after a record nobody processed.
        let mut t = OffsetTracker::default();
        for o in 30..=41 {
            t.mark("SZ", 0, o);
        }
        a.hold(Some(("SZ".into(), 0, 42)));
        let pos = [("SZ".to_owned(), 0, 43)];
        assert_eq!(
            offsets(&t.take(&a, &pos, |_, _| None)),
            [("SZ".into(), 0, 42)]
        );
        // Another partition's position is not capped by it.
        a.add(("SZ".into(), 1), None);
        t.mark("SZ", 1, 7);
        let pos = [("SZ".to_owned(), 0, 43), ("SZ".to_owned(), 1, 9)];
        assert_eq!(
            offsets(&t.take(&a, &pos, |_, _| None)),
            [("SZ".into(), 1, 9)]
        );
        a.hold(None);
        let pos = [("SZ".to_owned(), 0, 43)];
        assert_eq!(
            offsets(&t.take(&a, &pos, |_, _| None)),
            [("SZ".into(), 0, 43)]
        );
    }
}
