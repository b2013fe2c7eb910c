//! The join's public vocabulary: its inputs, configuration, triggers, events and the
//! outcome of applying a record.

use std::sync::Arc;

/// The five inputs, in the order used in vectors and reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputKind {
    /// SX readings.
    Sx = 0,
    /// SY readings.
    Sy = 1,
    /// FA features.
    Fa = 2,
    /// FI features.
    Fi = 3,
    /// FD features.
    Fd = 4,
}

impl InputKind {
    /// All five, in order.
    pub const ALL: [InputKind; 5] = [Self::Sx, Self::Sy, Self::Fa, Self::Fi, Self::Fd];

    pub(super) fn idx(self) -> usize {
        self as usize
    }
}

/// Join configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinConfig {
    /// Allowed out-of-orderness per input partition, ms (≥ 0): a record is late when its event
    /// time is below the largest event time of its input partition before it minus this, a
    /// function of that partition's order alone. Default [`DEFAULT_GRACE_MS`].
    pub grace_ms: i64,
    /// `S`: values older than `t − S` are not used (≥ 1).
    pub max_staleness_ms: i64,
    /// Wall-clock ms without records on all five inputs after which everything seen is
    /// released; `None` = never.
    pub idle_timeout_ms: Option<i64>,
    /// Wall-clock ms without records after which one input stops holding the watermark back
    /// while the others still flow; `None` = never.
    pub input_idle_timeout_ms: Option<i64>,
}

/// Default join grace, ms: covers the clock jitter of gateways that stamp readings of many
/// clients into one partition (hundreds of ms), at the price of that much event time before a
/// trigger is released.
pub const DEFAULT_GRACE_MS: i64 = 2_000;

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            grace_ms: DEFAULT_GRACE_MS,
            max_staleness_ms: 600_000,
            idle_timeout_ms: Some(10_000),
            input_idle_timeout_ms: Some(300_000),
        }
    }
}

impl JoinConfig {
    /// Checks the bounds.
    ///
    /// # Errors
    /// A message when grace < 0, staleness < 1 or the idle timeout < 1.
    pub fn validate(&self) -> Result<(), String> {
        if self.grace_ms < 0 {
            return Err(format!("join grace must be >= 0 ms, got {}", self.grace_ms));
        }
        if self.max_staleness_ms < 1 {
            return Err(format!(
                "max staleness must be >= 1 ms, got {}",
                self.max_staleness_ms
            ));
        }
        if self.idle_timeout_ms.is_some_and(|t| t < 1)
            || self.input_idle_timeout_ms.is_some_and(|t| t < 1)
        {
            return Err("idle timeouts must be >= 1 ms".into());
        }
        Ok(())
    }
}

/// Identifies a triple: the SZ reading whose processing emitted it and which of that
/// reading's window emissions it is (ordered by partition, offset, index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SzSource {
    /// SZ partition.
    pub partition: i32,
    /// SZ offset.
    pub offset: i64,
    /// 0-based index among the windows that reading emitted (always 0 for the sliding
    /// window; several for hopping windows and final emissions).
    pub index: u32,
}

impl SzSource {
    /// `(offset, index)` as one number, increasing in emission order within a partition: the
    /// key of the repeat check.
    pub fn seq(&self) -> i128 {
        (i128::from(self.offset) << 32) | i128::from(self.index)
    }
}

/// One input record of the join.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JoinInput {
    /// An SX reading (integer value).
    Sx {
        /// Value.
        value: i64,
        /// Event time, ms.
        event_time_ms: i64,
    },
    /// An SY reading (integer value).
    Sy {
        /// Value.
        value: i64,
        /// Event time, ms.
        event_time_ms: i64,
    },
    /// One feature of one SZ reading.
    Feature {
        /// FA, FI or FD ([`InputKind::Fa`] …).
        kind: InputKind,
        /// Bin 0..=9.
        bin: u32,
        /// Event time of the SZ reading, ms.
        event_time_ms: i64,
        /// The SZ reading.
        source: SzSource,
    },
}

impl JoinInput {
    /// Which input it belongs to.
    pub fn kind(&self) -> InputKind {
        match self {
            Self::Sx { .. } => InputKind::Sx,
            Self::Sy { .. } => InputKind::Sy,
            Self::Feature { kind, .. } => *kind,
        }
    }

    /// Event time, ms.
    pub fn event_time_ms(&self) -> i64 {
        match self {
            Self::Sx { event_time_ms, .. }
            | Self::Sy { event_time_ms, .. }
            | Self::Feature { event_time_ms, .. } => *event_time_ms,
        }
    }
}

/// What triggered an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Trigger {
    /// An SX reading.
    Sx,
    /// An SY reading.
    Sy,
    /// A completed triple.
    Features,
}

/// A record of an input partition: its input and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordRef {
    /// Input.
    pub input: InputKind,
    /// Offset in the input's partition.
    pub offset: i64,
}

/// A joined vector, ready for the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinOutput {
    /// Client id.
    pub client: Arc<str>,
    /// `[SX, SY, FA bin, FI bin, FD bin]`.
    pub vector: [i64; 5],
    /// What triggered it.
    pub trigger: Trigger,
    /// Event time of the trigger, ms.
    pub event_time_ms: i64,
    /// The triggering record (for a triple: its FA record).
    pub record: RecordRef,
    /// Every input record this prediction is the outcome of: the SX or SY reading, or the
    /// triple's FA, FI and FD records ([`Outbox`](super::Outbox) releases it once each is
    /// clear of its input's commit point).
    pub records: [Option<RecordRef>; 3],
    /// The SZ reading behind the triple used.
    pub triple_source: SzSource,
    /// Ingest time carried by the triggering record (0 = unknown).
    pub ingest_time_ms: i64,
}

/// Why a trigger yields no prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// No SX value within `2S` before the trigger.
    MissingSx,
    /// The latest SX is older than `t − S`.
    StaleSx,
    /// No SY value within `2S`.
    MissingSy,
    /// The latest SY is older than `t − S`.
    StaleSy,
    /// No complete triple within `2S`.
    MissingFeatures,
    /// The latest triple is older than `t − S`.
    StaleFeatures,
    /// Released before the watermark passed it: the join held more triggers than its budget
    /// even with the inputs that run ahead paused ([`crate::join::PartitionJoin::force_release`]).
    Overflow,
}

impl SkipReason {
    /// Reason code (dead-letter header, metric label).
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingSx => "missing-sx",
            Self::StaleSx => "stale-sx",
            Self::MissingSy => "missing-sy",
            Self::StaleSy => "stale-sy",
            Self::MissingFeatures => "missing-features",
            Self::StaleFeatures => "stale-features",
            Self::Overflow => "join-overflow",
        }
    }

    /// Every reason, for metrics and summaries.
    pub const ALL: [SkipReason; 7] = [
        Self::MissingSx,
        Self::StaleSx,
        Self::MissingSy,
        Self::StaleSy,
        Self::MissingFeatures,
        Self::StaleFeatures,
        Self::Overflow,
    ];
}

/// What the watermark released.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JoinEvent {
    /// A complete vector.
    Prediction(JoinOutput),
    /// A trigger without a usable value of another input.
    Skipped {
        /// Client id.
        client: Arc<str>,
        /// What triggered it.
        trigger: Trigger,
        /// Event time, ms.
        event_time_ms: i64,
        /// The triggering record.
        record: RecordRef,
        /// Every input record this skip is the outcome of (as [`JoinOutput::records`]).
        records: [Option<RecordRef>; 3],
        /// Why.
        reason: SkipReason,
    },
    /// A triple whose time the watermark passed with features still missing.
    IncompleteTriple {
        /// Client id.
        client: Arc<str>,
        /// Event time of the SZ reading, ms.
        event_time_ms: i64,
        /// The SZ reading.
        source: SzSource,
        /// The features that did arrive (FA, FI, FD order).
        present: Vec<RecordRef>,
    },
}

impl JoinEvent {
    /// The input records this event is the outcome of: one SX or SY reading, or the features
    /// of one SZ reading (all three, or those that arrived for an incomplete triple).
    pub fn records(&self) -> [Option<RecordRef>; 3] {
        match self {
            Self::Prediction(p) => p.records,
            Self::Skipped { records, .. } => *records,
            Self::IncompleteTriple { present, .. } => {
                let mut r = [None; 3];
                for (slot, p) in r.iter_mut().zip(present) {
                    *slot = Some(*p);
                }
                r
            }
        }
    }
}

/// What happened to one applied record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Taken into the state.
    Accepted,
    /// Event time below its input's lateness bound (its partition's max event time before it
    /// − grace, or the watermark when idle inputs moved it further): not used; route to the
    /// late topic.
    Late {
        /// The bound it missed, ms.
        watermark: i64,
    },
    /// An exact repeat of a feature already seen: ignored.
    Duplicate,
}

/// Size of the join state of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinStats {
    /// Clients with state.
    pub clients: usize,
    /// As-of values held (SX, SY, triples).
    pub values: usize,
    /// Triggers waiting for the watermark.
    pub pending: usize,
    /// Incomplete triples.
    pub partials: usize,
    /// Approximate heap bytes.
    pub bytes: usize,
}
