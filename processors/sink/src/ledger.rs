//! Per-partition offset bookkeeping of the exactly-once protocol (pure: no I/O, no clock).
//!
//! A partition may have one open file per hour bucket (a few at most), so records whose event
//! times straddle an hour boundary do not cut a file at every flip. A file of bucket `b`
//! covering `first..=last` holds every record of bucket `b` in that offset range (records of
//! other buckets in the range are in their own buckets' files). Then:
//!
//! - **commit**: every record below `min(first of open files)` — or below the next offset to
//!   read when nothing is open — is in a finalised object (or acknowledged on the dead-letter
//!   topic), so that is the offset to commit ([`Ledger::commit_offset`]).
//! - **recovery**: after a restart at committed offset `C`, objects from a run that died
//!   between upload and commit have ranges ending at or after `C`. The first time a bucket is
//!   seen, the sink lists that hour directory's objects of the partition
//!   ([`Ledger::needs_listing`], [`Ledger::add_listing`]); a record `(o, b)` is already stored
//!   exactly when a listed range of bucket `b` covers `o` ([`Ledger::is_stored`]).

use crate::layout::HourBucket;
use std::collections::BTreeMap;

/// Listed buckets kept per partition; older ones are listed again if they ever recur.
const MAX_LISTED: usize = 64;

/// Offset bookkeeping of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Open files: (bucket, first offset).
    open: Vec<(HourBucket, i64)>,
    /// Ranges of finalised objects per listed bucket.
    listed: BTreeMap<HourBucket, Vec<(i64, i64)>>,
    /// Last consumed offset + 1.
    next: Option<i64>,
}

impl Ledger {
    /// Whether `bucket`'s directory must be listed before a record of it is handled.
    pub fn needs_listing(&self, bucket: HourBucket) -> bool {
        !self.listed.contains_key(&bucket)
    }

    /// Records the `(first, last)` ranges of the objects found in `bucket`'s directory.
    pub fn add_listing(&mut self, bucket: HourBucket, ranges: Vec<(i64, i64)>) {
        self.listed.insert(bucket, ranges);
        while self.listed.len() > MAX_LISTED {
            // Drop the oldest bucket without an open file.
            let Some(old) = self
                .listed
                .keys()
                .copied()
                .find(|b| !self.open.iter().any(|(o, _)| o == b))
            else {
                break;
            };
            self.listed.remove(&old);
        }
    }

    /// Whether record `offset` of `bucket` is already in a listed object.
    pub fn is_stored(&self, bucket: HourBucket, offset: i64) -> bool {
        self.listed
            .get(&bucket)
            .is_some_and(|r| r.iter().any(|&(f, l)| f <= offset && offset <= l))
    }

    /// The open file of `bucket` starts at `first`.
    pub fn open(&mut self, bucket: HourBucket, first: i64) {
        self.open.push((bucket, first));
    }

    /// The open file of `bucket`, if any: its first offset.
    pub fn open_first(&self, bucket: HourBucket) -> Option<i64> {
        self.open
            .iter()
            .find(|(b, _)| *b == bucket)
            .map(|(_, f)| *f)
    }

    /// Buckets with an open file, oldest first offset first.
    pub fn open_buckets(&self) -> Vec<HourBucket> {
        let mut v = self.open.clone();
        v.sort_by_key(|(_, f)| *f);
        v.into_iter().map(|(b, _)| b).collect()
    }

    /// `bucket`'s file `first..=last` was finalised (uploaded, or empty after dead letters).
    pub fn closed(&mut self, bucket: HourBucket, first: i64, last: i64) {
        self.open.retain(|(b, _)| *b != bucket);
        if let Some(r) = self.listed.get_mut(&bucket) {
            r.push((first, last));
        }
    }

    /// Record `offset` was consumed (stored, skipped or dead-lettered).
    pub fn consumed(&mut self, offset: i64) {
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The offset that may be committed now: every record below it is stored. `None` before
    /// anything was consumed.
    pub fn commit_offset(&self) -> Option<i64> {
        self.open.iter().map(|(_, f)| *f).min().or(self.next)
    }

    /// `offset` was committed: ranges wholly below it can never match a record again.
    pub fn committed(&mut self, offset: i64) {
        for r in self.listed.values_mut() {
            r.retain(|&(_, l)| l >= offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn b(h: i64) -> HourBucket {
        HourBucket { hours: h }
    }

    #[test]
    fn commit_waits_for_the_oldest_open_file() {
        let mut l = Ledger::default();
        assert_eq!(l.commit_offset(), None);
        l.add_listing(b(0), vec![]);
        l.open(b(0), 10);
        l.consumed(10);
        l.open(b(1), 11);
        l.consumed(11);
        l.consumed(12);
        assert_eq!(l.commit_offset(), Some(10));
        l.closed(b(0), 10, 12);
        assert_eq!(l.commit_offset(), Some(11));
        l.closed(b(1), 11, 11);
        assert_eq!(l.commit_offset(), Some(13));
        assert!(l.is_stored(b(0), 12) && !l.is_stored(b(1), 12));
        l.committed(13);
        assert!(!l.is_stored(b(0), 12));
    }

    /// A stored object: bucket, range, and the offsets it holds.
    type Object = (HourBucket, i64, i64, Vec<i64>);

    /// The sink's algorithm over a partition's records `(offset, bucket)`, with at most
    /// `max_open` open files; `closes[i]` closes the file of record i's bucket after it;
    /// `crash_at` kills the run after that many records (open files lost, objects kept).
    /// Returns the committed offset at the end.
    fn run(
        records: &[(i64, HourBucket)],
        committed: i64,
        store: &mut Vec<Object>,
        closes: &[bool],
        crash_at: Option<usize>,
        max_open: usize,
    ) -> i64 {
        let mut l = Ledger::default();
        let mut files: Vec<(HourBucket, i64, i64, Vec<i64>)> = Vec::new();
        let mut commit = committed;
        let finalise = |l: &mut Ledger,
                        files: &mut Vec<(HourBucket, i64, i64, Vec<i64>)>,
                        store: &mut Vec<Object>,
                        bucket: HourBucket| {
            let i = files.iter().position(|f| f.0 == bucket).unwrap();
            let f = files.remove(i);
            l.closed(f.0, f.1, f.2);
            if !f.3.is_empty() {
                store.push(f);
            }
        };
        for (i, &(o, bucket)) in records.iter().filter(|(o, _)| *o >= committed).enumerate() {
            if crash_at == Some(i) {
                return commit;
            }
            if l.needs_listing(bucket) {
                let ranges = store
                    .iter()
                    .filter(|x| x.0 == bucket)
                    .map(|x| (x.1, x.2))
                    .collect();
                l.add_listing(bucket, ranges);
            }
            if l.is_stored(bucket, o) {
                l.consumed(o);
            } else {
                if l.open_first(bucket).is_none() {
                    if files.len() >= max_open {
                        let oldest = l.open_buckets()[0];
                        finalise(&mut l, &mut files, store, oldest);
                    }
                    l.open(bucket, o);
                    files.push((bucket, o, o, Vec::new()));
                }
                let f = files.iter_mut().find(|f| f.0 == bucket).unwrap();
                f.2 = o;
                f.3.push(o);
                l.consumed(o);
                if closes.get(i).copied().unwrap_or(false) {
                    finalise(&mut l, &mut files, store, bucket);
                }
            }
            if let Some(c) = l.commit_offset() {
                commit = c;
                l.committed(c);
            }
        }
        for bucket in l.open_buckets() {
            finalise(&mut l, &mut files, store, bucket);
        }
        l.commit_offset().unwrap_or(commit)
    }

    proptest! {
        /// Any number of crashes at any points, then a clean run: every record is in exactly
        /// one object, and every object holds only records of its bucket inside its range.
        #[test]
        fn exactly_once_across_crashes(
            hours in prop::collection::vec(0i64..4, 1..120),
            lives in prop::collection::vec((prop::collection::vec(any::<bool>(), 120), 0usize..130), 0..4),
            last_closes in prop::collection::vec(any::<bool>(), 120),
            max_open in 1usize..4,
        ) {
            let records: Vec<(i64, HourBucket)> =
                hours.iter().enumerate().map(|(i, h)| (i as i64, b(*h))).collect();
            let mut store = Vec::new();
            let mut committed = 0;
            for (closes, crash) in &lives {
                committed = run(&records, committed, &mut store, closes, Some(*crash), max_open);
            }
            let end = run(&records, committed, &mut store, &last_closes, None, max_open);
            prop_assert_eq!(end, records.len() as i64);
            let mut seen = BTreeSet::new();
            for (bucket, first, last, offsets) in &store {
                for o in offsets {
                    prop_assert!(first <= o && o <= last);
                    prop_assert_eq!(records[*o as usize].1, *bucket);
                    prop_assert!(seen.insert(*o), "offset {} stored twice", o);
                }
            }
            prop_assert_eq!(seen.len(), records.len());
        }
    }
}
