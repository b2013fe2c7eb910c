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
//! [`HybridSum`] is what the window engine holds: terms on a 2^-64 grid below 2^30 in
//! magnitude are summed in an `i128` (exact and much cheaper), the rest in an [`ExactSum`].
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

/// Binary digits after the point of the fixed-point part of a [`HybridSum`]: a term enters
/// the `i128` when it is an integer multiple of 2^-64.
pub const FIXED_FRAC_BITS: i32 = 64;

/// A term enters the fixed-point part of a [`HybridSum`] only when `|x| < 2^FIXED_INT_BITS`
/// (≈ 1.07e9). With [`FIXED_FRAC_BITS`] that makes each term's integer below 2^94, so a sum of
/// up to 2^33 such terms, or a trapezoid sum `Σ (|v| + |v'|)·Δt` over a span below 2^31 ms,
/// stays below 2^127: it fits an `i128`.
pub const FIXED_INT_BITS: i32 = 30;

/// `x` as an integer multiple of 2^-[`FIXED_FRAC_BITS`], when that is exact and
/// `|x| < 2^`[`FIXED_INT_BITS`]; `None` otherwise (subnormals, values with bits below 2^-64,
/// large values, non-finite values). `±0` is `Some(0)`.
///
/// A double is `±m · 2^(e−1075)` with a 53-bit `m`: the fixed-point integer is `m` shifted by
/// `e − 1075 + 64`, exact when no set bit is shifted out.
#[inline(always)]
pub fn to_fixed(x: f64) -> Option<i128> {
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    if exp == 0 {
        // ±0 is exact; subnormals lie far below 2^-64.
        return (frac == 0).then_some(0);
    }
    // |x| < 2^INT ⟺ e − 1023 < INT (also rejects inf/NaN: exp = 2047).
    if exp >= 1023 + FIXED_INT_BITS {
        return None;
    }
    let m = frac | (1u64 << 52);
    let sh = exp - 1075 + FIXED_FRAC_BITS;
    let mag = if sh >= 0 {
        // sh ≤ 1022 + 30 − 1075 + 64 = 41: m << sh < 2^94, as two 64-bit halves (cheaper
        // than a general 128-bit shift): the high half is m >> (64 − sh), written so that
        // no shift reaches 64.
        let lo = m << sh;
        let hi = (m >> 1) >> (63 - sh);
        (i128::from(hi) << 64) | i128::from(lo)
    } else if sh > -53 && m.trailing_zeros() >= sh.unsigned_abs() {
        i128::from(m >> sh.unsigned_abs())
    } else {
        return None;
    };
    // Branch-free sign: s = 0 or −1, (mag ^ s) − s = ±mag.
    let s = i128::from((bits as i64) >> 63);
    Some((mag ^ s) - s)
}

/// `2^k` for `−1022 ≤ k ≤ 1023`, exactly.
#[inline(always)]
fn pow2(k: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&k));
    f64::from_bits(((1023 + k) as u64) << 52)
}

/// `a` rounded once to the nearest double (ties to even) — what `a as f64` does, without the
/// generic 128-bit conversion routine (a call that showed as 16% of the engine's profile): the
/// top 64 bits, with every lower bit folded into a sticky bit 11 places below the rounding
/// position, convert with one hardware rounding.
#[inline(always)]
fn u128_to_f64(a: u128) -> f64 {
    if let Ok(small) = i64::try_from(a) {
        return small as f64;
    }
    let lz = a.leading_zeros(); // < 65
    let norm = a << lz;
    let top = (norm >> 64) as u64 | u64::from(norm as u64 != 0);
    u64_top_to_f64(top) * pow2(64 - lz as i32)
}

/// `x` rounded once to the nearest double (ties to even), for `x ≥ 2^63`: halved with the
/// dropped bit folded into the sticky bit 0 (still 10 places below the rounding position),
/// so it converts as a signed integer (one instruction; the unsigned conversion is a
/// four-instruction sequence on baseline x86-64), then doubled exactly.
#[inline(always)]
fn u64_top_to_f64(x: u64) -> f64 {
    debug_assert!(x >> 63 == 1);
    ((((x >> 1) | (x & 1)) as i64) as f64) * 2.0
}

/// `f` rounded once to the nearest double (ties to even).
#[inline(always)]
fn i128_to_f64(f: i128) -> f64 {
    let mag = u128_to_f64(f.unsigned_abs());
    if f < 0 { -mag } else { mag }
}

/// `f · 2^-64` rounded once to the nearest double (ties to even): the value of a fixed-point
/// integer.
#[inline]
pub fn fixed_round(f: i128) -> f64 {
    // The power of two is exact: every non-zero result is ≥ 2^-64, far inside the normal
    // range.
    i128_to_f64(f) * pow2(-FIXED_FRAC_BITS)
}

/// `f · 2^-64 / 2000` rounded once to the nearest double (ties to even), for `|f| < 2^126`:
/// the window's integral from the fixed-point trapezoid sum (`/ 2000` = ½ for the trapezoid
/// and ms → s).
///
/// 2000 = 2^4 · 125: the power of two is exact scaling, the division by 125 is done in
/// integers, on the top 64 bits only. `|f|` is shifted so its top bit is bit 127; its top 64
/// bits `t` (in `[2^63, 2^64)`) divided by 125 give a quotient of 57 bits, and everything below
/// it (the remainder of `t`, the low 64 bits) only decides whether the exact quotient has a
/// fractional part: a sticky bit ORed into bit 0, three places below the rounding position of
/// the 53-bit result, so the one hardware `u64 → f64` rounding is the correct rounding of the
/// exact quotient. One 64-bit division by a constant (a multiply); it replaced a 32-bit
/// long division over up to four digits that was 20 % of the engine's profile.
#[inline]
pub fn fixed_div2000_round(f: i128) -> f64 {
    if f == 0 {
        return 0.0;
    }
    let a = f.unsigned_abs();
    debug_assert!(a < 1u128 << 126);
    let lz = a.leading_zeros() as i32;
    let norm = a << lz;
    let t = (norm >> 64) as u64;
    let sticky = !t.is_multiple_of(125) || norm as u64 != 0;
    let q = (t / 125) | u64::from(sticky);
    // |f| = norm · 2^-lz, so |f| / 125 ≈ q · 2^(64 - lz); the value is that · 2^-64 / 16.
    // q < 2^57: the signed conversion is exact in range (one instruction).
    let mag = ((q as i64) as f64) * pow2(-(4 + lz));
    if f < 0 { -mag } else { mag }
}

/// The exact sum of the window engine: terms that [`to_fixed`] accepts are added to an `i128`
/// in units of 2^-64 (one integer addition, no rounding: exact), the others to an
/// [`ExactSum`] expansion that exists only while such terms are held. The value is the sum of
/// both parts, so it is exactly the real sum of the terms, whichever part each went to; a
/// term and its negation always go to the same part, so removing cancels adding exactly.
///
/// The integer is updated with wrapping arithmetic: intermediate states may leave the `i128`
/// range (e.g. a window momentarily holding one reading too many), but the value whenever it
/// is rounded is a window's fixed-point sum, which fits (see [`FIXED_INT_BITS`]), and modular
/// arithmetic then gives exactly that integer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HybridSum {
    /// Fixed-point part, units of 2^-64 (stored as two halves: 8-byte alignment, smaller state).
    lo: u64,
    hi: i64,
    /// The terms outside the fixed-point range, if any have been added.
    rest: Option<Box<ExactSum>>,
}

impl HybridSum {
    /// Zero.
    pub const fn new() -> Self {
        Self {
            lo: 0,
            hi: 0,
            rest: None,
        }
    }

    #[inline(always)]
    fn fixed(&self) -> i128 {
        (i128::from(self.hi) << 64) | i128::from(self.lo)
    }

    #[inline(always)]
    fn set_fixed(&mut self, f: i128) {
        self.lo = f as u64;
        self.hi = (f >> 64) as i64;
    }

    /// Adds a fixed-point integer (from [`to_fixed`], possibly times an integer).
    #[inline(always)]
    pub fn add_fixed(&mut self, f: i128) {
        let s = self.fixed().wrapping_add(f);
        self.set_fixed(s);
    }

    #[cold]
    fn rest_mut(&mut self) -> &mut ExactSum {
        self.rest.get_or_insert_with(Default::default)
    }

    /// Adds `x` exactly.
    #[inline]
    pub fn add(&mut self, x: f64) {
        self.add_known(x, to_fixed(x));
    }

    /// Adds `x` exactly, given `fixed = to_fixed(x)` (for a caller that already has it).
    #[inline(always)]
    pub fn add_known(&mut self, x: f64, fixed: Option<i128>) {
        debug_assert!(fixed == to_fixed(x));
        match fixed {
            Some(f) => self.add_fixed(f),
            None => self.rest_mut().add(x),
        }
    }

    /// Adds `x · n` exactly, for an integer `0 ≤ n < 2^31` (a time span in ms; larger `n` stay
    /// deterministic but may lose exactness).
    #[inline]
    pub fn add_scaled(&mut self, x: f64, n: i64) {
        debug_assert!(n >= 0);
        match to_fixed(x) {
            Some(f) => self.add_fixed(f.wrapping_mul(i128::from(n))),
            None => self.rest_mut().add_scaled(x, n as f64),
        }
    }

    /// Back to zero (keeps the expansion's allocation, if any).
    pub fn clear(&mut self) {
        self.set_fixed(0);
        if let Some(r) = &mut self.rest {
            r.clear();
        }
    }

    /// True when only the fixed-point part holds terms (the fast path).
    #[inline]
    pub fn is_fixed_only(&self) -> bool {
        self.rest.as_ref().is_none_or(|r| r.is_zero())
    }

    /// Heap bytes held (the expansion, when present).
    pub fn heap_bytes(&self) -> usize {
        self.rest
            .as_ref()
            .map_or(0, |r| std::mem::size_of::<ExactSum>() + r.heap_bytes())
    }

    /// Both parts as one expansion (the slow path: the fixed-point integer enters as three
    /// exact doubles of at most 43 bits each).
    #[cold]
    fn combined(&self) -> ExactSum {
        let mut e = self.rest.as_deref().cloned().unwrap_or_default();
        let f = self.fixed();
        let mask = (1i128 << 43) - 1;
        e.add(((f >> 86) as f64) * pow2(86 - FIXED_FRAC_BITS));
        e.add((((f >> 43) & mask) as f64) * pow2(43 - FIXED_FRAC_BITS));
        e.add(((f & mask) as f64) * pow2(-FIXED_FRAC_BITS));
        e
    }

    /// The exact value rounded once to the nearest double (ties to even).
    #[inline(always)]
    pub fn round(&self) -> f64 {
        if self.is_fixed_only() {
            fixed_round(self.fixed())
        } else {
            self.combined().round()
        }
    }

    /// The exact value divided by 2000, rounded once to the nearest double (ties to even).
    #[inline(always)]
    pub fn div2000_round(&self) -> f64 {
        if self.is_fixed_only() {
            fixed_div2000_round(self.fixed())
        } else {
            self.combined().div_round(2000.0)
        }
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

    #[test]
    fn to_fixed_accepts_exactly_the_fixed_point_range() {
        let unit = 2f64.powi(-FIXED_FRAC_BITS);
        assert_eq!(to_fixed(0.0), Some(0));
        assert_eq!(to_fixed(-0.0), Some(0));
        assert_eq!(to_fixed(1.0), Some(1i128 << 64));
        assert_eq!(to_fixed(-2.5), Some(-(5i128 << 63)));
        assert_eq!(to_fixed(unit), Some(1));
        assert_eq!(to_fixed(-3.0 * unit), Some(-3));
        assert_eq!(to_fixed(unit / 2.0), None, "a bit below 2^-64");
        assert_eq!(to_fixed(1.5 * unit), None);
        assert_eq!(to_fixed(f64::from_bits(1)), None, "subnormal");
        assert_eq!(to_fixed(f64::MIN_POSITIVE), None);
        let top = 2f64.powi(FIXED_INT_BITS);
        assert_eq!(to_fixed(top), None);
        assert_eq!(to_fixed(-top), None);
        assert_eq!(
            to_fixed(top.next_down()),
            Some(((1i128 << 53) - 1) << (FIXED_INT_BITS + FIXED_FRAC_BITS - 53))
        );
        assert_eq!(to_fixed(1e12), None);
        assert_eq!(to_fixed(f64::INFINITY), None);
        assert_eq!(to_fixed(f64::NAN), None);
        // Decimal readings: 17.1 = m · 2^-48, 0.01 = m · 2^-59.
        assert!(to_fixed(17.1).is_some() && to_fixed(0.01).is_some());
        assert!(to_fixed(1e-9).is_none(), "1e-9 has bits down to 2^-82");
    }

    #[test]
    fn integer_conversions_round_like_casts() {
        let mut x: u128 = 1;
        for k in 0..2000u32 {
            // Walk through every magnitude with varied low bits (ties, sticky bits, carries).
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(u128::from(k));
            for a in [x, x >> (k % 128), (x >> (k % 128)) | 1, 1u128 << (k % 128)] {
                let a = a >> 1;
                assert_eq!(u128_to_f64(a).to_bits(), (a as f64).to_bits(), "{a}");
                let s = a as i128;
                assert_eq!(i128_to_f64(-s).to_bits(), ((-s) as f64).to_bits(), "{s}");
            }
        }
        // Ties: 2^64 + 2^11 is half-way between two doubles; even is 2^64.
        let tie = (1u128 << 64) + (1 << 11);
        assert_eq!(u128_to_f64(tie), 18_446_744_073_709_551_616.0);
        assert_eq!(u128_to_f64(tie + 1), (tie + 1) as f64);
        assert_eq!(u128_to_f64(u128::MAX), u128::MAX as f64);
    }

    #[test]
    fn fixed_division_by_2000_rounds_ties_to_even() {
        // 2000 · 2^64 · (1 + 2^-53) / 2000 is a tie between 1 and next_up(1): even is 1.
        let one = 2000i128 << 64;
        assert_eq!(fixed_div2000_round(one), 1.0);
        assert_eq!(fixed_div2000_round(one + (one >> 53)), 1.0);
        assert_eq!(fixed_div2000_round(one + (one >> 53) + 1), 1.0f64.next_up());
        assert_eq!(
            fixed_div2000_round(-one - (one >> 53) - 1),
            -1.0f64.next_up()
        );
        assert_eq!(fixed_div2000_round(1), 2f64.powi(-64) / 2000.0);
        assert_eq!(fixed_div2000_round(0), 0.0);
    }

    /// Terms for the hybrid sum: mostly in the fixed-point range, some forcing the expansion
    /// (large, tiny, subnormal), with values near the input bound 1e12.
    fn hybrid_terms() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(
            prop_oneof![
                4 => -1000.0f64..1000.0,
                2 => (-100_000i64..100_000).prop_map(|k| k as f64 * 0.01),
                1 => prop_oneof![
                    Just(1e12f64), Just(-1e12), Just(1e12f64.next_down()), Just(1e-9),
                    Just(f64::from_bits(3)), Just(-f64::MIN_POSITIVE), Just(2f64.powi(-64)),
                    Just(2f64.powi(30)), Just(2f64.powi(30).next_down()), Just(0.0), Just(-0.0),
                ],
                1 => -1e12f64..1e12,
                1 => (-1.0f64..1.0).prop_map(|x| x * 1e-12),
            ],
            0..60,
        )
    }

    proptest! {
        /// The hybrid sum (fixed point + expansion) rounds exactly like the expansion alone,
        /// also after removing any prefix of its terms.
        #[test]
        fn hybrid_equals_expansion(xs in hybrid_terms(), n in prop_oneof![0i64..100_000, Just((1i64 << 31) - 1)], cut in 0usize..60) {
            let mut h = HybridSum::new();
            let mut e = ExactSum::new();
            let mut ha = HybridSum::new();
            let mut ea = ExactSum::new();
            // The window engine's bound: Σ n over the scaled terms stays below 2^32 (two
            // trapezoid terms per reading over a span below 2^31 ms).
            let scaled = if n > 1 << 25 { 2 } else { xs.len() };
            for (k, &x) in xs.iter().enumerate() {
                h.add(x);
                e.add(x);
                if k < scaled {
                    ha.add_scaled(x, n);
                    ea.add_scaled(x, n as f64);
                }
            }
            for (k, &x) in xs.iter().take(cut).enumerate() {
                h.add(-x);
                e.add(-x);
                if k < scaled {
                    ha.add_scaled(-x, n);
                    ea.add_scaled(-x, n as f64);
                }
            }
            prop_assert_eq!(h.round().to_bits(), e.round().to_bits());
            prop_assert_eq!(ha.div2000_round().to_bits(), ea.div_round(2000.0).to_bits());
            if xs.iter().take(cut).count() == xs.len() {
                prop_assert!(h.is_fixed_only() && h.round().to_bits() == 0);
            }
        }

        /// Fixed-point division by 2000 against the expansion's exact division, over the whole
        /// magnitude range up to 2^126.
        #[test]
        fn fixed_div2000_equals_expansion(m in any::<i64>(), lo in any::<u64>(), shift in 0u32..127) {
            let f = ((i128::from(m) << 64) | i128::from(lo)) >> (shift + 1);
            let mut e = ExactSum::new();
            let mask = (1i128 << 43) - 1;
            e.add(((f >> 86) as f64) * 2f64.powi(22));
            e.add((((f >> 43) & mask) as f64) * 2f64.powi(-21));
            e.add(((f & mask) as f64) * 2f64.powi(-64));
            prop_assert_eq!(fixed_round(f).to_bits(), e.round().to_bits());
            prop_assert_eq!(fixed_div2000_round(f).to_bits(), e.div_round(2000.0).to_bits());
        }
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
