//! Uniform binning of a raw aggregate into 10 buckets.
//!
//! `bin = clamp(floor((x − lo) / (hi − lo) · 10), 0, 9)` over a configured range `[lo, hi)`:
//! values below `lo` land in bucket 0 and values at or above `hi` in bucket 9.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Number of buckets every feature is binned into.
pub const BINS: u32 = 10;

/// A binning range `[lo, hi)` with `lo < hi`, both finite. Build with [`BinRange::new`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "(f64, f64)", into = "(f64, f64)")]
pub struct BinRange {
    lo: f64,
    hi: f64,
}

/// A range that cannot bin anything.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BinRangeError {
    /// `lo` or `hi` is NaN or infinite.
    #[error("bin range bounds must be finite, got [{lo}, {hi})")]
    NotFinite {
        /// Lower bound given.
        lo: f64,
        /// Upper bound given.
        hi: f64,
    },
    /// `lo >= hi`.
    #[error("bin range needs lo < hi, got [{lo}, {hi})")]
    Empty {
        /// Lower bound given.
        lo: f64,
        /// Upper bound given.
        hi: f64,
    },
    /// The text is not `lo,hi`.
    #[error("bin range must be written `lo,hi` (e.g. `0,5`), got {0:?}")]
    Syntax(String),
}

impl BinRange {
    /// A range `[lo, hi)`.
    ///
    /// # Errors
    /// [`BinRangeError`] when a bound is not finite or `lo >= hi`.
    pub fn new(lo: f64, hi: f64) -> Result<Self, BinRangeError> {
        if !lo.is_finite() || !hi.is_finite() {
            return Err(BinRangeError::NotFinite { lo, hi });
        }
        if lo >= hi {
            return Err(BinRangeError::Empty { lo, hi });
        }
        Ok(Self { lo, hi })
    }

    /// Lower bound (inclusive).
    pub fn lo(&self) -> f64 {
        self.lo
    }

    /// Upper bound (exclusive).
    pub fn hi(&self) -> f64 {
        self.hi
    }

    /// The bucket of `x`, in `0..=9`. `x` must be finite (the window engine only produces
    /// finite aggregates from finite readings); a NaN lands in bucket 0.
    #[inline]
    pub fn bin(&self, x: f64) -> u32 {
        let scaled = ((x - self.lo) / (self.hi - self.lo) * f64::from(BINS)).floor();
        // `as` saturates (NaN → 0), then clamp into the valid buckets.
        (scaled.max(0.0) as u32).min(BINS - 1)
    }
}

impl TryFrom<(f64, f64)> for BinRange {
    type Error = BinRangeError;
    fn try_from((lo, hi): (f64, f64)) -> Result<Self, Self::Error> {
        Self::new(lo, hi)
    }
}

impl From<BinRange> for (f64, f64) {
    fn from(r: BinRange) -> Self {
        (r.lo, r.hi)
    }
}

impl FromStr for BinRange {
    type Err = BinRangeError;
    /// Parses `lo,hi` (as used by `SF_FA_RANGE` and friends).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lo, hi) = s
            .split_once(',')
            .ok_or_else(|| BinRangeError::Syntax(s.to_owned()))?;
        let parse = |p: &str| {
            p.trim()
                .parse::<f64>()
                .map_err(|_| BinRangeError::Syntax(s.to_owned()))
        };
        Self::new(parse(lo)?, parse(hi)?)
    }
}

impl fmt::Display for BinRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.lo, self.hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn edges_follow_the_formula() {
        let r = BinRange::new(0.0, 10.0).unwrap();
        assert_eq!(r.bin(-1.0), 0);
        assert_eq!(r.bin(0.0), 0);
        assert_eq!(r.bin(0.999_999), 0);
        assert_eq!(r.bin(1.0), 1);
        assert_eq!(r.bin(9.999), 9);
        assert_eq!(
            r.bin(10.0),
            9,
            "hi is exclusive but clamps into the last bucket"
        );
        assert_eq!(r.bin(1e300), 9);
        assert_eq!(r.bin(f64::NAN), 0);
    }

    #[test]
    fn negative_ranges() {
        let r = BinRange::new(-0.01, 0.01).unwrap();
        assert_eq!(r.bin(-0.01), 0);
        assert_eq!(r.bin(0.0), 5);
        assert_eq!(r.bin(-0.0000001), 4);
    }

    #[test]
    fn invalid_ranges_are_refused() {
        assert!(matches!(
            BinRange::new(1.0, 1.0),
            Err(BinRangeError::Empty { .. })
        ));
        assert!(matches!(
            BinRange::new(f64::NAN, 1.0),
            Err(BinRangeError::NotFinite { .. })
        ));
        assert!(matches!(
            "3".parse::<BinRange>(),
            Err(BinRangeError::Syntax(_))
        ));
        assert_eq!(
            "0, 5".parse::<BinRange>().unwrap(),
            BinRange::new(0.0, 5.0).unwrap()
        );
    }

    proptest! {
        #[test]
        fn bin_is_monotone_and_in_range(lo in -1e6f64..1e6, width in 1e-6f64..1e6, a in -1e7f64..1e7, b in -1e7f64..1e7) {
            let r = BinRange::new(lo, lo + width).unwrap();
            let (x, y) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(r.bin(x) <= r.bin(y));
            prop_assert!(r.bin(x) < BINS);
        }
    }
}
