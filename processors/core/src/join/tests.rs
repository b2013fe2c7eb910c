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
            index: 0,
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
    // Within the grace (100 ≥ 200 − 150), so it is not late in its own input's order.
    let mut j = PartitionJoin::new(cfg(150, 600_000), NOW);
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

/// SX, SY and the three features of one client at `t`, offset `o`, applied at wall time `now`.
fn all_five(j: &mut PartitionJoin, t: i64, o: i64, now: i64, out: &mut Vec<JoinEvent>) {
    j.apply("c", sx(1, t), o, 0, false, now, out);
    j.apply("c", sy(1, t), o, 0, false, now, out);
    for kind in [InputKind::Fa, InputKind::Fi, InputKind::Fd] {
        j.apply("c", feat(kind, 1, t, o), o, 0, false, now, out);
    }
}

#[test]
fn an_input_with_only_late_records_goes_idle_and_stops_holding_the_watermark() {
    let mut j = idle_5s_input_60s();
    let mut out = vec![];
    // Everything flows for 10 s; then SY receives only records far behind (late), once a
    // second, while the other four go on.
    for k in 0..10 {
        all_five(&mut j, k * 1000, k, k * 1000, &mut out);
    }
    let held_at = j.watermark();
    for k in 10..200 {
        let now = k * 1000;
        j.apply("c", sx(1, k * 1000), k, 0, false, now, &mut out);
        for kind in [InputKind::Fa, InputKind::Fi, InputKind::Fd] {
            j.apply("c", feat(kind, 1, k * 1000, k), k, 0, false, now, &mut out);
        }
        let late = j.apply("c", sy(1, 0), 1000 + k, 0, false, now, &mut out);
        assert!(matches!(late, Applied::Late { .. }), "{late:?}");
        j.advance(now, &mut out);
    }
    // A late record is no activity: SY went idle after 60 s, and the watermark went on
    // (before, each late record refreshed SY's idle clock and the watermark stayed put for
    // ever, with every trigger of the partition held).
    assert!(
        j.watermark() > held_at + 100_000,
        "{} vs {held_at}",
        j.watermark()
    );
    assert!(j.held() < 70 * 2, "held {}", j.held());
}

#[test]
fn a_paused_input_is_never_idle_and_inputs_ahead_are_named() {
    let mut j = idle_5s_input_60s();
    let mut out = vec![];
    for k in 0..10 {
        all_five(&mut j, k * 1000, k, k * 1000, &mut out);
    }
    // SX runs 100 s ahead; the others stay at 9 s.
    j.apply("c", sx(1, 109_000), 10, 0, false, 10_000, &mut out);
    j.advance(10_000, &mut out);
    assert_eq!(j.ahead(), [true, false, false, false, false]);
    // Paused, SX is not idle however long it stays silent: the others are, all-quiet after
    // 5 s, and without the pause the watermark would jump past SX's unfetched records.
    for k in InputKind::ALL {
        j.set_paused(k, true, 10_000);
    }
    let w = j.watermark();
    j.advance(1_000_000, &mut out);
    assert_eq!(j.watermark(), w, "paused inputs hold the watermark");
    // Resumed, each idle clock starts again: not idle at once.
    for k in InputKind::ALL {
        j.set_paused(k, false, 1_000_000);
    }
    j.advance(1_001_000, &mut out);
    assert_eq!(j.watermark(), w, "just resumed: not idle yet");
    j.advance(1_010_000, &mut out);
    assert!(j.watermark() > 109_000, "resumed and silent: idle");
}

#[test]
fn force_release_dead_letters_the_oldest_triggers_and_frees_their_offsets() {
    let mut j = PartitionJoin::new(cfg(0, 600_000), NOW);
    let mut out = vec![];
    // SX and SY at 0..10 s; no features: every trigger is held.
    for k in 0..10 {
        j.apply("c", sx(1, k * 1000), k, 0, false, NOW, &mut out);
        j.apply("c", sy(1, k * 1000), k, 0, false, NOW, &mut out);
    }
    assert_eq!((j.held(), out.len()), (20, 0));
    assert_eq!(j.commit_limit(InputKind::Sx), Some(0));
    j.force_release(4, NOW, &mut out);
    let reasons: Vec<(SkipReason, i64)> = out
        .iter()
        .map(|e| match e {
            JoinEvent::Skipped {
                reason,
                event_time_ms,
                ..
            } => (*reason, *event_time_ms),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (SkipReason::Overflow, 0),
            (SkipReason::Overflow, 0),
            (SkipReason::Overflow, 1000),
            (SkipReason::Overflow, 1000)
        ]
    );
    assert_eq!(j.held(), 16);
    assert_eq!(
        j.commit_limit(InputKind::Sx),
        Some(2),
        "released offsets may be committed"
    );
    // The watermark moved past them: a record at their time is late now.
    let late = j.apply(
        "c",
        feat(InputKind::Fa, 1, 1000, 7),
        0,
        0,
        false,
        NOW,
        &mut out,
    );
    assert!(matches!(late, Applied::Late { .. }), "{late:?}");
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
        offsets in prop::collection::vec((0i64..30, 0u32..3), 0..80),
        probes in prop::collection::vec((0i64..35, 0u32..4), 0..40),
    ) {
        // Several triples of one SZ offset (hopping windows, final emissions) by their index.
        let seq = |&(offset, index): &(i64, u32)| SzSource { partition: 0, offset, index }.seq();
        let offsets: Vec<i128> = offsets.iter().map(seq).collect();
        let probes: Vec<i128> = probes.iter().map(seq).collect();
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
            index: 0,
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

/// Like [`partition`], but every input out of event-time order: each record's time is its
/// place in the stream plus up to ±1 unit of clock jitter (the three features of one SZ
/// reading share its time, as the window-processor writes them).
fn jittered_partition() -> impl Strategy<Value = Vec<Vec<(&'static str, JoinInput, i64)>>> {
    let reading = (any::<bool>(), 0i64..3, -1i64..=1, 0i64..9);
    let sz = (
        any::<bool>(),
        0i64..3,
        -1i64..=1,
        [0u32..10, 0u32..10, 0u32..10],
        0u8..14,
    );
    (
        prop::collection::vec(reading.clone(), 0..14),
        prop::collection::vec(reading, 0..14),
        prop::collection::vec(sz, 0..14),
    )
        .prop_map(|(xs, ys, zs)| {
            let u = 1000;
            let name = |b: bool| if b { "a" } else { "b" };
            let readings = |rs: &[(bool, i64, i64, i64)], f: fn(i64, i64) -> JoinInput| {
                let mut t = 10 * u;
                rs.iter()
                    .enumerate()
                    .map(|(o, &(c, dt, j, v))| {
                        t += dt * u;
                        (name(c), f(v, t + j * u), o as i64)
                    })
                    .collect::<Vec<_>>()
            };
            let mut f: [Vec<(&'static str, JoinInput, i64)>; 3] = Default::default();
            let mut t = 10 * u;
            for (src, &(c, dt, j, bins, drop)) in zs.iter().enumerate() {
                t += dt * u;
                for slot in 0..3 {
                    if drop as usize != slot + 11 {
                        let kind = [InputKind::Fa, InputKind::Fi, InputKind::Fd][slot];
                        let off = f[slot].len() as i64;
                        f[slot].push((name(c), feat(kind, bins[slot], t + j * u, src as i64), off));
                    }
                }
            }
            let [fa, fi, fd] = f;
            vec![readings(&xs, sx), readings(&ys, sy), fa, fi, fd]
        })
}

/// One input record's outcome, as the runtime produces it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Event(JoinEvent),
    Late(RecordRef),
}

/// A join with the runtime's outbox: outcomes come out only once every record they belong to
/// is clear of its input's commit limit.
struct Harness {
    j: PartitionJoin,
    ob: Outbox<Outcome>,
    out: Vec<Outcome>,
}

impl Harness {
    fn new(c: JoinConfig) -> Self {
        Self {
            j: PartitionJoin::new(c, NOW),
            ob: Outbox::default(),
            out: Vec::new(),
        }
    }

    fn apply(&mut self, client: &str, input: JoinInput, offset: i64, replay: bool) {
        let mut ev = Vec::new();
        let a = self.j.apply(client, input, offset, 0, replay, NOW, &mut ev);
        self.route(ev);
        if let Applied::Late { .. } = a
            && !replay
        {
            let r = RecordRef {
                input: input.kind(),
                offset,
            };
            let j = &self.j;
            self.ob
                .offer([r], Outcome::Late(r), |k| j.commit_limit(k), &mut self.out);
        }
        let j = &self.j;
        self.ob.drain(|k| j.commit_limit(k), &mut self.out);
    }

    fn route(&mut self, ev: Vec<JoinEvent>) {
        let j = &self.j;
        for e in ev {
            let records = e.records().into_iter().flatten();
            self.ob.offer(
                records,
                Outcome::Event(e),
                |k| j.commit_limit(k),
                &mut self.out,
            );
        }
    }

    /// The end of the stream: every input idle.
    fn finish(&mut self) {
        let ev = flush(&mut self.j);
        self.route(ev);
        let j = &self.j;
        self.ob.drain(|k| j.commit_limit(k), &mut self.out);
        assert!(self.ob.is_empty(), "outcomes held after the end");
    }

    /// Per input, the offset a commit now would store: the first pinned record, or one past
    /// the last consumed (`consumed`), or 0.
    fn commit_points(&self, consumed: &[(&str, JoinInput, i64)]) -> [i64; 5] {
        InputKind::ALL.map(|k| {
            self.j.commit_limit(k).unwrap_or_else(|| {
                consumed
                    .iter()
                    .filter(|(_, r, _)| r.kind() == k)
                    .map(|(_, _, o)| o + 1)
                    .max()
                    .unwrap_or(0)
            })
        })
    }
}

fn reference_multiset(
    c: JoinConfig,
    parts: &[Vec<(&'static str, JoinInput, i64)>],
) -> Vec<Outcome> {
    let all: Vec<(&str, RefRecord)> = parts
        .iter()
        .flatten()
        .map(|&(cl, input, offset)| (cl, RefRecord { input, offset }))
        .collect();
    let (events, late) = reference_outcomes(c, &all);
    let mut want: Vec<Outcome> = events.into_iter().map(Outcome::Event).collect();
    want.extend(late.into_iter().map(Outcome::Late));
    want.sort();
    want
}

/// The rebuild after a restart: every record below its input's commit point, except those
/// routed late before (the runtime reads them back from the late topic), merged by event time
/// across the inputs, each input in offset order, applied without producing anything.
fn rebuild(
    h: &mut Harness,
    parts: &[Vec<(&'static str, JoinInput, i64)>],
    committed: &[i64; 5],
    routed_late: &[RecordRef],
) {
    let mut queues: Vec<std::collections::VecDeque<(&str, JoinInput, i64)>> = parts
        .iter()
        .map(|p| {
            p.iter()
                .filter(|(_, r, o)| {
                    *o < committed[r.kind().idx()]
                        && !routed_late.contains(&RecordRef {
                            input: r.kind(),
                            offset: *o,
                        })
                })
                .copied()
                .collect()
        })
        .collect();
    while let Some(i) = (0..5)
        .filter(|&i| !queues[i].is_empty())
        .min_by_key(|&i| queues[i][0].1.event_time_ms())
    {
        if let Some((cl, r, o)) = queues[i].pop_front() {
            h.apply(cl, r, o, true);
        }
    }
    assert!(h.out.is_empty(), "a rebuild produced {:?}", h.out);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Inputs out of event-time order: every interleaving gives the same multiset of
    /// outcomes (events and late records), equal to the reference, and each input record has
    /// exactly one (lateness is decided by the record's own input partition's order).
    #[test]
    fn jittered_inputs_give_the_reference_outcomes_in_every_interleaving(
        parts in jittered_partition(),
        orders in prop::collection::vec(prop::collection::vec(0usize..5, 0..150), 1..5),
        grace in prop_oneof![Just(0i64), Just(1000), Just(2000)],
        stale in prop_oneof![Just(2500i64), Just(1_000_000)],
    ) {
        let c = cfg(grace, stale);
        let want = reference_multiset(c, &parts);
        for picks in &orders {
            let mut h = Harness::new(c);
            for &(cl, r, o) in &interleave(&parts, picks) {
                h.apply(cl, r, o, false);
            }
            h.finish();
            let mut got = std::mem::take(&mut h.out);
            got.sort();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(InputKind::ALL.map(|k| h.j.commit_limit(k)), [None; 5]);
        }
    }

    /// A commit after any prefix, a crash after a longer one, then a restart that rebuilds
    /// below the commit points and re-consumes from them (in another interleaving):
    /// - ExactlyOnce (what was produced after the commit is aborted): the outcomes before the
    ///   commit and after the restart are the reference's, as a multiset: none lost, none twice;
    /// - AtLeastOnce (what was produced after the commit stays): every outcome produced twice
    ///   is an identical repeat, and together they are the reference's set.
    #[test]
    fn a_restart_from_the_commit_points_gives_each_record_one_outcome(
        parts in jittered_partition(),
        picks in prop::collection::vec(0usize..5, 0..150),
        again in prop::collection::vec(0usize..5, 0..150),
        commit_at in 0usize..70,
        crash_after in 0usize..30,
        grace in prop_oneof![Just(0i64), Just(1000), Just(2000)],
    ) {
        let c = cfg(grace, 1_000_000);
        let want = reference_multiset(c, &parts);
        let seq = interleave(&parts, &picks);
        let commit_at = commit_at.min(seq.len());
        let crash_at = (commit_at + crash_after).min(seq.len());
        let mut first = Harness::new(c);
        for &(cl, r, o) in &seq[..commit_at] {
            first.apply(cl, r, o, false);
        }
        let committed = first.commit_points(&seq[..commit_at]);
        let before_commit = first.out.clone();
        for &(cl, r, o) in &seq[commit_at..crash_at] {
            first.apply(cl, r, o, false);
        }
        let before_crash = first.out.clone();
        // Every outcome out before the commit belongs to records below the commit points.
        for o in &before_commit {
            let records = match o {
                Outcome::Event(e) => e.records().into_iter().flatten().collect::<Vec<_>>(),
                Outcome::Late(r) => vec![*r],
            };
            prop_assert!(
                records.iter().any(|r| r.offset < committed[r.input.idx()]),
                "{:?} out before the commit, above every commit point", o
            );
        }
        for (view, before) in [("exactly-once", &before_commit), ("at-least-once", &before_crash)] {
            let late: Vec<RecordRef> = before
                .iter()
                .filter_map(|o| if let Outcome::Late(r) = o { Some(*r) } else { None })
                .collect();
            let mut h = Harness::new(c);
            rebuild(&mut h, &parts, &committed, &late);
            let rest: Vec<Vec<(&'static str, JoinInput, i64)>> = parts
                .iter()
                .map(|p| p.iter().filter(|(_, r, o)| *o >= committed[r.kind().idx()]).copied().collect())
                .collect();
            for &(cl, r, o) in &interleave(&rest, &again) {
                h.apply(cl, r, o, false);
            }
            h.finish();
            let mut all: Vec<Outcome> = before.iter().cloned().chain(h.out).collect();
            all.sort();
            if view == "exactly-once" {
                prop_assert_eq!(&all, &want, "{}", view);
            } else {
                all.dedup();
                let mut set = want.clone();
                set.dedup();
                prop_assert_eq!(&all, &set, "{}", view);
            }
        }
    }
}
