//! Unit tests of the writer's rules, and two property tests: one against a naive reference
//! of the range rules over several interleaved partitions, one through restarts from the
//! last commit, time cuts, refused commits and late uploads by members that lost the
//! partition, counting every record's copies and checking that a name taken twice holds the
//! same rows.

use super::*;
use crate::layout::parse_object;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use proptest::prelude::*;
use prost::Message as _;
use sensorflow_core::proto::{Sensor, SensorReading};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const HOUR_MS: i64 = 3_600_000;

fn limits(max_records: u64, max_bytes: u64, max_hours: usize) -> Limits {
    Limits {
        max_records,
        max_bytes,
        max_hours,
    }
}

fn config(max_records: u64, max_bytes: u64, max_age_ms: i64, max_hours: usize) -> WriterConfig {
    WriterConfig {
        layout: Layout::new("pre"),
        rotation: Rotation {
            limits: limits(max_records, max_bytes, max_hours),
            max_age_ms,
        },
        framing: Framing::Plain,
    }
}

/// A reading's value, or bytes that never decode (a truncated varint).
fn value(ok: bool) -> Vec<u8> {
    if ok {
        SensorReading {
            event_time_ms: 1,
            value: 2.5,
            sensor: Sensor::Sz as i32,
            ingest_time_ms: 0,
        }
        .encode_to_vec()
    } else {
        vec![0x08, 0xff]
    }
}

/// Record `offset` of partition `partition` in hour `hour` (at 5 ms past its start, so
/// several hours' records can come in any order).
fn rec(value: &[u8], partition: i32, offset: i64, hour: i64) -> Record<'_> {
    Record {
        key: Some(b"c"),
        value: Some(value),
        partition,
        offset,
        timestamp_ms: Some(hour * HOUR_MS + 5),
        headers: None,
    }
}

fn b(h: i64) -> HourBucket {
    HourBucket { hours: h }
}

fn row_offsets(f: &SealedFile) -> Vec<i64> {
    f.batch.as_ref().map_or_else(Vec::new, |batch| {
        let col = batch
            .column_by_name("kafka_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        col.values().to_vec()
    })
}

fn spans(files: &[SealedFile]) -> Vec<(HourBucket, i64, i64, Vec<i64>, Reason)> {
    files
        .iter()
        .map(|f| (f.bucket, f.first, f.last, row_offsets(f), f.reason))
        .collect()
}

#[test]
fn a_range_ends_by_its_records_and_makes_one_object_per_hour() {
    let mut w = PartitionWriter::new("SZ", 2, Kind::Reading, config(4, 1 << 20, 60_000, 24));
    let v = value(true);
    let mut sealed = Vec::new();
    for (o, h) in [(10, 5), (11, 6), (12, 5), (13, 7)] {
        let out = w.write(&rec(&v, 2, o, h), 1, 0).unwrap();
        assert_eq!((out.outcome, out.buffered), (Outcome::Appended, 1));
        sealed.extend(out.sealed);
    }
    assert_eq!(
        spans(&sealed),
        [
            (b(5), 10, 13, vec![10, 12], Reason::Records),
            (b(6), 10, 13, vec![11], Reason::Records),
            (b(7), 10, 13, vec![13], Reason::Records),
        ]
    );
    assert_eq!(
        sealed[0].name,
        "pre/topic=SZ/date=1970-01-01/hour=05/SZ-00002-00000000000000000010-00000000000000000013.parquet"
    );
    assert_eq!(w.committable().unwrap().offset, 10, "sealed is not stored");
    for f in &sealed[..2] {
        w.stored(f);
    }
    assert_eq!(
        w.committable().unwrap().offset,
        10,
        "one object of the range left"
    );
    w.stored(&sealed[2]);
    assert_eq!(w.committable().unwrap().offset, 14);
}

#[test]
fn ranges_close_on_bytes_and_before_one_hour_too_many() {
    let mut w = PartitionWriter::new("SZ", 0, Kind::Reading, config(100, 100, 60_000, 2));
    let v = value(true);
    let got: Vec<Vec<(i64, i64, Reason)>> =
        [(0, 0, 10), (1, 1, 10), (2, 0, 10), (3, 2, 60), (4, 2, 40)]
            .iter()
            .map(|&(o, h, size)| {
                let out = w.write(&rec(&v, 0, o, h), size, 0).unwrap();
                let mut r: Vec<_> = out
                    .sealed
                    .iter()
                    .map(|f| (f.first, f.last, f.reason))
                    .collect();
                r.dedup();
                r
            })
            .collect();
    assert_eq!(
        got,
        [
            vec![],
            vec![],
            vec![],
            vec![(0, 2, Reason::Hours)],
            vec![(3, 4, Reason::Bytes)]
        ]
    );
}

/// Event times scattered over 50 hours, every record a different hour from the one before:
/// one range, one object per hour (today's default limits), no listing, no object per record.
#[test]
fn scattered_timestamps_make_one_object_per_hour_per_range() {
    let mut w = PartitionWriter::new("SZ", 0, Kind::Reading, config(1000, 1 << 30, 60_000, 168));
    let v = value(true);
    let mut sealed = Vec::new();
    for o in 0..1000 {
        sealed.extend(w.write(&rec(&v, 0, o, (o * 7) % 50), 10, 0).unwrap().sealed);
    }
    assert_eq!(sealed.len(), 50);
    assert!(sealed.iter().all(|f| (f.first, f.last) == (0, 999)));
    let rows: usize = sealed.iter().map(|f| row_offsets(f).len()).sum();
    assert_eq!(rows, 1000);
    for f in &sealed {
        let offs = row_offsets(f);
        assert!(offs.windows(2).all(|x| x[0] < x[1]), "offset order");
        assert!(offs.iter().all(|o| b((o * 7) % 50) == f.bucket));
    }
}

#[test]
fn a_rejected_record_is_in_the_range_but_not_a_row() {
    let mut w = PartitionWriter::new("SZ", 0, Kind::Reading, config(100, 1 << 20, 60_000, 24));
    let (good, bad) = (value(true), value(false));
    w.write(&rec(&good, 0, 0, 0), 1, 0).unwrap();
    let out = w.write(&rec(&bad, 0, 1, 0), 4, 0).unwrap();
    assert!(matches!(out.outcome, Outcome::Rejected(ref r) if r.code() == "decode"));
    assert_eq!(out.buffered, 4, "in the range's bytes");
    w.write(&rec(&good, 0, 2, 0), 1, 0).unwrap();
    // Every record of hour 1 is rejected: its file has no rows, nothing to upload.
    w.write(&rec(&bad, 0, 3, 1), 1, 0).unwrap();
    let files = w.cut(Reason::Shutdown).unwrap();
    let seen: Vec<_> = files
        .iter()
        .map(|f| {
            (
                f.bucket,
                f.first,
                f.last,
                row_offsets(f),
                f.batch.is_some(),
                f.bytes_in,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (b(0), 0, 3, vec![0, 2], true, 6),
            (b(1), 0, 3, vec![], false, 1)
        ]
    );
}

#[test]
fn age_is_judged_by_the_time_passed_in() {
    let mut w = PartitionWriter::new("SZ", 0, Kind::Reading, config(100, 1 << 20, 5_000, 24));
    let v = value(true);
    w.write(&rec(&v, 0, 0, 0), 1, 1_000).unwrap();
    w.write(&rec(&v, 0, 1, 1), 1, 3_000).unwrap();
    assert!(w.seal_aged(5_999).unwrap().is_empty());
    let aged = w.seal_aged(6_000).unwrap();
    assert_eq!(aged.len(), 2);
    assert!(
        aged.iter()
            .all(|f| (f.reason, f.opened_at_ms, f.first, f.last) == (Reason::Age, 1_000, 0, 1))
    );
    assert_eq!(w.open_count(), 0);
}

/// The heart of it: a member cuts by age, commits the cut, starts uploading and loses the
/// partition (its session expires) before the upload lands. The next owner resumes from the
/// commit, cuts at the same offset, and makes the same objects; the old member's late upload
/// has the name of one of them and the same rows. Without the committed cut (the old member
/// could not commit it), the old member uploads nothing.
#[test]
fn a_late_upload_after_a_lost_session_has_the_name_and_rows_of_the_new_owners_object() {
    let cfg = config(1000, 1 << 30, 1_000, 24);
    let v = value(true);
    let hour = |o: i64| o % 3;
    // Member A reads 0..=5, cuts by age, commits the cut, and is still uploading.
    let mut a = PartitionWriter::new("SZ", 1, Kind::Reading, cfg.clone());
    for o in 0..6 {
        a.write(&rec(&v, 1, o, hour(o)), 1, 0).unwrap();
    }
    let late = a.seal_aged(1_000).unwrap();
    assert_eq!(late.len(), 3);
    assert!(!a.may_upload(&late[0]), "the cut is not committed yet");
    let commit = a.committable().unwrap();
    assert_eq!(commit.offset, 0);
    assert_eq!(commit.metadata(), "sf-sink/1 1000,1073741824,24 @5");
    a.committed(&commit);
    assert!(a.may_upload(&late[0]));
    // Member B gets the partition from that commit, with more records to read.
    let mut b_ = PartitionWriter::new("SZ", 1, Kind::Reading, cfg.clone());
    b_.resume(Some(&Resume::parse(&commit.metadata()).unwrap()), Some(6));
    let mut mine = Vec::new();
    for o in 0..20 {
        mine.extend(b_.write(&rec(&v, 1, o, hour(o)), 1, 0).unwrap().sealed);
    }
    mine.extend(b_.cut(Reason::Shutdown).unwrap());
    for f in &late {
        let same = mine.iter().find(|m| m.name == f.name).expect("same name");
        assert_eq!(row_offsets(same), row_offsets(f), "same rows");
        assert_eq!(same.reason, Reason::Cut);
    }
    // A member whose cut never got committed (fenced) has nothing it may upload after it.
    let mut z = PartitionWriter::new("SZ", 1, Kind::Reading, cfg);
    for o in 0..6 {
        z.write(&rec(&v, 1, o, hour(o)), 1, 0).unwrap();
    }
    let mut held = z.seal_aged(1_000).unwrap();
    for o in 6..2006 {
        held.extend(z.write(&rec(&v, 1, o, hour(o)), 1, 0).unwrap().sealed);
    }
    assert!(held.len() > 3, "later ranges sealed by their records");
    assert!(held.iter().all(|f| !z.may_upload(f)));
}

#[test]
fn too_many_uncommitted_cuts_let_the_range_grow() {
    let mut w = PartitionWriter::new("SZ", 0, Kind::Reading, config(1 << 20, 1 << 30, 1, 24));
    let v = value(true);
    let mut cuts = 0;
    for o in 0..(MAX_CUTS as i64 + 5) {
        w.write(&rec(&v, 0, o, 0), 1, o).unwrap();
        cuts += usize::from(!w.seal_aged(o + 10).unwrap().is_empty());
    }
    assert_eq!(cuts, MAX_CUTS);
    let c = w.committable().unwrap();
    assert_eq!(c.resume.cuts.len(), MAX_CUTS);
    assert!(c.metadata().len() < 4096);
    w.committed(&c);
    // Still pending until the ranges are stored and the commit passes them.
    assert!(w.seal_aged(1_000_000).unwrap().is_empty());
}

/// A member resuming a chain makes no time cut below the high watermark it saw at
/// assignment (an earlier owner may have read and cut on by the records up to there), keeps
/// the chain's limits up to its first time cut, and switches to its own there.
#[test]
fn no_time_cut_below_the_high_watermark_and_own_limits_from_the_first_one() {
    let v = value(true);
    let theirs = Resume {
        limits: limits(3, 1 << 30, 24),
        cuts: vec![],
    };
    let mut w = PartitionWriter::new("SZ", 0, Kind::Reading, config(100, 1 << 30, 1, 24));
    w.resume(Some(&theirs), Some(8));
    let mut ends = Vec::new();
    for o in 0..7 {
        ends.extend(
            w.write(&rec(&v, 0, o, 0), 1, 0)
                .unwrap()
                .sealed
                .iter()
                .map(|f| f.last),
        );
        assert!(
            w.seal_aged(1_000).unwrap().is_empty(),
            "below the watermark"
        );
    }
    assert_eq!(ends, [2, 5], "their limits");
    w.write(&rec(&v, 0, 7, 0), 1, 0).unwrap();
    let cut = w.seal_aged(1_000).unwrap();
    assert_eq!(
        (cut[0].first, cut[0].last),
        (6, 7),
        "at the watermark minus one"
    );
    assert_eq!(w.limits().max_records, 100, "own limits after the cut");
    let c = w.committable().unwrap();
    assert_eq!(c.resume.limits.max_records, 3);
    assert_eq!(c.resume.cuts, vec![(7, limits(100, 1 << 30, 24))]);
}

/// What the reference sees of one partition: records (offset, bucket, input bytes, wall
/// time) and ticks (wall time).
#[derive(Debug, Clone, Copy)]
enum Ev {
    Rec(i64, HourBucket, u64, i64),
    Tick(i64),
}

/// The ranges one partition's records make, written from the README's rules with no shared
/// code: a range ends before a record of one hour more than `max_hours`, after `max_records`
/// records, at the record reaching `max_bytes`, on a tick `max_age_ms` after it opened, and at
/// the end. Returns (first, last, reason, hours).
fn reference(
    evs: &[Ev],
    l: Limits,
    max_age_ms: i64,
) -> Vec<(i64, i64, Reason, BTreeSet<HourBucket>)> {
    // first, last, records, bytes, opened at, hours
    let mut open: Option<(i64, i64, u64, u64, i64, BTreeSet<HourBucket>)> = None;
    let mut out = Vec::new();
    for ev in evs {
        match *ev {
            Ev::Rec(o, bucket, size, now) => {
                if let Some(f) = &open
                    && !f.5.contains(&bucket)
                    && f.5.len() >= l.max_hours
                {
                    let f = open.take().unwrap();
                    out.push((f.0, f.1, Reason::Hours, f.5));
                }
                let f = open.get_or_insert((o, o, 0, 0, now, BTreeSet::new()));
                f.1 = o;
                f.2 += 1;
                f.3 += size;
                f.5.insert(bucket);
                let reason = if f.2 >= l.max_records {
                    Some(Reason::Records)
                } else if f.3 >= l.max_bytes {
                    Some(Reason::Bytes)
                } else {
                    None
                };
                if let Some(r) = reason {
                    let f = open.take().unwrap();
                    out.push((f.0, f.1, r, f.5));
                }
            }
            Ev::Tick(now) => {
                if open.as_ref().is_some_and(|f| now - f.4 >= max_age_ms) {
                    let f = open.take().unwrap();
                    out.push((f.0, f.1, Reason::Age, f.5));
                }
            }
        }
    }
    out.extend(open.map(|f| (f.0, f.1, Reason::Shutdown, f.5)));
    out
}

/// One step of a generated run.
#[derive(Debug, Clone)]
enum Op {
    /// A record of partition `part` (an index into the run's partitions) in hour `hour`,
    /// `gap` offsets after the previous one (compaction, transaction markers), `size` input
    /// bytes, undecodable when `bad`.
    Rec {
        part: usize,
        hour: i64,
        gap: i64,
        size: u64,
        bad: bool,
    },
    /// Wall time moves on by `ms`; aged ranges are cut.
    Tick(i64),
    /// The `n` oldest queued files are stored (a file whose cut is not committed waits).
    Upload(usize),
    /// Every partition commits what it may.
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0usize..4, 0i64..6, prop::sample::select(vec![0i64, 0, 0, 1, 3]), 1u64..40, prop::bool::weighted(0.15))
            .prop_map(|(part, hour, gap, size, bad)| Op::Rec { part, hour, gap, size, bad }),
        1 => (0i64..3_000).prop_map(Op::Tick),
        4 => (0usize..3).prop_map(Op::Upload),
        2 => Just(Op::Commit),
    ]
}

/// Sealed ranges of one partition: (first, last) → reason and the hours of its objects.
type Ranges = BTreeMap<(i64, i64), (Reason, BTreeSet<HourBucket>)>;

/// An object in the model store: its name, bucket, range and row offsets.
#[derive(Debug, Clone)]
struct Object {
    name: String,
    bucket: HourBucket,
    first: i64,
    last: i64,
    rows: Vec<i64>,
}

/// Every record below `commit` (of the `inputs` offsets consumed so far) is in the range of
/// a stored range.
fn commit_is_safe(commit: i64, inputs: &[i64], stored: &[(i64, i64)]) -> Result<(), String> {
    for &o in inputs.iter().filter(|o| **o < commit) {
        if !stored.iter().any(|&(f, l)| f <= o && o <= l) {
            return Err(format!(
                "commit {commit} passes offset {o}, in no stored range"
            ));
        }
    }
    Ok(())
}

proptest! {
    /// Several partitions of two topics, records of unsorted hours interleaved with ticks,
    /// slow uploads and commits: each partition's ranges (first, last, reason, hours) are the
    /// reference's; every input offset is a row of exactly one object or a dead letter, once
    /// (counted as a multiset); rows sit in their hour's object within its range; names are
    /// the layout's; no upload of a time-cut range before a commit carried the cut; and no
    /// commit ever passes a record that is not in a stored range.
    #[test]
    fn ranges_match_the_reference_and_commits_wait_for_them(
        parts in prop::collection::vec((0usize..2, 0i32..3), 1..5),
        ops in prop::collection::vec(op(), 1..250),
        max_records in 1u64..12,
        max_bytes in 20u64..300,
        max_age_ms in 500i64..5_000,
        max_hours in 1usize..5,
    ) {
        let topics = [("SZ", Kind::Reading), ("dead-letter", Kind::Raw)];
        let mut parts = parts;
        parts.sort_unstable();
        parts.dedup();
        let cfg = config(max_records, max_bytes, max_age_ms, max_hours);
        let mut writers: Vec<PartitionWriter> = parts
            .iter()
            .map(|&(t, p)| PartitionWriter::new(topics[t].0, p, topics[t].1, cfg.clone()))
            .collect();
        let n = parts.len();
        let mut next = vec![0i64; n];
        let mut evs: Vec<Vec<Ev>> = vec![Vec::new(); n];
        let mut inputs: Vec<Vec<(i64, HourBucket)>> = vec![Vec::new(); n];
        let mut rejected: Vec<Vec<i64>> = vec![Vec::new(); n];
        let mut sealed: Vec<Ranges> = vec![BTreeMap::new(); n];
        let mut stored: Vec<Vec<(i64, i64)>> = vec![Vec::new(); n];
        let mut commits: Vec<Option<i64>> = vec![None; n];
        let mut store: Vec<Object> = Vec::new();
        let mut queue: VecDeque<(usize, SealedFile)> = VecDeque::new();
        let mut now = 1_000_000i64;
        let (good, bad) = (value(true), value(false));

        // Stores the front file if its cut is committed; false when it must wait.
        let upload = |queue: &mut VecDeque<(usize, SealedFile)>,
                      writers: &mut [PartitionWriter],
                      stored: &mut [Vec<(i64, i64)>],
                      store: &mut Vec<Object>| {
            let Some((i, f)) = queue.front() else { return false };
            if !writers[*i].may_upload(f) {
                return false;
            }
            let (i, f) = queue.pop_front().unwrap();
            if f.batch.is_some() {
                assert!(store.iter().all(|o| o.name != f.name), "a fresh name");
                store.push(Object {
                    name: f.name.clone(),
                    bucket: f.bucket,
                    first: f.first,
                    last: f.last,
                    rows: row_offsets(&f),
                });
            }
            writers[i].stored(&f);
            stored[i].push((f.first, f.last));
            true
        };
        let enqueue = |i: usize, files: Vec<SealedFile>, queue: &mut VecDeque<(usize, SealedFile)>,
                       sealed: &mut [Ranges]| {
            for f in files {
                assert_eq!((f.topic.as_str(), f.partition), (topics[parts[i].0].0, parts[i].1));
                let e = sealed[i].entry((f.first, f.last)).or_insert((f.reason, BTreeSet::new()));
                assert_eq!(e.0, f.reason);
                assert!(e.1.insert(f.bucket), "one object per hour");
                queue.push_back((i, f));
            }
        };
        let commit_all = |writers: &mut [PartitionWriter], commits: &mut [Option<i64>],
                          inputs: &[Vec<(i64, HourBucket)>], stored: &[Vec<(i64, i64)>],
                          next: &[i64]| -> Result<(), String> {
            for i in 0..writers.len() {
                if let Some(c) = writers[i].committable() {
                    let offs: Vec<i64> = inputs[i].iter().map(|r| r.0).collect();
                    commit_is_safe(c.offset, &offs, &stored[i])?;
                    if commits[i].is_some_and(|p| c.offset < p) {
                        return Err("the commit went back".into());
                    }
                    if c.offset > next[i] {
                        return Err("past the next record to read".into());
                    }
                    prop_assert_eq_ok(Resume::parse(&c.metadata()).as_ref(), Some(&c.resume))?;
                    writers[i].committed(&c);
                    commits[i] = Some(c.offset);
                }
            }
            Ok(())
        };

        for op in &ops {
            match *op {
                Op::Rec { part, hour, gap, size, bad: is_bad } => {
                    let i = part % n;
                    let o = next[i] + gap;
                    next[i] = o + 1;
                    now += 10;
                    let v = if is_bad { &bad } else { &good };
                    let out = writers[i].write(&rec(v, parts[i].1, o, hour), size, now).unwrap();
                    // Raw topics keep undecodable bytes as rows.
                    let rejects = is_bad && topics[parts[i].0].1 != Kind::Raw;
                    match out.outcome {
                        Outcome::Rejected(_) => {
                            prop_assert!(rejects);
                            rejected[i].push(o);
                        }
                        Outcome::Appended => prop_assert!(!rejects),
                    }
                    prop_assert_eq!(out.buffered, size);
                    evs[i].push(Ev::Rec(o, b(hour), size, now));
                    inputs[i].push((o, b(hour)));
                    enqueue(i, out.sealed, &mut queue, &mut sealed);
                }
                Op::Tick(ms) => {
                    now += ms;
                    for i in 0..n {
                        evs[i].push(Ev::Tick(now));
                        let files = writers[i].seal_aged(now).unwrap();
                        enqueue(i, files, &mut queue, &mut sealed);
                    }
                }
                Op::Upload(k) => {
                    for _ in 0..k {
                        upload(&mut queue, &mut writers, &mut stored, &mut store);
                    }
                }
                Op::Commit => {
                    if let Err(e) = commit_all(&mut writers, &mut commits, &inputs, &stored, &next) {
                        prop_assert!(false, "{}", e);
                    }
                }
            }
        }
        // Shutdown: cut, commit the cuts, store and commit everything.
        for (i, w) in writers.iter_mut().enumerate() {
            let files = w.cut(Reason::Shutdown).unwrap();
            enqueue(i, files, &mut queue, &mut sealed);
        }
        while !queue.is_empty() {
            if !upload(&mut queue, &mut writers, &mut stored, &mut store)
                && let Err(e) = commit_all(&mut writers, &mut commits, &inputs, &stored, &next)
            {
                prop_assert!(false, "{}", e);
            }
        }
        if let Err(e) = commit_all(&mut writers, &mut commits, &inputs, &stored, &next) {
            prop_assert!(false, "{}", e);
        }
        for i in 0..n {
            let (t, p) = (topics[parts[i].0].0, parts[i].1);
            let got: Vec<(i64, i64, Reason, BTreeSet<HourBucket>)> =
                sealed[i].iter().map(|(k, v)| (k.0, k.1, v.0, v.1.clone())).collect();
            prop_assert_eq!(got, reference(&evs[i], cfg.rotation.limits, max_age_ms), "ranges of {}/{}", t, p);
            if let Some(&(last, _)) = inputs[i].last() {
                prop_assert_eq!(commits[i], Some(last + 1), "everything committed at the end");
            }
            // Each input offset exactly once: a row of one object or one dead letter.
            let mut copies: BTreeMap<i64, usize> = BTreeMap::new();
            for x in &store {
                let parsed = parse_object(&x.name).unwrap();
                if (parsed.topic.as_str(), parsed.partition) != (t, p) {
                    continue;
                }
                prop_assert_eq!((parsed.first_offset, parsed.last_offset), (x.first, x.last));
                prop_assert!(x.name.starts_with(&cfg.layout.dir(t, x.bucket)));
                for &o in &x.rows {
                    let bucket = inputs[i].iter().find(|r| r.0 == o).map(|r| r.1);
                    prop_assert_eq!(bucket, Some(x.bucket), "row {} in its hour's object", o);
                    prop_assert!(x.first <= o && o <= x.last);
                    *copies.entry(o).or_default() += 1;
                }
            }
            for &o in &rejected[i] {
                *copies.entry(o).or_default() += 1;
            }
            let want: BTreeMap<i64, usize> = inputs[i].iter().map(|r| (r.0, 1)).collect();
            prop_assert_eq!(copies, want, "copies per offset of {}/{}", t, p);
        }
    }

    /// One partition read by a succession of members. Each resumes from the last successful
    /// commit (offset and metadata), sees the records produced so far (its high watermark),
    /// may run with other limits than the last, cuts by time at random points, uploads and
    /// commits at random (commits refused at random), and loses the partition at a random
    /// point (a crash, an eviction, an expired session). What it had queued and was allowed to
    /// upload may still land at any later moment (a late upload by a member that lost the
    /// partition); it can never commit again. Then a clean member reads to the end.
    /// Required: every object name ever put twice holds the same rows both times (the second
    /// put is refused and changes nothing); every decodable record is a row of exactly one
    /// object (a multiset), in its hour's object inside its range; the objects' ranges form
    /// one chain (two ranges are equal or disjoint); every undecodable record is dead-lettered
    /// at least once; no commit ever passes a record outside a stored range.
    #[test]
    fn one_copy_of_every_record_whoever_resumes_and_whatever_lands_late(
        records in prop::collection::vec((0i64..6, prop::bool::weighted(0.1), 1u64..30), 1..150),
        lives in prop::collection::vec(
            (
                prop::collection::vec((prop::bool::weighted(0.15), 0usize..3, prop::bool::weighted(0.4), prop::bool::weighted(0.2), prop::bool::weighted(0.3)), 150),
                0usize..160,
                0usize..150,
                (1u64..8, 20u64..300, 1usize..4),
            ),
            0..5,
        ),
        last_limits in (1u64..8, 20u64..300, 1usize..4),
    ) {
        let (good, bad) = (value(true), value(false));
        let hour = |o: usize| records[o].0;
        // The store: name → rows, create-only.
        let mut store: BTreeMap<String, Object> = BTreeMap::new();
        let mut stored_ranges: Vec<(i64, i64)> = Vec::new();
        let mut refused_same = 0usize;
        let mut put = |f: &SealedFile, store: &mut BTreeMap<String, Object>| -> Result<(), String> {
            let rows = row_offsets(f);
            match store.get(&f.name) {
                Some(o) if o.rows != rows => Err(format!("{} put again with other rows: {:?} vs {:?}", f.name, o.rows, rows)),
                Some(_) => {
                    refused_same += 1;
                    Ok(())
                }
                None => {
                    store.insert(f.name.clone(), Object {
                        name: f.name.clone(),
                        bucket: f.bucket,
                        first: f.first,
                        last: f.last,
                        rows,
                    });
                    Ok(())
                }
            }
        };
        // The group coordinator's committed offset and metadata.
        let mut committed: Option<(i64, String)> = None;
        let mut dead: Vec<i64> = Vec::new();
        // Files members lost the partition with but were allowed to upload: they may land late.
        let mut late: Vec<SealedFile> = Vec::new();
        let mut avail = 0usize;
        let last_life = (vec![(false, 1usize, true, false, false); 150], usize::MAX, records.len(), last_limits);
        for (life, (steps, end_at, more, lim)) in lives.iter().chain([&last_life]).enumerate() {
            let clean = life == lives.len();
            let high = avail; // high watermark when the member gets the partition
            avail = (avail + more).min(records.len());
            if clean {
                avail = records.len();
            }
            let cfg = config(lim.0, lim.1, 1, lim.2);
            let mut w = PartitionWriter::new("SZ", 4, Kind::Reading, cfg);
            let start = committed.as_ref().map_or(0, |c| c.0) as usize;
            let r = committed.as_ref().and_then(|c| Resume::parse(&c.1));
            w.resume(r.as_ref(), Some(high as i64));
            let mut queue: VecDeque<SealedFile> = VecDeque::new();
            for (k, o) in (start..avail).enumerate() {
                if !clean && k == *end_at {
                    break;
                }
                let (cut, uploads, commit, refused, deliver_late) = steps.get(k).copied().unwrap_or_default();
                let v = if records[o].1 { &bad } else { &good };
                let out = w.write(&rec(v, 4, o as i64, hour(o)), records[o].2, 0).unwrap();
                if let Outcome::Rejected(_) = out.outcome {
                    dead.push(o as i64);
                }
                queue.extend(out.sealed);
                if cut {
                    queue.extend(w.cut(if refused { Reason::Memory } else { Reason::Age }).unwrap());
                }
                for _ in 0..uploads {
                    if queue.front().is_some_and(|f| w.may_upload(f)) {
                        let f = queue.pop_front().unwrap();
                        if let Err(e) = put(&f, &mut store) {
                            prop_assert!(false, "{}", e);
                        }
                        stored_ranges.push((f.first, f.last));
                        w.stored(&f);
                    }
                }
                if commit && !refused && let Some(c) = w.committable() {
                    let all: Vec<i64> = (0..avail as i64).collect();
                    if let Err(e) = commit_is_safe(c.offset, &all[..c.offset.min(avail as i64) as usize], &stored_ranges) {
                        prop_assert!(false, "{}", e);
                    }
                    prop_assert!(committed.as_ref().is_none_or(|p| c.offset >= p.0), "the commit never goes back");
                    committed = Some((c.offset, c.metadata()));
                    w.committed(&c);
                }
                // Something that landed late from an earlier member.
                if deliver_late && !late.is_empty() {
                    let f = late.remove(0);
                    if let Err(e) = put(&f, &mut store) {
                        prop_assert!(false, "{}", e);
                    }
                }
            }
            if clean {
                queue.extend(w.cut(Reason::Shutdown).unwrap());
                loop {
                    while queue.front().is_some_and(|f| w.may_upload(f)) {
                        let f = queue.pop_front().unwrap();
                        if let Err(e) = put(&f, &mut store) {
                            prop_assert!(false, "{}", e);
                        }
                        stored_ranges.push((f.first, f.last));
                        w.stored(&f);
                    }
                    if let Some(c) = w.committable() {
                        committed = Some((c.offset, c.metadata()));
                        w.committed(&c);
                    }
                    if queue.is_empty() {
                        break;
                    }
                }
                prop_assert!(w.committable().is_none());
            } else {
                // Lost the partition: what it was allowed to upload may land later.
                late.extend(queue.into_iter().filter(|f| w.may_upload(f)));
            }
        }
        // Every late upload lands in the end.
        for f in std::mem::take(&mut late) {
            if let Err(e) = put(&f, &mut store) {
                prop_assert!(false, "{}", e);
            }
        }
        prop_assert_eq!(committed.as_ref().map(|c| c.0), Some(records.len() as i64));
        let mut copies: BTreeMap<i64, usize> = BTreeMap::new();
        let ranges: BTreeSet<(i64, i64)> = store.values().map(|x| (x.first, x.last)).collect();
        let ranges: Vec<(i64, i64)> = ranges.into_iter().collect();
        for w in ranges.windows(2) {
            prop_assert!(w[0].1 < w[1].0, "ranges {:?} and {:?} overlap", w[0], w[1]);
        }
        for x in store.values() {
            for &o in &x.rows {
                prop_assert_eq!(b(hour(o as usize)), x.bucket);
                prop_assert!(x.first <= o && o <= x.last);
                *copies.entry(o).or_default() += 1;
            }
        }
        let want: BTreeMap<i64, usize> = (0..records.len())
            .filter(|o| !records[*o].1)
            .map(|o| (o as i64, 1))
            .collect();
        prop_assert_eq!(copies, want);
        for (o, r) in records.iter().enumerate() {
            if r.1 {
                prop_assert!(dead.contains(&(o as i64)), "offset {} dead-lettered", o);
            }
        }
        let _ = refused_same;
    }
}

fn prop_assert_eq_ok<T: PartialEq + std::fmt::Debug>(a: T, b: T) -> Result<(), String> {
    if a == b {
        Ok(())
    } else {
        Err(format!("{a:?} != {b:?}"))
    }
}
