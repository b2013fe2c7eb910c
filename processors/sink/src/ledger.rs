//! Per-partition offset bookkeeping of the exactly-once protocol (pure: no I/O, no clock).
//!
//! A partition may have one open file per hour bucket (a few at most), so records whose event
//! times straddle an hour boundary do not cut a file at every flip. A file of bucket `b`
//! covering `first..=last` holds every record of bucket `b` in that offset range (records of
//! other buckets in the range are in their own buckets' files). A file's life:
//!
//! ```text
//!   open(b, first) ──► sealed(b, first, last) ──► stored(b, first, last)
//!   (records appended)   (closed, upload queued)    (object created, or found already there)
//!           └───────────────────┴──► dropped: revoke, lost assignment, crash (never uploaded)
//! ```
//!
//! - **commit**: every record below `min(first of open and sealed files)` — or below the next
//!   offset to read when none is open or sealed — is in a stored object (or acknowledged on
//!   the dead-letter topic), so that is the offset to commit ([`Ledger::commit_offset`]).
//!   Sealing a file does not advance it; only storing does.
//! - **recovery**: after a restart at committed offset `C`, objects from a run that died
//!   between upload and commit have ranges ending at or after `C`. The first time a bucket is
//!   seen, the sink lists that hour directory's objects of the partition
//!   ([`Ledger::needs_listing`], [`Ledger::add_listing`]); a record `(o, b)` is already stored
//!   exactly when a listed range of bucket `b` covers `o` ([`Ledger::is_stored`]).
//! - **fencing**: a sealed file is uploaded only while the partition is still assigned to this
//!   member; one the member lost is dropped. Objects are created with a create-only
//!   precondition, so a second upload of the same name (a retry whose first attempt did land)
//!   finds it and counts it as stored.

use crate::layout::HourBucket;
use std::collections::BTreeMap;

/// Listed buckets kept per partition; older ones are listed again if they ever recur.
const MAX_LISTED: usize = 64;

/// Offset bookkeeping of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Open files: (bucket, first offset).
    open: Vec<(HourBucket, i64)>,
    /// Sealed files waiting for their upload: (bucket, first, last).
    sealed: Vec<(HourBucket, i64, i64)>,
    /// Ranges of stored objects per listed bucket.
    listed: BTreeMap<HourBucket, Vec<(i64, i64)>>,
    /// Last consumed offset + 1.
    next: Option<i64>,
}

impl Ledger {
    /// Whether `bucket`'s directory must be listed before a record of it is handled.
    pub fn needs_listing(&self, bucket: HourBucket) -> bool {
        !self.listed.contains_key(&bucket)
    }

    fn busy(&self, bucket: HourBucket) -> bool {
        self.open.iter().any(|(b, _)| *b == bucket)
            || self.sealed.iter().any(|(b, ..)| *b == bucket)
    }

    /// Records the `(first, last)` ranges of the objects found in `bucket`'s directory.
    pub fn add_listing(&mut self, bucket: HourBucket, ranges: Vec<(i64, i64)>) {
        self.listed.insert(bucket, ranges);
        while self.listed.len() > MAX_LISTED {
            // Drop the oldest bucket without an open or sealed file.
            let Some(old) = self.listed.keys().copied().find(|b| !self.busy(*b)) else {
                break;
            };
            self.listed.remove(&old);
        }
    }

    /// Whether record `offset` of `bucket` is already in a listed or stored object.
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

    /// `bucket`'s open file `first..=last` is closed for writing; its upload is queued. It
    /// keeps holding the commit back until [`Ledger::stored`] (or the partition is dropped).
    pub fn seal(&mut self, bucket: HourBucket, first: i64, last: i64) {
        self.open.retain(|(b, _)| *b != bucket);
        self.sealed.push((bucket, first, last));
    }

    /// Files sealed and not yet stored: (bucket, first, last), in sealing order.
    pub fn sealed(&self) -> &[(HourBucket, i64, i64)] {
        &self.sealed
    }

    /// The sealed file `first..=last` of `bucket` is stored: uploaded now, found already
    /// there (a create-only upload refused because the object exists), or empty (every record
    /// of it dead-lettered).
    pub fn stored(&mut self, bucket: HourBucket, first: i64, last: i64) {
        self.sealed
            .retain(|&(b, f, l)| !(b == bucket && f == first && l == last));
        if let Some(r) = self.listed.get_mut(&bucket) {
            r.push((first, last));
        }
    }

    /// `bucket`'s open file `first..=last` was finalised and stored in one step.
    pub fn closed(&mut self, bucket: HourBucket, first: i64, last: i64) {
        self.seal(bucket, first, last);
        self.stored(bucket, first, last);
    }

    /// Record `offset` was consumed (stored, skipped or dead-lettered).
    pub fn consumed(&mut self, offset: i64) {
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The offset that may be committed now: every record below it is stored. `None` before
    /// anything was consumed.
    pub fn commit_offset(&self) -> Option<i64> {
        self.open
            .iter()
            .map(|(_, f)| *f)
            .chain(self.sealed.iter().map(|(_, f, _)| *f))
            .min()
            .or(self.next)
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

    #[test]
    fn a_sealed_file_holds_the_commit_until_stored() {
        let mut l = Ledger::default();
        l.add_listing(b(0), vec![]);
        l.open(b(0), 0);
        for o in 0..5 {
            l.consumed(o);
        }
        l.seal(b(0), 0, 4);
        assert_eq!(
            l.open_first(b(0)),
            None,
            "a new file of the bucket may open"
        );
        l.open(b(0), 5);
        l.consumed(5);
        assert_eq!(l.commit_offset(), Some(0), "sealed, not stored");
        assert_eq!(l.sealed(), &[(b(0), 0, 4)]);
        l.stored(b(0), 0, 4);
        assert_eq!(l.commit_offset(), Some(5));
        assert!(l.is_stored(b(0), 3));
        assert!(l.sealed().is_empty());
    }

    /// An object in the model store: bucket, range, and the offsets it holds. Its name is a
    /// function of (bucket, first, last), as in `layout`.
    type Object = (HourBucket, i64, i64, Vec<i64>);

    /// Create-only put (GCS `ifGenerationMatch=0`, local hard link): `false` when an object of
    /// that name exists already.
    fn put(store: &mut Vec<Object>, o: Object) -> bool {
        if store.iter().any(|x| (x.0, x.1, x.2) == (o.0, o.1, o.2)) {
            return false;
        }
        store.push(o);
        true
    }

    /// What happens after each record of a life.
    #[derive(Debug, Clone, Default)]
    struct Step {
        /// Seal the file of this record's bucket.
        close: bool,
        /// Queued uploads to run now (0 = the store is slow; they wait for a later turn).
        uploads: u8,
        /// The next upload lands but its acknowledgement is lost: the retry is refused by the
        /// precondition and the file counts as stored.
        lost_ack: bool,
        /// The commit of this turn is refused (retried at the next turn).
        commit_refused: bool,
    }

    /// The sink's algorithm over a partition's records `(offset, bucket)`, with at most
    /// `max_open` open files and uploads queued behind sealing; `crash_at` ends the life after
    /// that many records (a crash, a revoke or an eviction: open and queued files are lost).
    /// Returns the committed offset and the files still queued when the life ended.
    fn run(
        records: &[(i64, HourBucket)],
        committed: i64,
        store: &mut Vec<Object>,
        steps: &[Step],
        crash_at: Option<usize>,
        max_open: usize,
    ) -> (i64, Vec<Object>) {
        let mut l = Ledger::default();
        let mut files: Vec<Object> = Vec::new();
        let mut queue: Vec<Object> = Vec::new();
        let mut commit = committed;
        let seal = |l: &mut Ledger, files: &mut Vec<Object>, queue: &mut Vec<Object>, bucket| {
            let i = files.iter().position(|f| f.0 == bucket).unwrap();
            let f = files.remove(i);
            l.seal(f.0, f.1, f.2);
            queue.push(f);
        };
        let upload = |l: &mut Ledger, queue: &mut Vec<Object>, store: &mut Vec<Object>, lost| {
            if queue.is_empty() {
                return;
            }
            let f = queue.remove(0);
            assert_eq!(l.sealed()[0], (f.0, f.1, f.2), "uploads in sealing order");
            if !f.3.is_empty() {
                assert!(put(store, f.clone()), "a fresh name");
                if lost {
                    // The retry of the same object is refused: already stored.
                    assert!(!put(store, f.clone()));
                }
            }
            l.stored(f.0, f.1, f.2);
        };
        for (i, &(o, bucket)) in records.iter().filter(|(o, _)| *o >= committed).enumerate() {
            if crash_at == Some(i) {
                return (commit, queue);
            }
            let step = steps.get(i).cloned().unwrap_or_default();
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
                        seal(&mut l, &mut files, &mut queue, oldest);
                    }
                    l.open(bucket, o);
                    files.push((bucket, o, o, Vec::new()));
                }
                let f = files.iter_mut().find(|f| f.0 == bucket).unwrap();
                f.2 = o;
                f.3.push(o);
                l.consumed(o);
                if step.close {
                    seal(&mut l, &mut files, &mut queue, bucket);
                }
            }
            for k in 0..step.uploads {
                upload(&mut l, &mut queue, store, step.lost_ack && k == 0);
            }
            if let Some(c) = l.commit_offset()
                && !step.commit_refused
            {
                assert!(c >= commit, "the commit never goes back");
                commit = c;
                l.committed(c);
            }
        }
        for bucket in l.open_buckets() {
            seal(&mut l, &mut files, &mut queue, bucket);
        }
        while !queue.is_empty() {
            upload(&mut l, &mut queue, store, false);
        }
        (l.commit_offset().unwrap_or(commit), Vec::new())
    }

    /// Every record in exactly one object, every object holding only records of its bucket
    /// inside its range, and no two objects of a bucket with overlapping ranges.
    fn check(records: &[(i64, HourBucket)], store: &[Object]) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for (bucket, first, last, offsets) in store {
            for o in offsets {
                if !(first <= o && o <= last) || records[*o as usize].1 != *bucket {
                    return Err(format!(
                        "offset {o} misplaced in {bucket:?} {first}..={last}"
                    ));
                }
                if !seen.insert(*o) {
                    return Err(format!("offset {o} stored twice"));
                }
            }
        }
        for (i, x) in store.iter().enumerate() {
            for y in &store[i + 1..] {
                if x.0 == y.0 && x.1 <= y.2 && y.1 <= x.2 {
                    return Err(format!(
                        "overlapping objects {:?} and {:?}",
                        (x.1, x.2),
                        (y.1, y.2)
                    ));
                }
            }
        }
        if seen.len() != records.len() {
            return Err(format!(
                "{} of {} records stored",
                seen.len(),
                records.len()
            ));
        }
        Ok(())
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            (
                any::<bool>(),
                0u8..3,
                prop::bool::weighted(0.1),
                prop::bool::weighted(0.2),
            )
                .prop_map(|(close, uploads, lost_ack, commit_refused)| Step {
                    close,
                    uploads,
                    lost_ack,
                    commit_refused,
                }),
            120,
        )
    }

    proptest! {
        /// Any number of lives ended at any points (crash, revoke, eviction: queued uploads
        /// dropped, never run later), with slow uploads, lost acknowledgements and refused
        /// commits, then a clean life: every record is in exactly one object, every object
        /// holds only records of its bucket inside its range, no two objects overlap.
        #[test]
        fn exactly_once_across_crashes(
            hours in prop::collection::vec(0i64..4, 1..120),
            lives in prop::collection::vec((steps(), 0usize..130), 0..4),
            last in steps(),
            max_open in 1usize..4,
        ) {
            let records: Vec<(i64, HourBucket)> =
                hours.iter().enumerate().map(|(i, h)| (i as i64, b(*h))).collect();
            let mut store = Vec::new();
            let mut committed = 0;
            for (steps, crash) in &lives {
                committed = run(&records, committed, &mut store, steps, Some(*crash), max_open).0;
            }
            let (end, _) = run(&records, committed, &mut store, &last, None, max_open);
            prop_assert_eq!(end, records.len() as i64);
            if let Err(e) = check(&records, &store) {
                prop_assert!(false, "{}", e);
            }
        }
    }

    /// Why a member must drop the queued uploads of a partition it no longer owns: the new
    /// owner re-reads from the last commit and cuts its files differently, so a late upload
    /// of the old owner (an evicted member still uploading) duplicates records under another
    /// name, and no precondition on names can catch it.
    #[test]
    fn a_fenced_writer_uploading_late_would_duplicate() {
        let records: Vec<(i64, HourBucket)> = (0..10).map(|o| (o, b(0))).collect();
        let mut store = Vec::new();
        // The old owner seals 0..=3 but its upload is still queued when it loses the partition.
        let mut steps = vec![Step::default(); 10];
        steps[3].close = true;
        let (committed, queued) = run(&records, 0, &mut store, &steps, Some(5), 1);
        assert_eq!((committed, queued.len()), (0, 1));
        // The new owner stores everything from the last commit in one file.
        let (end, _) = run(&records, committed, &mut store, &[], None, 1);
        assert_eq!(end, 10);
        assert_eq!(check(&records, &store), Ok(()));
        // Were the old owner to upload now, the same records would be stored twice.
        for f in queued {
            assert!(
                put(&mut store, f),
                "a different name: the precondition cannot help"
            );
        }
        assert!(
            check(&records, &store)
                .unwrap_err()
                .contains("stored twice")
        );
    }
}
