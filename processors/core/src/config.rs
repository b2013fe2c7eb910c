//! Defaults shared by the processors, the replay tool and the operator.

use crate::binning::BinRange;
use serde::{Deserialize, Serialize};

/// Topic names of one pipeline. Defaults: `SX SY SZ FA FI FD predictions dead-letter late`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topics {
    /// Categorical sensor X readings.
    pub sx: String,
    /// Categorical sensor Y readings.
    pub sy: String,
    /// Continuous sensor Z readings.
    pub sz: String,
    /// Window mean features.
    pub fa: String,
    /// Window integral features.
    pub fi: String,
    /// Window derivative features.
    pub fd: String,
    /// Model predictions.
    pub predictions: String,
    /// Malformed or unprocessable records, with the reason in headers.
    pub dead_letter: String,
    /// Readings older than the watermark (reason `late`).
    pub late: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            sx: "SX".into(),
            sy: "SY".into(),
            sz: "SZ".into(),
            fa: "FA".into(),
            fi: "FI".into(),
            fd: "FD".into(),
            predictions: "predictions".into(),
            dead_letter: "dead-letter".into(),
            late: "late".into(),
        }
    }
}

impl Topics {
    /// All nine topics, inputs first.
    pub fn all(&self) -> [&str; 9] {
        [
            &self.sx,
            &self.sy,
            &self.sz,
            &self.fa,
            &self.fi,
            &self.fd,
            &self.predictions,
            &self.dead_letter,
            &self.late,
        ]
    }

    /// The join's five co-partitioned inputs: SX, SY, FA, FI, FD.
    pub fn join_inputs(&self) -> [&str; 5] {
        [&self.sx, &self.sy, &self.fa, &self.fi, &self.fd]
    }
}

/// Default partitions per topic.
pub const DEFAULT_PARTITIONS: i32 = 100;

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
