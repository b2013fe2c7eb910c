//! Per-partition offset bookkeeping of the exactly-once protocol (pure: no I/O, no clock).
//!
//! A partition's records are cut into consecutive offset ranges (see [`crate::rotation`]); a
//! range `first..=last` becomes one object per event hour it holds, each named by the hour and
//! `first..=last` ([`crate::layout`]). A range's life:
//!
//! ```text
//!   open(first) ──► sealed(first, last, n objects) ──► stored (all n created, or found there)
//!        └────────────────┴──► dropped: revoke, lost assignment, crash (never uploaded)
//! ```
//!
//! - **commit**: every record below `min(first of the open and sealed ranges)` — or below the
//!   next offset to read when none is left — is in a stored object (or acknowledged on the
//!   dead-letter topic), so that is the offset to commit ([`Ledger::commit`]).
//! - **one chain of ranges**: where a range ends is a function of the records from its first
//!   offset and of the chain's [`Limits`], except for the time cuts (age, memory budget,
//!   shutdown). A commit carries, as its offset metadata ([`Resume`]), the limits of the range
//!   starting at the committed offset and every cut at or above it, each with the limits of the
//!   ranges after it. A member that resumes from the commit replays those cuts, so its ranges
//!   — and the objects' names and rows — are the ones any earlier owner made from there.
//! - **a time cut is committed before its upload**: an object of a range at or after a cut this
//!   member made is uploaded only once a commit carrying the cut succeeded
//!   ([`Ledger::may_upload`]). Commits are fenced by the group generation, so a member that
//!   lost the partition (an expired session, an eviction) can no longer commit a cut, and so
//!   never uploads a range the next owner would not make too. Objects are created create-only:
//!   the second writer of a name finds it and counts it as stored (same name, same rows).

use crate::rotation::Limits;
use std::collections::{BTreeMap, BTreeSet};

/// Cuts one partition may carry in its commit metadata (bounded: brokers cap the metadata at
/// `offset.metadata.max.bytes`, 4096 bytes by default; a cut takes at most 84 bytes). A
/// time cut beyond this waits until uploads and commits drain the backlog.
pub const MAX_CUTS: usize = 40;

/// Version tag of the commit metadata.
const TAG: &str = "sf-sink/1";

/// The chain state a commit hands to the next owner: the limits of the range starting at the
/// committed offset, and the cuts at or above it (`last` offset of a range → limits of the
/// ranges after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Limits of the range starting at the committed offset.
    pub limits: Limits,
    /// Time cuts: the range holding offset `.0` ends there; the ranges after it use `.1`.
    pub cuts: Vec<(i64, Limits)>,
}

fn limits_str(l: &Limits) -> String {
    format!("{},{},{}", l.max_records, l.max_bytes, l.max_hours)
}

fn parse_limits(s: &str) -> Option<Limits> {
    let mut it = s.split(',');
    let l = Limits {
        max_records: it.next()?.parse().ok()?,
        max_bytes: it.next()?.parse().ok()?,
        max_hours: it.next()?.parse().ok()?,
    };
    (it.next().is_none() && l.max_records >= 1 && l.max_bytes >= 1 && l.max_hours >= 1).then_some(l)
}

impl Resume {
    /// The metadata string: `sf-sink/1 R,B,H @CUT @CUT=R,B,H …` (a cut without limits keeps the
    /// previous ones).
    pub fn encode(&self) -> String {
        let mut s = format!("{TAG} {}", limits_str(&self.limits));
        let mut prev = self.limits;
        for (last, then) in &self.cuts {
            if *then == prev {
                s.push_str(&format!(" @{last}"));
            } else {
                s.push_str(&format!(" @{last}={}", limits_str(then)));
            }
            prev = *then;
        }
        s
    }

    /// Parses [`Resume::encode`]'s output; `None` for anything else (no commit metadata, a
    /// commit by another tool or an older sink).
    pub fn parse(s: &str) -> Option<Self> {
        let mut words = s.split_ascii_whitespace();
        if words.next()? != TAG {
            return None;
        }
        let limits = parse_limits(words.next()?)?;
        let mut prev = limits;
        let mut cuts = Vec::new();
        for w in words {
            let w = w.strip_prefix('@')?;
            let (last, then) = match w.split_once('=') {
                Some((l, t)) => (l.parse().ok()?, parse_limits(t)?),
                None => (w.parse().ok()?, prev),
            };
            cuts.push((last, then));
            prev = then;
        }
        Some(Self { limits, cuts })
    }
}

/// A commit to make: the offset and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Next offset to read: every record below it is stored.
    pub offset: i64,
    /// The chain state from `offset` on.
    pub resume: Resume,
}

impl Commit {
    /// The metadata string of the commit.
    pub fn metadata(&self) -> String {
        self.resume.encode()
    }
}

/// Offset bookkeeping of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    /// The open range: first offset, limits.
    open: Option<(i64, Limits)>,
    /// Sealed ranges waiting for their objects: first, last, objects left, limits.
    sealed: Vec<(i64, i64, usize, Limits)>,
    /// Limits of the next range to open.
    limits: Limits,
    /// Known time cuts at or above the last commit: last offset → limits after it.
    cuts: BTreeMap<i64, Limits>,
    /// Cuts this member made that no successful commit has carried yet.
    unconfirmed: BTreeSet<i64>,
    /// Whether the chain's start (its limits at the first range) is in a commit: true once
    /// resumed from one or after the first successful commit.
    based: bool,
    /// Last consumed offset + 1.
    next: Option<i64>,
}

impl Ledger {
    /// A ledger whose ranges follow `limits`, with no cut known.
    pub fn new(limits: Limits) -> Self {
        Self {
            open: None,
            sealed: Vec::new(),
            limits,
            cuts: BTreeMap::new(),
            unconfirmed: BTreeSet::new(),
            based: false,
            next: None,
        }
    }

    /// Continues the chain a commit describes (before the first record is consumed).
    pub fn resume(&mut self, r: &Resume) {
        self.limits = r.limits;
        self.cuts = r.cuts.iter().copied().collect();
        self.based = true;
    }

    /// Limits of the next range to open (the open one's when one is open).
    pub fn limits(&self) -> Limits {
        self.open.map_or(self.limits, |(_, l)| l)
    }

    /// A range starts at `first`.
    pub fn open(&mut self, first: i64) {
        self.open = Some((first, self.limits));
    }

    /// The open range's first offset.
    pub fn open_first(&self) -> Option<i64> {
        self.open.map(|(f, _)| f)
    }

    /// Whether a known cut ends the range at `offset`.
    pub fn cut_at(&self, offset: i64) -> bool {
        self.cuts.contains_key(&offset)
    }

    /// This member cuts the open range at `last` (a time cut); the ranges after it follow
    /// `then`. Its objects, and those of every later range, wait for a commit carrying it.
    pub fn cut(&mut self, last: i64, then: Limits) {
        self.cuts.insert(last, then);
        self.unconfirmed.insert(last);
    }

    /// Time cuts the next commit carries (known cuts at or above the commit offset).
    pub fn pending_cuts(&self) -> usize {
        self.cuts.len()
    }

    /// The open range `first..=last` is closed with `objects` objects to store; the next range
    /// follows the cut's limits when a cut ends it there. It holds the commit back until every
    /// object is [`Ledger::stored`] (or the partition is dropped).
    pub fn seal(&mut self, first: i64, last: i64, objects: usize) {
        let limits = self.open.take().map_or(self.limits, |(_, l)| l);
        if let Some(then) = self.cuts.get(&last) {
            self.limits = *then;
        } else {
            self.limits = limits;
        }
        if objects > 0 {
            self.sealed.push((first, last, objects, limits));
        }
    }

    /// Sealed ranges not yet stored: (first, last), in sealing order.
    pub fn sealed(&self) -> Vec<(i64, i64)> {
        self.sealed.iter().map(|s| (s.0, s.1)).collect()
    }

    /// One object of the sealed range `first..=last` is stored: uploaded now, found already
    /// there (a create-only upload refused because the object exists), or empty (every record
    /// of its hour dead-lettered).
    pub fn stored(&mut self, first: i64, last: i64) {
        if let Some(i) = self.sealed.iter().position(|s| (s.0, s.1) == (first, last)) {
            self.sealed[i].2 -= 1;
            if self.sealed[i].2 == 0 {
                self.sealed.remove(i);
            }
        }
    }

    /// Whether the objects of a range ending at `last` may be uploaded: the chain's start is
    /// committed (a chain begun without commit metadata — a new group, an older sink's
    /// commit — commits its limits first, so a member with other limits continues this chain
    /// rather than starting its own), and no cut at or below `last` waits for its commit.
    pub fn may_upload(&self, last: i64) -> bool {
        self.based && self.unconfirmed.range(..=last).next().is_none()
    }

    /// Record `offset` was consumed (stored or dead-lettered).
    pub fn consumed(&mut self, offset: i64) {
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The commit that may be made now: every record below its offset is stored, and its
    /// metadata holds the chain from there. `None` before anything was consumed.
    pub fn commit(&self) -> Option<Commit> {
        let oldest = self
            .sealed
            .iter()
            .map(|s| (s.0, s.3))
            .chain(self.open)
            .min_by_key(|(f, _)| *f);
        let (offset, limits) = match oldest {
            Some(o) => o,
            None => (self.next?, self.limits),
        };
        Some(Commit {
            offset,
            resume: Resume {
                limits,
                cuts: self.cuts.range(offset..).map(|(k, v)| (*k, *v)).collect(),
            },
        })
    }

    /// `c` (from [`Ledger::commit`]) was committed: the cuts it carried are confirmed, and
    /// cuts below its offset can never matter again.
    pub fn committed(&mut self, c: &Commit) {
        for (last, _) in &c.resume.cuts {
            self.unconfirmed.remove(last);
        }
        self.cuts = self.cuts.split_off(&c.offset);
        self.unconfirmed = self.unconfirmed.split_off(&c.offset);
        self.based = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Limits = Limits {
        max_records: 10,
        max_bytes: 1 << 20,
        max_hours: 24,
    };
    const B: Limits = Limits {
        max_records: 3,
        max_bytes: 99,
        max_hours: 1,
    };

    #[test]
    fn the_commit_waits_for_every_object_of_the_oldest_range() {
        let mut l = Ledger::new(A);
        assert_eq!(l.commit(), None);
        l.open(10);
        l.consumed(10);
        assert!(
            !l.may_upload(10),
            "a chain without a commit commits its start first"
        );
        let c = l.commit().unwrap();
        l.committed(&c);
        assert!(l.may_upload(10));
        l.consumed(11);
        l.seal(10, 11, 2);
        l.open(12);
        l.consumed(12);
        assert_eq!(l.commit().unwrap().offset, 10);
        l.stored(10, 11);
        assert_eq!(l.commit().unwrap().offset, 10, "one object of two");
        l.stored(10, 11);
        assert_eq!(l.commit().unwrap().offset, 12);
        l.seal(12, 12, 1);
        l.stored(12, 12);
        assert_eq!(l.commit().unwrap().offset, 13);
        assert!(l.sealed().is_empty());
    }

    #[test]
    fn a_time_cut_holds_later_uploads_until_a_commit_carries_it() {
        let mut l = Ledger::new(A);
        l.resume(&Resume {
            limits: A,
            cuts: vec![],
        });
        l.open(0);
        (0..5).for_each(|o| l.consumed(o));
        l.cut(4, B);
        l.seal(0, 4, 1);
        assert_eq!(l.limits(), B, "the ranges after the cut follow its limits");
        l.open(5);
        l.consumed(5);
        l.seal(5, 5, 1);
        assert!(!l.may_upload(4) && !l.may_upload(5));
        let c = l.commit().unwrap();
        assert_eq!(
            (c.offset, &c.resume),
            (
                0,
                &Resume {
                    limits: A,
                    cuts: vec![(4, B)]
                }
            )
        );
        l.committed(&c);
        assert!(l.may_upload(4) && l.may_upload(5));
        l.stored(0, 4);
        l.stored(5, 5);
        let c = l.commit().unwrap();
        assert_eq!((c.offset, c.resume.limits, c.resume.cuts.len()), (6, B, 0));
        l.committed(&c);
        assert_eq!(l.pending_cuts(), 0);
    }

    #[test]
    fn a_resumed_chain_replays_the_cuts() {
        let r = Resume {
            limits: B,
            cuts: vec![(7, B), (9, A)],
        };
        let mut l = Ledger::new(A);
        l.resume(&r);
        assert_eq!(l.limits(), B);
        assert!(l.cut_at(7) && l.cut_at(9) && !l.cut_at(8));
        assert!(l.may_upload(100), "inherited cuts are committed already");
        l.open(5);
        l.seal(5, 9, 1);
        assert_eq!(l.limits(), A);
    }

    #[test]
    fn foreign_metadata_does_not_parse() {
        for s in [
            "",
            "x",
            "sf-sink/1",
            "sf-sink/1 0,1,1",
            "sf-sink/1 1,1,1 5",
            "sf-sink/2 1,1,1",
        ] {
            assert_eq!(Resume::parse(s), None, "{s:?}");
        }
    }

    fn limits() -> impl Strategy<Value = Limits> {
        (1u64..u64::MAX, 1u64..u64::MAX, 1usize..100_000).prop_map(|(r, b, h)| Limits {
            max_records: r,
            max_bytes: b,
            max_hours: h,
        })
    }

    proptest! {
        #[test]
        fn metadata_round_trips_within_the_broker_limit(
            base in limits(),
            cuts in prop::collection::vec((0i64..i64::MAX, prop::option::of(limits())), 0..MAX_CUTS),
        ) {
            let mut prev = base;
            let mut cuts: Vec<(i64, Limits)> = cuts
                .into_iter()
                .map(|(o, l)| {
                    prev = l.unwrap_or(prev);
                    (o, prev)
                })
                .collect();
            cuts.sort_by_key(|c| c.0);
            let r = Resume { limits: base, cuts };
            let s = r.encode();
            prop_assert_eq!(Resume::parse(&s), Some(r));
            // Worst case: every cut switching limits with the widest numbers.
            prop_assert!(s.len() <= 72 + 84 * MAX_CUTS);
            prop_assert!(72 + 84 * MAX_CUTS <= 4096);
        }
    }
}
