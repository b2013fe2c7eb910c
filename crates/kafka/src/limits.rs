//! Pure checks of a record against what its topic accepts: the topic's timestamp bounds and
//! its largest record batch. No I/O; [`crate::admin::topic_limits`] reads the values with
//! DescribeConfigs.
//!
//! A broker refuses for good (no retry helps) a record whose `CreateTime` timestamp lies more
//! than `message.timestamp.after.max.ms` ahead of its clock (KIP-937/KIP-1030: 1 h by default
//! since Apache Kafka 4.0) or more than `message.timestamp.before.max.ms` behind it (unbounded
//! by default), and a batch larger than `max.message.bytes` (1 MiB + 12 bytes by default).
//! Checking before sending lets a processor dead-letter such a record with its reason instead
//! of having its delivery fail, and lets it bound the event times it accepts by what its
//! outputs accept.

use std::collections::BTreeMap;

/// Kafka's record batch header, bytes (magic v2: base offset to records count).
const BATCH_HEADER_BYTES: usize = 61;
/// Upper bound of a record's own framing in a v2 batch, bytes: length, attributes, timestamp
/// and offset deltas, key and value lengths, header count (varints, 5 or 10 bytes each).
const RECORD_OVERHEAD_BYTES: usize = 40;
/// Upper bound of one header's framing, bytes (two varint lengths).
const HEADER_OVERHEAD_BYTES: usize = 10;

/// Bytes a single-record v2 batch of this record takes at most, uncompressed.
pub fn batch_bytes(
    key: usize,
    value: usize,
    headers: impl Iterator<Item = (usize, usize)>,
) -> usize {
    BATCH_HEADER_BYTES
        + RECORD_OVERHEAD_BYTES
        + key
        + value
        + headers
            .map(|(k, v)| HEADER_OVERHEAD_BYTES + k + v)
            .sum::<usize>()
}

/// What one topic accepts. `None`: no bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicLimits {
    /// `message.timestamp.after.max.ms`: how far ahead of the broker clock a record's
    /// timestamp may be, ms.
    pub after_max_ms: Option<i64>,
    /// `message.timestamp.before.max.ms`: how far behind the broker clock a record's timestamp
    /// may be, ms.
    pub before_max_ms: Option<i64>,
    /// `max.message.bytes`: the largest record batch, bytes.
    pub max_message_bytes: Option<usize>,
}

/// Why a topic would refuse a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Timestamp more than `after.max` ahead of the clock.
    #[error(
        "timestamp {timestamp_ms} ms is more than {bound_ms} ms ahead of the clock ({now_ms} ms): \
         {topic} refuses it (message.timestamp.after.max.ms)"
    )]
    TimestampAhead {
        /// The topic.
        topic: String,
        /// The record's timestamp, ms.
        timestamp_ms: i64,
        /// The clock, ms.
        now_ms: i64,
        /// The topic's bound, ms.
        bound_ms: i64,
    },
    /// Timestamp more than `before.max` behind the clock.
    #[error(
        "timestamp {timestamp_ms} ms is more than {bound_ms} ms behind the clock ({now_ms} ms): \
         {topic} refuses it (message.timestamp.before.max.ms)"
    )]
    TimestampBehind {
        /// The topic.
        topic: String,
        /// The record's timestamp, ms.
        timestamp_ms: i64,
        /// The clock, ms.
        now_ms: i64,
        /// The topic's bound, ms.
        bound_ms: i64,
    },
    /// Larger than the topic's `max.message.bytes`.
    #[error("record of up to {bytes} bytes exceeds {topic}'s max.message.bytes ({max_bytes})")]
    TooLarge {
        /// The topic.
        topic: String,
        /// The record's batch size estimate ([`batch_bytes`]), bytes.
        bytes: usize,
        /// The topic's bound, bytes.
        max_bytes: usize,
    },
}

impl Refusal {
    /// Reason code (the `sensorflow.reason` header of the dead letter): `refused-timestamp`
    /// or `refused-size`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::TimestampAhead { .. } | Refusal::TimestampBehind { .. } => "refused-timestamp",
            Refusal::TooLarge { .. } => "refused-size",
        }
    }

    /// True when the timestamp (not the size) is refused.
    pub fn is_timestamp(&self) -> bool {
        !matches!(self, Refusal::TooLarge { .. })
    }
}

impl TopicLimits {
    /// The limits in a topic's effective configuration (DescribeConfigs). A topic with
    /// `message.timestamp.type=LogAppendTime` has no timestamp bounds (the broker stamps
    /// records itself); `Long.MAX_VALUE` (Kafka's "unbounded") is no bound.
    pub fn from_config(config: &BTreeMap<String, String>) -> Self {
        let ms = |k: &str| {
            config
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|v| *v >= 0 && *v < i64::MAX)
        };
        let log_append = config
            .get("message.timestamp.type")
            .is_some_and(|v| v.eq_ignore_ascii_case("LogAppendTime"));
        Self {
            after_max_ms: ms("message.timestamp.after.max.ms").filter(|_| !log_append),
            before_max_ms: ms("message.timestamp.before.max.ms").filter(|_| !log_append),
            max_message_bytes: config
                .get("max.message.bytes")
                .and_then(|v| v.parse::<usize>().ok()),
        }
    }

    /// Checks a record of `bytes` ([`batch_bytes`]) with timestamp `timestamp_ms` (`None`:
    /// the producer stamps it now) for `topic` at clock `now_ms`.
    ///
    /// # Errors
    /// The first [`Refusal`] that applies (timestamp before size).
    pub fn check(
        &self,
        topic: &str,
        timestamp_ms: Option<i64>,
        bytes: usize,
        now_ms: i64,
    ) -> Result<(), Refusal> {
        if let Some(ts) = timestamp_ms {
            if let Some(bound) = self.after_max_ms
                && ts > now_ms.saturating_add(bound)
            {
                return Err(Refusal::TimestampAhead {
                    topic: topic.to_owned(),
                    timestamp_ms: ts,
                    now_ms,
                    bound_ms: bound,
                });
            }
            if let Some(bound) = self.before_max_ms
                && ts < now_ms.saturating_sub(bound)
            {
                return Err(Refusal::TimestampBehind {
                    topic: topic.to_owned(),
                    timestamp_ms: ts,
                    now_ms,
                    bound_ms: bound,
                });
            }
        }
        match self.max_message_bytes {
            Some(max) if bytes > max => Err(Refusal::TooLarge {
                topic: topic.to_owned(),
                bytes,
                max_bytes: max,
            }),
            _ => Ok(()),
        }
    }
}

/// The limits of every output topic of a processor, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputLimits {
    /// Limits by topic; a topic absent here is not checked.
    pub topics: BTreeMap<String, TopicLimits>,
}

impl OutputLimits {
    /// The limits of `topic` (none when unknown).
    pub fn of(&self, topic: &str) -> TopicLimits {
        self.topics.get(topic).copied().unwrap_or_default()
    }

    /// The tightest `after.max` bound over `topics`, ms (`None`: none of them bounds it).
    /// A processor that accepts event times up to this far ahead of its clock produces only
    /// outputs these topics accept (outputs carry their input's event time).
    pub fn min_after_max_ms<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> Option<i64> {
        topics
            .into_iter()
            .filter_map(|t| self.of(t).after_max_ms)
            .min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn stock_kafka_4_limits_are_read_and_unbounded_values_are_none() {
        let l = TopicLimits::from_config(&cfg(&[
            ("message.timestamp.after.max.ms", "3600000"),
            ("message.timestamp.before.max.ms", "9223372036854775807"),
            ("max.message.bytes", "1048588"),
            ("message.timestamp.type", "CreateTime"),
        ]));
        assert_eq!(
            l,
            TopicLimits {
                after_max_ms: Some(3_600_000),
                before_max_ms: None,
                max_message_bytes: Some(1_048_588),
            }
        );
        let appended = TopicLimits::from_config(&cfg(&[
            ("message.timestamp.after.max.ms", "3600000"),
            ("message.timestamp.type", "LogAppendTime"),
        ]));
        assert_eq!(appended.after_max_ms, None);
    }

    #[test]
    fn a_record_is_refused_beyond_each_bound_and_accepted_at_it() {
        let l = TopicLimits {
            after_max_ms: Some(1000),
            before_max_ms: Some(5000),
            max_message_bytes: Some(500),
        };
        let now = 1_000_000;
        assert!(l.check("t", Some(now + 1000), 500, now).is_ok());
        assert!(l.check("t", Some(now - 5000), 10, now).is_ok());
        assert!(l.check("t", None, 10, now).is_ok());
        assert_eq!(
            l.check("t", Some(now + 1001), 10, now).unwrap_err().code(),
            "refused-timestamp"
        );
        assert_eq!(
            l.check("t", Some(now - 5001), 10, now).unwrap_err().code(),
            "refused-timestamp"
        );
        let e = l.check("t", Some(now), 501, now).unwrap_err();
        assert_eq!(e.code(), "refused-size");
        assert!(!e.is_timestamp());
        assert!(
            TopicLimits::default()
                .check("t", Some(i64::MAX), usize::MAX, now)
                .is_ok()
        );
    }

    #[test]
    fn the_tightest_after_bound_of_the_outputs_wins() {
        let mut o = OutputLimits::default();
        o.topics.insert(
            "a".into(),
            TopicLimits {
                after_max_ms: Some(7),
                ..Default::default()
            },
        );
        o.topics.insert(
            "b".into(),
            TopicLimits {
                after_max_ms: Some(3),
                ..Default::default()
            },
        );
        o.topics.insert("c".into(), TopicLimits::default());
        assert_eq!(o.min_after_max_ms(["a", "b", "c"]), Some(3));
        assert_eq!(o.min_after_max_ms(["a", "c", "unknown"]), Some(7));
        assert_eq!(o.min_after_max_ms(["c"]), None);
    }

    #[test]
    fn the_batch_estimate_covers_key_value_and_headers() {
        let b = batch_bytes(3, 100, [(5, 7), (1, 1)].into_iter());
        assert_eq!(b, 61 + 40 + 3 + 100 + (10 + 12) + (10 + 2));
    }
}
