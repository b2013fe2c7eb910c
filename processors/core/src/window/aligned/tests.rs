use super::*;
use proptest::prelude::*;

const T0: i64 = 1_700_000_040_000; // a multiple of 60 000

fn cfg(kind: AlignedKind, emit: Emit, grace_ms: i64, scope: WatermarkScope) -> AlignedConfig {
    AlignedConfig {
        kind,
        emit,
        grace_ms,
        scope,
    }
}

fn r(t: i64, v: f64) -> Reading {
    Reading { t, v }
}

fn run(c: AlignedConfig, arrivals: &[(&str, Reading)]) -> Vec<Option<Vec<Emission>>> {
    let mut e = AlignedEngine::new(c);
    arrivals
        .iter()
        .map(|&(client, x)| {
            let mut out = Vec::new();
            e.process(0, client, x, &mut out).ok().map(|()| out)
        })
        .collect()
}

/// Bitwise equality of two emissions (NaN-free, `-0.0` ≠ `0.0`).
fn same(a: &Emission, b: &Emission) -> bool {
    let (x, y) = (&a.aggregates, &b.aggregates);
    a.client == b.client
        && (a.start, a.end, a.time) == (b.start, b.end, b.time)
        && x.count == y.count
        && [x.sum, x.mean, x.min, x.max, x.integral, x.derivative]
            .iter()
            .zip([y.sum, y.mean, y.min, y.max, y.integral, y.derivative])
            .all(|(p, q)| p.to_bits() == q.to_bits())
}

#[test]
fn windows_are_aligned_to_the_epoch() {
    let tumbling = cfg(
        AlignedKind::Tumbling { size_ms: 60_000 },
        Emit::PerRecord,
        0,
        WatermarkScope::Partition,
    );
    assert_eq!(
        tumbling.windows_of(T0 + 59_999).collect::<Vec<_>>(),
        [(T0, T0 + 60_000)]
    );
    assert_eq!(
        tumbling.windows_of(T0 + 60_000).collect::<Vec<_>>(),
        [(T0 + 60_000, T0 + 120_000)]
    );
    assert_eq!(
        tumbling.windows_of(-1).collect::<Vec<_>>(),
        [(-60_000, 0)],
        "before the epoch"
    );
    let hopping = cfg(
        AlignedKind::Hopping {
            size_ms: 600_000,
            advance_ms: 60_000,
        },
        Emit::PerRecord,
        0,
        WatermarkScope::Partition,
    );
    let w: Vec<_> = hopping.windows_of(T0 + 30_000).collect();
    assert_eq!(w.len(), 10);
    assert_eq!(w[0], (T0 - 540_000, T0 + 60_000));
    assert_eq!(w[9], (T0, T0 + 600_000));
    // A start is inclusive: at exactly T0 the window starting at T0 − 600 000 is over.
    assert_eq!(hopping.windows_of(T0).count(), 10);
    assert_eq!(
        hopping.windows_of(T0).next(),
        Some((T0 - 540_000, T0 + 60_000))
    );
    let global = cfg(
        AlignedKind::Global,
        Emit::PerRecord,
        0,
        WatermarkScope::Client,
    );
    assert_eq!(
        global.windows_of(5).collect::<Vec<_>>(),
        [(i64::MIN, i64::MAX)]
    );
    for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
        assert!(hopping.windows_of(t).all(|(s, e)| s <= t && t <= e), "{t}");
        assert!(tumbling.windows_of(t).count() == 1, "{t}");
    }
}

#[test]
fn tumbling_per_record_updates_then_final_once() {
    let arrivals = [
        ("a", r(T0, 1.0)),
        ("a", r(T0 + 10_000, 3.0)),
        ("a", r(T0 + 60_000, 5.0)), // next window; closes [T0, T0+60 000) at grace 0
    ];
    let kind = AlignedKind::Tumbling { size_ms: 60_000 };
    let per = run(
        cfg(kind, Emit::PerRecord, 0, WatermarkScope::Partition),
        &arrivals,
    );
    let second = &per[1].as_ref().unwrap()[0];
    assert_eq!(
        (second.start, second.end, second.time),
        (T0, T0 + 60_000, T0 + 10_000)
    );
    let a = second.aggregates;
    assert_eq!(
        (a.count, a.sum, a.mean, a.min, a.max),
        (2, 4.0, 2.0, 1.0, 3.0)
    );
    assert_eq!(a.integral, 20.0, "(1 + 3) / 2 · 10 s");
    assert_eq!(a.derivative, 0.2);
    let fin = run(
        cfg(kind, Emit::Final, 0, WatermarkScope::Partition),
        &arrivals,
    );
    assert_eq!(fin[0].as_deref(), Some(&[][..]));
    assert_eq!(fin[1].as_deref(), Some(&[][..]));
    let closed = fin[2].as_ref().unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!((closed[0].start, closed[0].time), (T0, T0 + 59_999));
    let last_update = Emission {
        time: T0 + 59_999,
        ..second.clone()
    };
    assert!(
        same(&closed[0], &last_update),
        "the final value is the last update"
    );
}

#[test]
fn grace_holds_a_window_open_for_late_readings() {
    let c = cfg(
        AlignedKind::Tumbling { size_ms: 60_000 },
        Emit::Final,
        5_000,
        WatermarkScope::Partition,
    );
    let out = run(
        c,
        &[
            ("a", r(T0 + 1_000, 1.0)),
            ("a", r(T0 + 62_000, 2.0)), // watermark T0 + 57 000: still open
            ("a", r(T0 + 58_000, 4.0)), // out of order, within grace: joins [T0, T0+60 000)
            ("a", r(T0 + 66_000, 8.0)), // watermark T0 + 61 000: closes it
            ("a", r(T0 + 59_000, 9.0)), // below the watermark: late
        ],
    );
    let closed = out[3].as_ref().unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].aggregates.count, 2);
    assert_eq!(closed[0].aggregates.sum, 5.0);
    assert_eq!(out[4], None);
}

#[test]
fn partition_scope_closes_every_clients_windows_in_end_start_key_order() {
    let c = cfg(
        AlignedKind::Hopping {
            size_ms: 120_000,
            advance_ms: 60_000,
        },
        Emit::Final,
        0,
        WatermarkScope::Partition,
    );
    let out = run(
        c,
        &[
            ("b", r(T0 + 1, 1.0)),
            ("a", r(T0 + 2, 2.0)),
            ("c", r(T0 + 180_000, 3.0)), // watermark passes T0 + 60 000 and T0 + 120 000
        ],
    );
    let keys: Vec<(i64, &str)> = out[2]
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.end - T0, &*e.client))
        .collect();
    assert_eq!(
        keys,
        [(60_000, "a"), (60_000, "b"), (120_000, "a"), (120_000, "b")]
    );
}

#[test]
fn global_is_a_running_total_and_cannot_be_final() {
    let c = cfg(
        AlignedKind::Global,
        Emit::PerRecord,
        0,
        WatermarkScope::Client,
    );
    let out = run(
        c,
        &[
            ("a", r(T0, 1.5)),
            ("a", r(T0 + 1_000, 2.5)),
            ("a", r(T0 + 9_000_000_000, 4.0)),
        ],
    );
    let last = &out[2].as_ref().unwrap()[0];
    assert_eq!((last.start, last.end), (i64::MIN, i64::MAX));
    assert_eq!((last.aggregates.count, last.aggregates.sum), (3, 8.0));
    assert!(
        cfg(AlignedKind::Global, Emit::Final, 0, WatermarkScope::Client)
            .validate()
            .is_err()
    );
}

#[test]
fn configurations_out_of_bounds_are_refused() {
    let bad = [
        AlignedKind::Tumbling { size_ms: 0 },
        AlignedKind::Hopping {
            size_ms: 60_000,
            advance_ms: 120_000,
        },
        AlignedKind::Hopping {
            size_ms: 600_000,
            advance_ms: 1,
        },
        AlignedKind::Hopping {
            size_ms: 60_000,
            advance_ms: 0,
        },
    ];
    for kind in bad {
        assert!(
            cfg(kind, Emit::PerRecord, 0, WatermarkScope::Partition)
                .validate()
                .is_err(),
            "{kind:?}"
        );
    }
    assert!(
        cfg(
            AlignedKind::Tumbling { size_ms: 60_000 },
            Emit::PerRecord,
            -1,
            WatermarkScope::Partition
        )
        .validate()
        .is_err()
    );
}

#[test]
fn idle_clients_are_dropped_under_partition_scope() {
    let c = cfg(
        AlignedKind::Tumbling { size_ms: 60_000 },
        Emit::PerRecord,
        0,
        WatermarkScope::Partition,
    );
    let mut e = AlignedEngine::new(c);
    let mut out = Vec::new();
    for k in 0..100 {
        e.process(0, &format!("c{k}"), r(T0 + k, 1.0), &mut out)
            .unwrap();
    }
    assert_eq!(e.stats().0, 100);
    e.process(0, "z", r(T0 + 600_000, 1.0), &mut out).unwrap();
    assert_eq!(e.stats(), (1, 1, 1), "only z's window is open");
}

fn arrivals() -> impl Strategy<Value = Vec<(usize, i64, f64)>> {
    // Three clients, times jittered around a drifting clock, values on a decimal grid or
    // arbitrary (the exact-sum paths).
    prop::collection::vec(
        (
            0usize..3,
            -20_000i64..60_000,
            prop_oneof![
                (-500i32..500).prop_map(|x| f64::from(x) / 10.0),
                -1e6f64..1e6
            ],
        ),
        0..60,
    )
    .prop_map(|v| {
        let mut clock = T0 - 123_456;
        v.into_iter()
            .map(|(c, dt, x)| {
                clock += dt.max(0) / 4;
                (c, clock + dt, x)
            })
            .collect()
    })
}

fn kinds() -> impl Strategy<Value = AlignedKind> {
    prop_oneof![
        (1i64..200_000).prop_map(|size_ms| AlignedKind::Tumbling { size_ms }),
        (1i64..8, 1i64..50_000).prop_map(|(n, advance_ms)| AlignedKind::Hopping {
            size_ms: advance_ms * n + advance_ms / 3,
            advance_ms,
        }),
        Just(AlignedKind::Global),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    #[test]
    fn engine_equals_naive_reference(
        seq in arrivals(),
        kind in kinds(),
        final_emit in any::<bool>(),
        grace in prop_oneof![Just(0i64), 1i64..60_000],
        client_scope in any::<bool>(),
    ) {
        let scope = if client_scope { WatermarkScope::Client } else { WatermarkScope::Partition };
        let emit = if final_emit { Emit::Final } else { Emit::PerRecord };
        let c = cfg(kind, emit, grace, scope);
        prop_assume!(c.validate().is_ok());
        let names = ["a", "b", "c"];
        let arrivals: Vec<(&str, Reading)> =
            seq.iter().map(|&(i, t, v)| (names[i], Reading { t, v })).collect();
        let slow = reference(c, &arrivals);
        let fast = run(c, &arrivals);
        for (k, (f, s)) in fast.iter().zip(&slow).enumerate() {
            match (f, s) {
                (Some(f), Some(s)) => {
                    prop_assert_eq!(f.len(), s.len(), "reading {}: {:?} vs {:?}", k, f, s);
                    for (x, y) in f.iter().zip(s) {
                        prop_assert!(same(x, y), "reading {}: {:?} vs {:?}", k, x, y);
                    }
                }
                (None, None) => {}
                _ => prop_assert!(false, "reading {k}: fast {f:?} vs reference {s:?}"),
            }
        }
    }

    #[test]
    fn tumbling_final_accounts_for_every_accepted_reading_once(
        seq in arrivals(),
        size_ms in 1i64..200_000,
    ) {
        // Each accepted reading is in exactly one tumbling window; once a far-ahead reading
        // closes them all, the final counts add up to the accepted readings.
        let c = cfg(AlignedKind::Tumbling { size_ms }, Emit::Final, 0, WatermarkScope::Partition);
        let mut arrivals: Vec<(&str, Reading)> =
            seq.iter().map(|&(i, t, v)| (["a", "b", "c"][i], Reading { t, v })).collect();
        arrivals.push(("flush", Reading { t: T0 + 10_000_000_000, v: 0.0 }));
        let out = run(c, &arrivals);
        let accepted = out[..out.len() - 1].iter().filter(|o| o.is_some()).count();
        let counted: u32 = out.iter().flatten().flatten().map(|e| e.aggregates.count).sum();
        prop_assert_eq!(counted as usize, accepted);
    }
}
