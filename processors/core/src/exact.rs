//! Exact sums of `f64` terms that support adding and removing terms, with a correctly rounded
//! result: what the window engine uses so a window's FA and FI depend on its readings alone.
//!
//! ```text
//!   add(x) / add_product(a, b) ──► ExactSum (non-overlapping expansion, exact value E)
//!        remove = add the negation (exactly cancels)      │
//!                                      round() ───────────┤ E rounded once to f64 (ties to even)
//!                                      div_round(d) ──────┘ E / d rounded once to f64
//! ```
//!
//! The value is held as a Shewchuk *non-overlapping expansion*: a short list of doubles,
//! increasing in magnitude, whose exact (real-number) sum is the value. Adding a double uses
//! error-free `TwoSum` steps (Shewchuk 1997, "Adaptive precision floating-point arithmetic";
//! the same `partials` algorithm as Python's `math.fsum`), so nothing is ever rounded away and
//! adding `-x` after `x` returns exactly to the previous value, whatever came in between.
//! A product `a·b` enters as two doubles, `p = fl(a·b)` and `e = a·b − p`, the latter computed
//! exactly by one fused multiply-add (`TwoProduct`).
//!
//! Limits: exactness holds while no intermediate overflows or underflows, i.e. for terms and
//! products with magnitudes in roughly `[2^-960, 2^1000]` (or exactly 0). SensorFlow bounds
//! readings to `|v| ≤ 1e12` and window spans to < 2^31 ms, far inside that. Outside it the
//! results stay deterministic (a pure function of the terms) but may lose exactness; nothing
//! panics. The number of parts is bounded by the exponent range (≤ 40 for finite doubles) and
//! is 1–3 for typical sensor data.

/// `a + b` as `(sum, error)` with `sum + error == a + b` exactly (Knuth's branch-free TwoSum).
#[inline(always)]
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

/// Veltkamp's split: `a == hi + lo` with both halves of at most 26 significant bits.
#[inline(always)]
fn split(a: f64) -> (f64, f64) {
    let c = 134_217_729.0 * a; // 2^27 + 1
    let hi = c - (c - a);
    (hi, a - hi)
}

/// 2^26: integers below it have at most 26 significant bits.
const TWO_26: f64 = 67_108_864.0;

/// An exact sum of doubles (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExactSum {
    /// Non-overlapping, increasing magnitude, no zeros.
    parts: Vec<f64>,
}

impl ExactSum {
    /// Zero.
    pub const fn new() -> Self {
        Self { parts: Vec::new() }
    }

    /// Back to zero (keeps the allocation).
    #[inline]
    pub fn clear(&mut self) {
        self.parts.clear();
    }

    /// True when the exact value is zero.
    pub fn is_zero(&self) -> bool {
        self.parts.is_empty()
    }

    /// Number of doubles held (0 for an exact zero).
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.parts.capacity() * std::mem::size_of::<f64>()
    }

    /// Adds `x` exactly.
    #[inline]
    pub fn add(&mut self, mut x: f64) {
        if x == 0.0 {
            return;
        }
        // Shewchuk's Grow-Expansion with zero elimination (Python's `msum`): each part is
        // replaced by the rounding error of adding it, the running sum moves up.
        self.parts.retain_mut(|y| {
            let (hi, lo) = two_sum(x, *y);
            x = hi;
            *y = lo;
            lo != 0.0
        });
        if x != 0.0 {
            self.parts.push(x);
        }
    }

    /// Adds `a · b` exactly (`TwoProduct` with one fused multiply-add).
    #[inline]
    pub fn add_product(&mut self, a: f64, b: f64) {
        let p = a * b;
        let e = a.mul_add(b, -p);
        self.add(p);
        self.add(e);
    }

    /// Adds `a · n` exactly for an integer-valued `0 ≤ n < 2^52` (a time span in ms), without
    /// a fused multiply-add (which is a libm call on baseline x86-64): `a` is split into two
    /// 26-bit halves, so each partial product is exact when `n < 2^26`; larger `n` are split
    /// too (four exact products).
    #[inline]
    pub fn add_scaled(&mut self, a: f64, n: f64) {
        debug_assert!(n >= 0.0 && n.fract() == 0.0 && n < 4_503_599_627_370_496.0);
        let (ah, al) = split(a);
        if n < TWO_26 {
            self.add(ah * n);
            self.add(al * n);
        } else {
            let nl = n % TWO_26;
            let nh = n - nl;
            self.add(ah * nh);
            self.add(al * nh);
            self.add(ah * nl);
            self.add(al * nl);
        }
    }

    /// The exact value rounded once to the nearest double (ties to even), like `math.fsum`.
    pub fn round(&self) -> f64 {
        self.round_hi_lo().0
    }

    /// `(hi, lo)`: `hi` is the correctly rounded value, `lo` approximates the remainder
    /// `E − hi` (to a relative error of about `len · 2^-53`).
    fn round_hi_lo(&self) -> (f64, f64) {
        let p = &self.parts;
        let Some(&top) = p.last() else {
            return (0.0, 0.0);
        };
        // Python's fsum: sum from the top until a rounding error appears, then correct for
        // ties that the remaining parts break (half-even needs the sign of what is below).
        let mut hi = top;
        let mut lo = 0.0;
        let mut j = p.len() - 1;
        while j > 0 {
            j -= 1;
            let x = hi;
            let y = p[j];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        if j > 0 && ((lo < 0.0 && p[j - 1] < 0.0) || (lo > 0.0 && p[j - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            let yr = x - hi;
            if y == yr {
                hi = x;
                lo = -lo;
            }
        }
        // The rest below `j` (already smaller than an ulp of `hi`), summed approximately.
        let rest: f64 = p[..j].iter().sum();
        (hi, lo + rest)
    }

    /// The sign of the exact value: −1, 0 or 1.
    fn signum(&self) -> i32 {
        // The correctly rounded value has the sign of the exact one, and is 0 only for 0.
        let r = self.round();
        if r > 0.0 {
            1
        } else if r < 0.0 {
            -1
        } else {
            0
        }
    }

    /// `E / d` rounded once to the nearest double (ties to even), for an integer-valued
    /// divisor `1 ≤ d ≤ 2^40` (the window engine uses 2000: ms → s and the trapezoid's ½).
    ///
    /// A fast path decides from a double-double approximation of `E` when the quotient is
    /// clearly away from a rounding boundary; otherwise the exact comparison with the
    /// midpoints between neighbouring doubles decides (rare: within 2^-20 of a midpoint).
    pub fn div_round(&self, d: f64) -> f64 {
        debug_assert!(d >= 1.0 && d.fract() == 0.0 && d <= 1_099_511_627_776.0);
        let (hi, lo) = self.round_hi_lo();
        let q = hi / d;
        if q == 0.0 || !q.is_finite() || q.abs() < 1e-280 || q.abs() > 1e280 {
            return self.div_round_exact(d, q);
        }
        // hi − d·q exactly (the remainder of a correctly rounded division is representable).
        let rem = (-d).mul_add(q, hi);
        let r = rem + lo; // ≈ E − d·q
        if r == 0.0 && lo == 0.0 {
            return q;
        }
        let toward = if r > 0.0 { q.next_up() } else { q.next_down() };
        // Distance from q to the midpoint on that side, scaled by d (exact: a power of two
        // times an integer below 2^41).
        let bound = (toward - q).abs() * 0.5 * d;
        if r.abs() < bound * (1.0 - 1.0 / 1_048_576.0) {
            return q;
        }
        self.div_round_exact(d, q)
    }

    /// Sign of `2E − d·a − d·b` (i.e. of `E/d − (a+b)/2`), exactly.
    fn cmp_midpoint(&self, d: f64, a: f64, b: f64) -> i32 {
        let mut t = ExactSum {
            parts: Vec::with_capacity(self.parts.len() + 4),
        };
        for &x in &self.parts {
            t.add(2.0 * x);
        }
        t.add_product(-d, a);
        t.add_product(-d, b);
        t.signum()
    }

    fn div_round_exact(&self, d: f64, mut q: f64) -> f64 {
        if !q.is_finite() {
            return q;
        }
        // q is within a few ulps of the answer; walk to it (bounded, for safety).
        for _ in 0..64 {
            let up = q.next_up();
            let dn = q.next_down();
            let s_up = self.cmp_midpoint(d, q, up);
            if s_up > 0 {
                q = up;
                continue;
            }
            let s_dn = self.cmp_midpoint(d, q, dn);
            if s_dn < 0 {
                q = dn;
                continue;
            }
            let even = |x: f64| x.to_bits() & 1 == 0;
            if s_up == 0 && !even(q) {
                return up;
            }
            if s_dn == 0 && !even(q) {
                return dn;
            }
            return if q == 0.0 { 0.0 } else { q };
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classic_cancellations() {
        let mut s = ExactSum::new();
        for x in [1e100, 1.0, -1e100, 1e-100, 3.0, -3.0] {
            s.add(x);
        }
        assert_eq!(s.round(), 1.0 + 1e-100);
        let mut s = ExactSum::new();
        for _ in 0..10 {
            s.add(0.1);
        }
        assert_eq!(s.round(), 1.0, "fsum([0.1]*10) == 1.0");
        s.clear();
        s.add(17.1);
        assert_eq!(s.round(), 17.1);
    }

    #[test]
    fn add_then_remove_is_exactly_zero() {
        let mut s = ExactSum::new();
        let xs = [0.1, 1e16, 3.3, -7.25e-5, 123456.789];
        for &x in &xs {
            s.add(x);
            s.add_product(x, 60_000.0);
        }
        for &x in &xs {
            s.add(-x);
            s.add_product(-x, 60_000.0);
        }
        assert!(s.is_zero());
        for &x in &xs {
            s.add_scaled(x, 60_000.0);
            s.add_scaled(x, 1e12);
        }
        for &x in &xs {
            s.add_scaled(-x, 1e12);
            s.add_scaled(-x, 60_000.0);
        }
        assert!(s.is_zero());
        assert_eq!(s.round(), 0.0);
    }

    #[test]
    fn ties_round_to_even() {
        // 1 + 2^-53 is exactly half-way between 1 and next_up(1): rounds to 1 (even).
        let mut s = ExactSum::new();
        s.add(1.0);
        s.add(f64::EPSILON / 2.0);
        assert_eq!(s.round(), 1.0);
        // Anything above the midpoint rounds up.
        s.add(1e-300);
        assert_eq!(s.round(), 1.0f64.next_up());
    }

    proptest! {
        /// `add_scaled` and `add_product` add the same exact value.
        #[test]
        fn scaled_equals_product(a in -1e12f64..1e12, n in prop_oneof![0u64..100_000, 0u64..(1u64 << 40)]) {
            let n = n as f64;
            let mut p = ExactSum::new();
            p.add_product(a, n);
            let mut q = ExactSum::new();
            q.add_scaled(a, n);
            q.add_product(-a, n);
            prop_assert!(q.is_zero(), "{:?}", q);
            prop_assert_eq!(p.round(), a * n);
        }

        /// Doubles on a 2^-60 grid summed exactly in i128 agree with `round()`.
        #[test]
        fn round_is_correct_for_grid_terms(xs in prop::collection::vec((-(1i64 << 50)..(1i64 << 50), 0i32..60), 0..40)) {
            let mut acc: i128 = 0;
            let mut s = ExactSum::new();
            for &(m, k) in &xs {
                let x = m as f64 * 2f64.powi(-k); // exact: |m| < 2^53
                acc += i128::from(m) << (60 - k);
                s.add(x);
            }
            // i128 → f64 rounds to nearest, ties to even; the power of two is exact.
            let want = (acc as f64) * 2f64.powi(-60);
            prop_assert_eq!(s.round().to_bits(), want.to_bits());
        }
    }
}
