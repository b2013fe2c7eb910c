//! Defaults of the window features. Topic roles, their default names and the processors'
//! environment variables are in the `sensorflow-api` crate (shared with the operator).

use crate::binning::BinRange;
use serde::{Deserialize, Serialize};

/// Binning ranges of the three features.
///
/// Defaults are tuned to the household dataset (global active power in kW, readings one minute
/// apart, 10-minute window): FA `[0, 5)` kW (0.5 kW per bin); FI `[0, 3000)` kW·s (a window of
/// ten readings spans 540 s, so 1 kW average ≈ 540 kW·s); FD `[−0.01, 0.01)` kW/s (±0.6 kW per
/// minute, bin 5 = flat).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureRanges {
    /// FA range.
    pub fa: BinRange,
    /// FI range.
    pub fi: BinRange,
    /// FD range.
    pub fd: BinRange,
}

impl Default for FeatureRanges {
    fn default() -> Self {
        #[allow(clippy::expect_used)]
        let r = |lo, hi| BinRange::new(lo, hi).expect("default ranges are valid");
        Self {
            fa: r(0.0, 5.0),
            fi: r(0.0, 3000.0),
            fd: r(-0.01, 0.01),
        }
    }
}
