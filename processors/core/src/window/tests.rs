use super::*;
use proptest::prelude::*;

fn cfg(size: i64, grace: i64, scope: WatermarkScope) -> WindowConfig {
    WindowConfig {
        size_ms: size,
        grace_ms: grace,
        scope,
    }
}

fn emit(o: Outcome) -> Aggregates {
    match o {
        Outcome::Emit(a) => a,
        Outcome::Late { .. } => panic!("unexpected late"),
    }
}

use num_bigint::{BigInt, Sign};

/// `x` as an exact integer multiple of 2^-1074.
fn exact(x: f64) -> BigInt {
    if x == 0.0 {
        return BigInt::from(0);
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as usize;
    let frac = bits & ((1u64 << 52) - 1);
    let (m, shift) = if exp == 0 {
        (frac, 0)
    } else {
        (frac | (1u64 << 52), exp - 1)
    };
    let v = BigInt::from(m) << shift;
    if bits >> 63 == 1 { -v } else { v }
}

/// `num / den` (den > 0) rounded once to the nearest double, ties to even (normal range).
fn round_ratio(num: &BigInt, den: &BigInt) -> f64 {
    let neg = num.sign() == Sign::Minus;
    let n = num.magnitude().clone();
    let d = den.magnitude().clone();
    if n.bits() == 0 {
        return 0.0;
    }
    // Scale so the integer quotient has at least 55 bits.
    let shift = 55 + d.bits() as i64 - n.bits() as i64;
    let (sn, sd) = if shift >= 0 {
        (n << shift as usize, d)
    } else {
        (n, d << (-shift) as usize)
    };
    let q = &sn / &sd;
    let r_nonzero = (&sn % &sd).bits() != 0;
    let extra = q.bits() as i64 - 53;
    assert!(extra >= 2);
    let mant = &q >> extra as usize;
    let low = &q - (&mant << extra as usize);
    let half = num_bigint::BigUint::from(1u8) << (extra - 1) as usize;
    let mut m = mant.to_u64_digits().first().copied().unwrap_or(0);
    if low > half || (low == half && (r_nonzero || m & 1 == 1)) {
        m += 1;
    }
    let e = (extra - shift) as i32; // value = m · 2^e
    let v = (m as f64) * 2f64.powi(e / 2) * 2f64.powi(e - e / 2);
    if neg { -v } else { v }
}

/// FA and FI of a sorted window from exact big-integer arithmetic (the module's definition).
fn exact_mean_integral(w: &[Reading]) -> (f64, f64) {
    let unit = BigInt::from(1) << 1074usize;
    let sum: BigInt = w.iter().map(|r| exact(r.v)).sum();
    let area: BigInt = w
        .windows(2)
        .map(|p| (exact(p[0].v) + exact(p[1].v)) * BigInt::from(p[1].t - p[0].t))
        .sum();
    if w.len() == 1 {
        return (w[0].v, 0.0);
    }
    let mean = round_ratio(&sum, &unit) / w.len() as f64;
    let integral = round_ratio(&area, &(unit * BigInt::from(2000)));
    (mean, integral)
}

/// Bit equality with the exact reference (FA, FI) and with the definition of FD.
fn assert_exact(fast: &Aggregates, w: &[Reading]) -> Result<(), TestCaseError> {
    prop_assert_eq!(fast.count as usize, w.len());
    let (mean, integral) = exact_mean_integral(w);
    // The sum is the mean's numerator: the exact sum rounded once (the reading, for one).
    let sum = if w.len() == 1 {
        w[0].v
    } else {
        round_ratio(
            &w.iter().map(|r| exact(r.v)).sum(),
            &(BigInt::from(1) << 1074usize),
        )
    };
    prop_assert_eq!(
        fast.sum.to_bits(),
        sum.to_bits(),
        "sum {} vs exact {}",
        fast.sum,
        sum
    );
    prop_assert_eq!(
        fast.mean.to_bits(),
        mean.to_bits(),
        "FA {} vs exact {}",
        fast.mean,
        mean
    );
    prop_assert_eq!(
        fast.integral.to_bits(),
        integral.to_bits(),
        "FI {} vs exact {}",
        fast.integral,
        integral
    );
    let d = derivative(w[0], w[w.len() - 1]);
    prop_assert_eq!(fast.derivative.to_bits(), d.to_bits());
    Ok(())
}

#[test]
fn round_ratio_reference_is_sane() {
    let one = BigInt::from(1);
    assert_eq!(round_ratio(&BigInt::from(1), &BigInt::from(10)), 0.1);
    assert_eq!(round_ratio(&BigInt::from(-2), &BigInt::from(3)), -2.0 / 3.0);
    assert_eq!(round_ratio(&exact(17.1), &(one << 1074usize)), 17.1);
}

#[test]
fn one_reading_windows_are_the_reading_bit_for_bit() {
    // Readings exactly one window apart: every window holds one reading.
    let mut e = WindowEngine::new(cfg(600_000, 0, WatermarkScope::Partition));
    for (k, v) in [17.1, 0.1, -0.0, 1e12, 3.3e-7, 2.675]
        .into_iter()
        .enumerate()
    {
        let a = emit(e.process(
            0,
            "c",
            Reading {
                t: k as i64 * 600_000,
                v,
            },
        ));
        assert_eq!(
            (a.count, a.mean.to_bits(), a.integral),
            (1, v.to_bits(), 0.0)
        );
    }
}

#[test]
fn a_window_does_not_remember_what_was_evicted() {
    // The same two-reading window after very different histories: identical features.
    let tail = [
        Reading {
            t: 10_000_000,
            v: 0.1,
        },
        Reading {
            t: 10_060_000,
            v: 0.2,
        },
    ];
    let mut got = Vec::new();
    for history in [vec![], vec![1e12, -3.7, 1e-3, 0.3], vec![0.7; 1000]] {
        let mut e = WindowEngine::new(cfg(600_000, 0, WatermarkScope::Client));
        for (k, v) in history.iter().enumerate() {
            e.process(
                0,
                "c",
                Reading {
                    t: 8_000_000 + k as i64,
                    v: *v,
                },
            );
        }
        e.process(0, "c", tail[0]);
        got.push(emit(e.process(0, "c", tail[1])));
    }
    assert!(got.windows(2).all(|w| w[0] == w[1]), "{got:?}");
    // (0.1 + 0.2) · 60 000 / 2000 = 9.000000000000000499…, rounded once: 9.
    assert_eq!(got[0].integral, 9.0);
    // The exact 0.1 + 0.2 is a tie between two doubles; to even: 0.30000000000000004.
    assert_eq!(got[0].mean, 0.30000000000000004 / 2.0);
}

#[test]
fn times_near_the_i64_limits_do_not_panic() {
    for (size, grace) in [(600_000, 30_000), (1, 0), (MAX_SPAN_MS - 1, 1)] {
        let mut e = WindowEngine::new(cfg(size, grace, WatermarkScope::Partition));
        for t in [
            i64::MIN,
            i64::MIN + 1,
            -1,
            0,
            i64::MAX - 1,
            i64::MAX,
            i64::MIN,
            i64::MAX,
        ] {
            let _ = e.process(0, "c", Reading { t, v: 1.5 });
            let _ = e.process(1, "d", Reading { t, v: -2.5 });
        }
        let mut e = WindowEngine::new(cfg(size, grace, WatermarkScope::Client));
        for t in [i64::MAX - 5, i64::MAX - 3, i64::MAX - 4, i64::MAX] {
            let _ = e.process(0, "c", Reading { t, v: 1.0 });
        }
        let a = emit(e.process(
            0,
            "z",
            Reading {
                t: i64::MAX,
                v: 1.0,
            },
        ));
        assert_eq!(a.count, 1);
        let a = emit(e.process(
            0,
            "z",
            Reading {
                t: i64::MAX,
                v: 3.0,
            },
        ));
        assert_eq!((a.count, a.mean), (2, 2.0));
        for t in [i64::MIN, i64::MIN + 2, i64::MIN + 1] {
            let _ = e.process(0, "m", Reading { t, v: 1.0 });
        }
    }
    assert_eq!(
        reference_features(
            WindowConfig::default(),
            &[(
                "c",
                Reading {
                    t: i64::MIN,
                    v: 1.0
                }
            )]
        )
        .len(),
        1
    );
}

proptest! {
    #[test]
    fn packed_keys_are_equal_exactly_when_the_bytes_are(
        a in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(0u8)], 0..30),
        b in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(0u8)], 0..30),
    ) {
        // Few distinct bytes, so equal and nearly equal keys of every length are common.
        match (PackedKey::new(&a), PackedKey::new(&b)) {
            (Some(x), Some(y)) => prop_assert_eq!(x == y, a == b, "{:?} {:?}", a, b),
            (x, y) => {
                prop_assert_eq!(x.is_none(), a.len() > PACKED_KEY);
                prop_assert_eq!(y.is_none(), b.len() > PACKED_KEY);
            }
        }
        let mut index = ClientIndex::default();
        index.insert(&a, 1);
        index.insert(&b, 2);
        prop_assert_eq!(index.len(), if a == b { 1 } else { 2 });
        prop_assert_eq!(index.get(&b), Some(2));
        prop_assert_eq!(index.get(&a), Some(if a == b { 2 } else { 1 }));
        let held = index.get(&a);
        prop_assert_eq!(index.remove(&a), held);
        prop_assert_eq!(index.get(&a), None);
        prop_assert_eq!(index.get(&b), if a == b { None } else { Some(2) });
    }
}

#[test]
fn batches_equal_one_call_per_reading() {
    // Above 4 096 clients (state beyond L1/L2); two partitions, out-of-order, late and
    // idle (swept) clients, keys short (inline) and long (heap).
    let mut x: u64 = 7;
    let mut next = move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x >> 33
    };
    let keys: Vec<String> = (0..6_000)
        .map(|c| {
            if c % 7 == 0 {
                format!("a-rather-long-client-key-{c:08}")
            } else {
                format!("c{c}")
            }
        })
        .collect();
    let mut t = 1_000_000i64;
    let batch: Vec<(i32, &str, Reading)> = (0..60_000)
        .map(|_| {
            t += (next() % 50) as i64;
            let jitter = if next() % 10 == 0 {
                (next() % 40_000) as i64
            } else {
                0
            };
            let v = (next() % 100_000) as f64 * 0.01 - if next() % 50 == 0 { 1e-9 } else { 0.0 };
            let c = (next() % keys.len() as u64) as usize;
            (
                (next() % 2) as i32,
                keys[c].as_str(),
                Reading { t: t - jitter, v },
            )
        })
        .collect();
    let c = cfg(600_000, 20_000, WatermarkScope::Partition);
    let mut one = WindowEngine::new(c);
    let want: Vec<Outcome> = batch
        .iter()
        .map(|&(p, k, r)| one.process(p, k, r))
        .collect();
    let mut batched = WindowEngine::new(c);
    let mut got = Vec::new();
    for part in batch.chunks(1000) {
        batched.process_batch(part, &mut got);
    }
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        match (g, w) {
            (Outcome::Emit(a), Outcome::Emit(b)) => {
                assert_eq!(
                    (
                        a.mean.to_bits(),
                        a.integral.to_bits(),
                        a.derivative.to_bits(),
                        a.count
                    ),
                    (
                        b.mean.to_bits(),
                        b.integral.to_bits(),
                        b.derivative.to_bits(),
                        b.count
                    ),
                    "reading {k}"
                );
            }
            _ => assert_eq!(g, w, "reading {k}"),
        }
    }
    assert!(want.iter().any(|o| matches!(o, Outcome::Late { .. })));
    assert_eq!(one.stats(), batched.stats());
}

#[test]
fn single_reading() {
    let mut e = WindowEngine::new(WindowConfig::default());
    let a = emit(e.process(0, "c", Reading { t: 1_000, v: 2.5 }));
    assert_eq!(a.count, 1);
    assert_eq!(a.mean, 2.5);
    assert_eq!(a.integral, 0.0);
    assert_eq!(a.derivative, 0.0);
}

#[test]
fn hand_computed_window() {
    let mut e = WindowEngine::new(WindowConfig::default());
    e.process(0, "c", Reading { t: 0, v: 1.0 });
    e.process(0, "c", Reading { t: 60_000, v: 3.0 });
    let a = emit(e.process(0, "c", Reading { t: 120_000, v: 2.0 }));
    assert_eq!(a.count, 3);
    assert_eq!(a.mean, 2.0);
    // (1+3)/2·60 + (3+2)/2·60 = 120 + 150
    assert_eq!(a.integral, 270.0);
    // (2 − 1) / 120 s
    assert!((a.derivative - 1.0 / 120.0).abs() < 1e-15);
}

#[test]
fn eviction_at_exactly_the_window_size() {
    let mut e = WindowEngine::new(WindowConfig::default());
    e.process(0, "c", Reading { t: 0, v: 10.0 });
    let a = emit(e.process(0, "c", Reading { t: 600_000, v: 2.0 }));
    // t = 0 is not > 600 000 − 600 000: evicted.
    assert_eq!(a.count, 1);
    assert_eq!(a.mean, 2.0);
    let mut e = WindowEngine::new(WindowConfig::default());
    e.process(0, "c", Reading { t: 1, v: 10.0 });
    let a = emit(e.process(0, "c", Reading { t: 600_000, v: 2.0 }));
    assert_eq!(a.count, 2, "t = 1 > 0 stays in");
}

#[test]
fn an_out_of_order_oldest_reading_is_evicted_exactly() {
    // A reading inserted out of order at the start of the live region becomes the oldest
    // live reading, whose fixed-point value the in-order path keeps cached; evicting it
    // later must remove exactly its value and trapezoid, in and out of the fixed-point range.
    let c = cfg(1_000, 5_000, WatermarkScope::Partition);
    for v in [2.5, -0.0, 1e12, 1e-9, 17.1] {
        let arrivals = [
            ("a", Reading { t: 10_000, v: 1.25 }),
            ("a", Reading { t: 10_500, v: 3.0 }),
            // In the window of 10 500 (> 9 500), before 10 000: the new oldest live reading.
            ("a", Reading { t: 9_600, v }),
            // Evicts 9 600, then 10 000.
            ("a", Reading { t: 10_700, v: 0.5 }),
            ("a", Reading { t: 11_050, v: 7.0 }),
            ("a", Reading { t: 11_060, v: 1e12 }),
            ("a", Reading { t: 12_000, v: 0.25 }),
        ];
        let want = reference_features(c, &arrivals);
        let mut e = WindowEngine::new(c);
        for (k, &(client, r)) in arrivals.iter().enumerate() {
            let got = emit(e.process(0, client, r));
            let Some(w) = want[k] else {
                panic!("reading {k} is not late")
            };
            let bits = |a: &Aggregates| {
                (
                    a.sum.to_bits(),
                    a.mean.to_bits(),
                    a.integral.to_bits(),
                    a.derivative.to_bits(),
                    a.count,
                )
            };
            assert_eq!(bits(&got), bits(&w), "v = {v}, reading {k}");
        }
    }
}

#[test]
fn late_reading_is_reported_and_not_added() {
    let mut e = WindowEngine::new(cfg(600_000, 10_000, WatermarkScope::Partition));
    e.process(3, "a", Reading { t: 100_000, v: 1.0 });
    assert_eq!(
        e.process(3, "b", Reading { t: 89_999, v: 1.0 }),
        Outcome::Late { watermark: 90_000 }
    );
    // Exactly at the watermark is accepted.
    assert!(matches!(
        e.process(3, "b", Reading { t: 90_000, v: 1.0 }),
        Outcome::Emit(_)
    ));
    // Other partitions have their own watermark.
    assert!(matches!(
        e.process(4, "c", Reading { t: 0, v: 1.0 }),
        Outcome::Emit(_)
    ));
    assert_eq!(e.stats().clients, 3);
}

#[test]
fn client_scope_watermarks_are_independent() {
    let mut e = WindowEngine::new(cfg(600_000, 0, WatermarkScope::Client));
    e.process(
        0,
        "new-day",
        Reading {
            t: 10_000_000,
            v: 1.0,
        },
    );
    assert!(matches!(
        e.process(0, "old-day", Reading { t: 5, v: 1.0 }),
        Outcome::Emit(_)
    ));
    assert!(matches!(
        e.process(0, "old-day", Reading { t: 4, v: 1.0 }),
        Outcome::Late { watermark: 5 }
    ));
}

#[test]
fn idle_clients_are_swept_exactly() {
    let mut e = WindowEngine::new(cfg(1_000, 0, WatermarkScope::Partition));
    e.process(0, "idle", Reading { t: 0, v: 1.0 });
    for i in 0..SWEEP_EVERY as i64 {
        e.process(0, "busy", Reading { t: 10 + i, v: 1.0 });
    }
    assert_eq!(e.stats().clients, 1, "the idle client is gone");
}

#[test]
fn state_is_bounded_by_window_plus_grace() {
    let mut e = WindowEngine::new(cfg(600_000, 30_000, WatermarkScope::Partition));
    for i in 0..100_000i64 {
        e.process(
            0,
            "c",
            Reading {
                t: i * 1_000,
                v: 1.0,
            },
        );
    }
    let s = e.stats();
    assert_eq!(s.readings, 630, "600 s window + 30 s grace at 1 reading/s");
}

#[test]
fn gaps_longer_than_the_time_offset_range() {
    let c = cfg(600_000, 30_000, WatermarkScope::Client);
    let day = 86_400_000i64;
    let arrivals: Vec<(&str, Reading)> = [
        0,
        60_000,
        60 * day,
        60 * day + 30_000,
        200 * day,
        200 * day - 10_000,
    ]
    .iter()
    .enumerate()
    .map(|(i, &t)| ("c", Reading { t, v: i as f64 }))
    .collect();
    let want = reference_features(c, &arrivals);
    let mut e = WindowEngine::new(c).with_extremes(true);
    for (k, &(client, r)) in arrivals.iter().enumerate() {
        match (e.process(0, client, r), want[k]) {
            (Outcome::Emit(a), Some(b)) => assert_eq!(a, b, "reading {k}"),
            (got, want) => panic!("reading {k}: {got:?} vs {want:?}"),
        }
    }
    assert!(
        WindowConfig {
            size_ms: MAX_SPAN_MS,
            grace_ms: 1,
            ..c
        }
        .validate()
        .is_err()
    );
    assert!(c.validate().is_ok());
}

#[test]
fn long_streams_do_not_drift() {
    let mut e = WindowEngine::new(cfg(10_000, 0, WatermarkScope::Client)).with_extremes(true);
    let mut last = None;
    for i in 0..1_000_000i64 {
        let v = ((i * 7919) % 1000) as f64 * 1e-3 + 1e6 * ((i % 2) as f64);
        last = Some(emit(e.process(0, "c", Reading { t: i * 100, v })));
    }
    let got = last.unwrap();
    // The last window holds t in (99 990 000, 99 999 900]: 100 readings.
    let expect = aggregates_of((999_900..1_000_000i64).map(|i| Reading {
        t: i * 100,
        v: ((i * 7919) % 1000) as f64 * 1e-3 + 1e6 * ((i % 2) as f64),
    }));
    assert_eq!(got.count, 100);
    assert_eq!(
        got, expect,
        "bit-identical to the window computed from scratch"
    );
}

/// Sequences of (client index, time, value) with many equal timestamps, out-of-order
/// arrivals and gaps around the window size.
fn arrivals() -> impl Strategy<Value = Vec<(usize, i64, f64)>> {
    prop::collection::vec(
        (
            0usize..3,
            prop_oneof![
                4 => 0i64..120_000,          // forward steps
                1 => Just(0i64),             // equal timestamps
                1 => Just(600_000i64),       // exactly one window
                1 => -40_000i64..0,          // out of order, maybe late
            ],
            prop_oneof![
                4 => -1000.0f64..1000.0,
                2 => (-100_000i64..100_000).prop_map(|k| k as f64 * 0.1),
                1 => Just(0.0f64),
                1 => prop_oneof![Just(1e12f64), Just(-1e12), Just(17.1), Just(1e-9)],
                // The edges of the fixed-point fast path (`exact::to_fixed`): values
                // beside 2^30 and 2^-64, tiny ones (down to the expansion's exact range,
                // 2^-960), -0 and large values that force the expansion while fixed-point
                // readings share the window.
                1 => prop_oneof![
                    Just(1073741824.0f64), Just(1073741824.0f64.next_down()),
                    Just(5.421010862427522e-20), Just(8.131516293641283e-20),
                    Just(1e-280), Just(-1.2e-271), Just(-0.0),
                    Just(1e12f64.next_down()), -1e12f64..1e12, (-1.0f64..1.0).prop_map(|x| x * 1e-15),
                ],
            ],
        ),
        1..200,
    )
    .prop_map(|steps| {
        let mut t = 1_000_000i64;
        steps
            .into_iter()
            .map(|(c, dt, v)| {
                t += dt;
                (c, t, v)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    #[test]
    fn fast_engine_equals_naive_reference(
        seq in arrivals(),
        grace in prop_oneof![Just(0i64), 1i64..60_000],
        size in prop_oneof![Just(600_000i64), 1i64..700_000],
        client_scope in any::<bool>(),
        extremes in any::<bool>(),
    ) {
        let scope = if client_scope { WatermarkScope::Client } else { WatermarkScope::Partition };
        let c = cfg(size, grace, scope);
        let names = ["a", "b", "c"];
        let arrivals: Vec<(&str, Reading)> =
            seq.iter().map(|&(i, t, v)| (names[i], Reading { t, v })).collect();
        let slow = reference_windows(c, &arrivals);
        let mut e = WindowEngine::new(c).with_extremes(extremes);
        for (k, &(client, r)) in arrivals.iter().enumerate() {
            match (e.process(7, client, r), &slow[k]) {
                (Outcome::Emit(f), Some(w)) => {
                    assert_exact(&f, w)?;
                    let lo = w.iter().map(|x| x.v).fold(f64::INFINITY, f64::min);
                    let hi = w.iter().map(|x| x.v).fold(f64::NEG_INFINITY, f64::max);
                    let want = if extremes { (lo, hi) } else { (0.0, 0.0) };
                    prop_assert_eq!((f.min, f.max), want);
                }
                (Outcome::Late { .. }, None) => {}
                (f, s) => prop_assert!(false, "reading {k}: fast {f:?} vs reference {s:?}"),
            }
        }
    }
}
