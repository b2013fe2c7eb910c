//! Where a partition's offset ranges end: pure decisions over a range's counters.
//!
//! A partition's records are cut into consecutive offset ranges; each range becomes one object
//! per event hour it holds. A range ends:
//! - **by its records** (deterministic): after `max_records` records, or once they hold
//!   `max_bytes` input bytes ([`Reason::Records`], [`Reason::Bytes`]), or before the record
//!   that would bring a `max_hours + 1`-th event hour into it ([`Reason::Hours`]);
//! - **by time** (age, memory budget, shutdown: [`Reason::Age`], [`Reason::Memory`],
//!   [`Reason::Shutdown`]). Such a cut depends on when things happened, so it is recorded in
//!   the partition's committed offset metadata before any object at or after it is uploaded
//!   (see [`crate::ledger`]); a later owner reads it back and ends its range there too
//!   ([`Reason::Cut`]).
//!
//! The deterministic rules are a function of the records from the range's first offset, so
//! two members reading the same partition from the same commit cut it the same way.

/// The deterministic limits of a range (the part of the rotation that a later owner must
/// reproduce; they travel in the commit metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Records per range (≥ 1), counting dead-lettered records.
    pub max_records: u64,
    /// Input bytes (Kafka key + value) per range before compression (≥ 1).
    pub max_bytes: u64,
    /// Event hours per range (≥ 1): one object each.
    pub max_hours: usize,
}

/// Rotation settings: the deterministic limits and the wall-clock age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Limits by the records.
    pub limits: Limits,
    /// Wall-clock milliseconds a range stays open (≥ 1).
    pub max_age_ms: i64,
}

/// Why a range was closed (the `reason` label of `sensorflow_sink_files_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A record of one more event hour than `max_hours` came.
    Hours,
    /// `max_records` reached.
    Records,
    /// `max_bytes` reached.
    Bytes,
    /// Open for `max_age_ms`.
    Age,
    /// The buffer budget across partitions was exceeded.
    Memory,
    /// Graceful shutdown.
    Shutdown,
    /// A cut found in the committed offset metadata (an earlier owner's time cut).
    Cut,
}

impl Reason {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Hours => "hour",
            Reason::Records => "records",
            Reason::Bytes => "bytes",
            Reason::Age => "age",
            Reason::Memory => "memory",
            Reason::Shutdown => "shutdown",
            Reason::Cut => "cut",
        }
    }

    /// Whether the cut depends on timing (and so must be committed before its upload).
    pub fn timed(self) -> bool {
        matches!(self, Reason::Age | Reason::Memory | Reason::Shutdown)
    }
}

/// The counters of one open range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeStats {
    /// Records in the range (rows plus dead-lettered records).
    pub records: u64,
    /// Input bytes (key + value) of those records.
    pub bytes: u64,
    /// Distinct event hours in the range.
    pub hours: usize,
    /// Wall-clock time the range was opened, Unix ms.
    pub opened_at_ms: i64,
}

impl Limits {
    /// Before appending a record: does a record of a new hour (`new_hour`) end the range
    /// before it?
    pub fn before_append(&self, range: &RangeStats, new_hour: bool) -> Option<Reason> {
        (new_hour && range.hours >= self.max_hours.max(1)).then_some(Reason::Hours)
    }

    /// After appending: is the range full?
    pub fn after_append(&self, range: &RangeStats) -> Option<Reason> {
        if range.records >= self.max_records {
            Some(Reason::Records)
        } else if range.bytes >= self.max_bytes {
            Some(Reason::Bytes)
        } else {
            None
        }
    }
}

impl Rotation {
    /// On a tick at `now_ms`: has the range been open too long?
    pub fn on_tick(&self, range: &RangeStats, now_ms: i64) -> Option<Reason> {
        (now_ms.saturating_sub(range.opened_at_ms) >= self.max_age_ms).then_some(Reason::Age)
    }
}

/// Which ranges to close so buffered bytes fall to `budget`: largest first. `files` holds
/// `(id, buffered bytes)`; returns the ids to close.
pub fn over_budget<K: Clone>(files: &[(K, u64)], budget: u64) -> Vec<K> {
    let mut total: u64 = files.iter().map(|(_, b)| b).sum();
    if total <= budget {
        return Vec::new();
    }
    let mut order: Vec<&(K, u64)> = files.iter().collect();
    order.sort_by_key(|f| std::cmp::Reverse(f.1));
    let mut out = Vec::new();
    for (k, b) in order {
        if total <= budget {
            break;
        }
        total -= b;
        out.push(k.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stats(records: u64, bytes: u64, hours: usize, opened: i64) -> RangeStats {
        RangeStats {
            records,
            bytes,
            hours,
            opened_at_ms: opened,
        }
    }

    const L: Limits = Limits {
        max_records: 100,
        max_bytes: 1000,
        max_hours: 2,
    };
    const R: Rotation = Rotation {
        limits: L,
        max_age_ms: 5000,
    };

    #[test]
    fn limits() {
        assert_eq!(L.after_append(&stats(99, 999, 1, 0)), None);
        assert_eq!(L.after_append(&stats(100, 0, 1, 0)), Some(Reason::Records));
        assert_eq!(L.after_append(&stats(1, 1000, 1, 0)), Some(Reason::Bytes));
        assert_eq!(L.before_append(&stats(1, 1, 2, 0), false), None);
        assert_eq!(L.before_append(&stats(1, 1, 1, 0), true), None);
        assert_eq!(
            L.before_append(&stats(1, 1, 2, 0), true),
            Some(Reason::Hours)
        );
        assert_eq!(R.on_tick(&stats(1, 1, 1, 1000), 5999), None);
        assert_eq!(R.on_tick(&stats(1, 1, 1, 1000), 6000), Some(Reason::Age));
        assert!(Reason::Age.timed() && !Reason::Records.timed() && !Reason::Cut.timed());
    }

    #[test]
    fn largest_files_go_first() {
        let files = [("a", 10), ("b", 50), ("c", 30)];
        assert_eq!(over_budget(&files, 100), Vec::<&str>::new());
        assert_eq!(over_budget(&files, 80), vec!["b"]);
        assert_eq!(over_budget(&files, 5), vec!["b", "c", "a"]);
    }

    proptest! {
        /// Feeding records one by one never lets a range exceed the limits by more than the last
        /// record.
        #[test]
        fn ranges_respect_the_limits(sizes in prop::collection::vec(1u64..300, 1..500)) {
            let mut ranges: Vec<RangeStats> = Vec::new();
            let mut open: Option<RangeStats> = None;
            for size in sizes {
                let f = open.get_or_insert(stats(0, 0, 1, 0));
                f.records += 1;
                f.bytes += size;
                if L.after_append(f).is_some() {
                    ranges.extend(open.take());
                }
            }
            for f in &ranges {
                prop_assert!(f.records <= L.max_records);
                prop_assert!(f.bytes < L.max_bytes + 300);
            }
        }

        #[test]
        fn budget_is_met(files in prop::collection::vec(0u64..1000, 0..50), budget in 0u64..20_000) {
            let files: Vec<(usize, u64)> = files.into_iter().enumerate().collect();
            let closed = over_budget(&files, budget);
            let left: u64 = files.iter().filter(|(k, _)| !closed.contains(k)).map(|(_, b)| b).sum();
            prop_assert!(left <= budget);
            // Minimal in count for a largest-first choice: dropping the last closed would exceed.
            if let Some(last) = closed.last() {
                prop_assert!(left + files[*last].1 > budget);
            }
        }
    }
}
