//! Decoding and validating input records, and the reasons a record is dead-lettered.
//!
//! Every record that cannot be processed gets exactly one [`Reject`] reason. The runtime sends
//! the original bytes to the dead-letter (or late) topic with the reason, source topic,
//! partition and offset in headers, so nothing is lost silently.

use crate::proto::{Feature, FeatureKind, Sensor, SensorReading};
use crate::wire::Framing;
use prost::Message;

/// Why a record was not processed. `code()` is the value of the `sensorflow.reason` header.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reject {
    /// The record has no key (the client id).
    #[error("record has no key (the client id)")]
    MissingKey,
    /// The key is not UTF-8.
    #[error("record key is not valid UTF-8")]
    KeyNotUtf8,
    /// The record has no value.
    #[error("record has no value")]
    MissingValue,
    /// The framing header is wrong.
    #[error("framing: {0}")]
    Framing(#[from] crate::wire::FramingError),
    /// Protobuf decoding failed.
    #[error("protobuf decode failed: {0}")]
    Decode(String),
    /// The value is NaN or infinite.
    #[error("value {0} is not finite")]
    NonFinite(f64),
    /// An SX/SY (categorical) value is not an integer, or out of the i64 range.
    #[error("categorical sensor value {0} is not an integer")]
    NonInteger(f64),
    /// The `sensor` field disagrees with the topic.
    #[error("reading says sensor {found:?} but arrived on the {expected:?} topic")]
    SensorMismatch {
        /// The topic's sensor.
        expected: Sensor,
        /// The message's sensor field.
        found: Sensor,
    },
    /// An enum field holds a value the schema does not define (a newer or corrupt writer).
    #[error("{field} = {value} is not a value of the schema's enum")]
    UnknownEnum {
        /// The field.
        field: &'static str,
        /// Its value.
        value: i32,
    },
    /// A feature with an unknown kind or a bin outside 0..=9.
    #[error("invalid feature: {0}")]
    InvalidFeature(String),
    /// Older than the watermark.
    #[error("event time {event_time_ms} ms is older than the watermark {watermark_ms} ms")]
    Late {
        /// The record's event time, ms.
        event_time_ms: i64,
        /// The watermark, ms.
        watermark_ms: i64,
    },
    /// The model refused the feature vector.
    #[error("model input invalid: {0}")]
    Model(#[from] crate::model::ModelError),
    /// The event time lies beyond the wall clock plus the allowed future skew.
    #[error(
        "event time {event_time_ms} ms is more than {max_skew_ms} ms ahead of the clock ({now_ms} ms)"
    )]
    Future {
        /// The record's event time, ms.
        event_time_ms: i64,
        /// The wall clock when it was checked, ms since the Unix epoch.
        now_ms: i64,
        /// The allowed skew, ms.
        max_skew_ms: i64,
    },
    /// The event time lies before the configured floor.
    #[error("event time {event_time_ms} ms is before the floor {min_event_time_ms} ms")]
    TooOld {
        /// The record's event time, ms.
        event_time_ms: i64,
        /// The floor, ms since the Unix epoch.
        min_event_time_ms: i64,
    },
    /// An output of the record would be refused by its topic (a timestamp outside the topic's
    /// `message.timestamp.*.max.ms`, a record above its `max.message.bytes`): the record is
    /// dead-lettered instead of producing part of its outputs.
    #[error("{detail}")]
    Refused {
        /// `refused-timestamp` or `refused-size`.
        code: &'static str,
        /// Which topic refuses what, and why.
        detail: String,
    },
    /// |value| exceeds the configured bound.
    #[error("|value| of {value} exceeds the bound {max_abs}")]
    OutOfRange {
        /// The value.
        value: f64,
        /// The bound.
        max_abs: f64,
    },
}

impl Reject {
    /// Short machine-readable reason (`sensorflow.reason` header, metric label).
    pub fn code(&self) -> &'static str {
        match self {
            Reject::MissingKey => "missing-key",
            Reject::KeyNotUtf8 => "key-not-utf8",
            Reject::MissingValue => "missing-value",
            Reject::Framing(_) => "framing",
            Reject::Decode(_) => "decode",
            Reject::NonFinite(_) => "non-finite",
            Reject::NonInteger(_) => "non-integer",
            Reject::SensorMismatch { .. } => "sensor-mismatch",
            Reject::UnknownEnum { .. } => "unknown-enum",
            Reject::InvalidFeature(_) => "invalid-feature",
            Reject::Late { .. } => "late",
            Reject::Model(_) => "invalid-vector",
            Reject::Future { .. } => "future",
            Reject::TooOld { .. } => "too-old",
            Reject::OutOfRange { .. } => "out-of-range",
            Reject::Refused { code, .. } => code,
        }
    }
}

/// Bounds on a reading's event time and value, checked before a reading reaches any state.
///
/// One reading dated far in the future would move a partition's watermark past every good
/// reading after it (all of them late), and event times near `i64::MIN`/`MAX` or values near
/// `f64::MAX` would overflow window arithmetic; such readings are dead-lettered instead with
/// reason `future`, `too-old` or `out-of-range`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadingBounds {
    /// Largest allowed event time ahead of the wall clock, ms (default 5 min: far above a
    /// clock kept by NTP, and the most one skewed client can move its partition's watermark
    /// ahead of the others, so the most it can push them into `late`). The processors never
    /// allow more than their output topics accept ([`ReadingBounds::within_topic_bound`]).
    pub max_future_skew_ms: i64,
    /// Earliest allowed event time, ms since the Unix epoch (default 0, 1970-01-01).
    pub min_event_time_ms: i64,
    /// Largest allowed |value| (default 1e12: beyond any physical sensor reading here, and
    /// small enough that sums of 2^20 values stay far from f64 overflow).
    pub max_abs_value: f64,
}

/// Default of [`ReadingBounds::max_future_skew_ms`]: 5 min, ms.
pub const DEFAULT_MAX_FUTURE_SKEW_MS: i64 = 300_000;

impl Default for ReadingBounds {
    fn default() -> Self {
        Self {
            max_future_skew_ms: DEFAULT_MAX_FUTURE_SKEW_MS,
            min_event_time_ms: 0,
            max_abs_value: 1e12,
        }
    }
}

impl ReadingBounds {
    /// Checks `r` against the bounds at wall-clock time `now_ms` (passed in: the core reads
    /// no clock).
    ///
    /// # Errors
    /// [`Reject::Future`], [`Reject::TooOld`] or [`Reject::OutOfRange`].
    pub fn check(&self, r: &SensorReading, now_ms: i64) -> Result<(), Reject> {
        self.check_time(r.event_time_ms, now_ms)?;
        if r.value.abs() > self.max_abs_value {
            return Err(Reject::OutOfRange {
                value: r.value,
                max_abs: self.max_abs_value,
            });
        }
        Ok(())
    }
}

impl ReadingBounds {
    /// These bounds with the future skew no looser than what an output topic accepts:
    /// outputs carry their reading's event time as their timestamp, and a broker refuses a
    /// timestamp more than `message.timestamp.after.max.ms` (`topic_after_max_ms`, Kafka 4's
    /// default 1 h, KIP-1030) ahead of its clock. A margin of a tenth of that bound (at most
    /// 1 min) covers the difference between the processor's clock and the broker's.
    pub fn within_topic_bound(self, topic_after_max_ms: Option<i64>) -> Self {
        let Some(bound) = topic_after_max_ms else {
            return self;
        };
        let margin = (bound / 10).min(60_000);
        Self {
            max_future_skew_ms: self.max_future_skew_ms.min(bound - margin),
            ..self
        }
    }

    /// Checks an event time alone (features carry their SZ reading's event time) at
    /// wall-clock time `now_ms`.
    ///
    /// # Errors
    /// [`Reject::Future`] or [`Reject::TooOld`].
    pub fn check_time(&self, event_time_ms: i64, now_ms: i64) -> Result<(), Reject> {
        if event_time_ms > now_ms.saturating_add(self.max_future_skew_ms) {
            return Err(Reject::Future {
                event_time_ms,
                now_ms,
                max_skew_ms: self.max_future_skew_ms,
            });
        }
        if event_time_ms < self.min_event_time_ms {
            return Err(Reject::TooOld {
                event_time_ms,
                min_event_time_ms: self.min_event_time_ms,
            });
        }
        Ok(())
    }
}

/// The client id of a record from its key.
///
/// # Errors
/// [`Reject::MissingKey`] or [`Reject::KeyNotUtf8`].
pub fn client_id(key: Option<&[u8]>) -> Result<&str, Reject> {
    let key = key.filter(|k| !k.is_empty()).ok_or(Reject::MissingKey)?;
    std::str::from_utf8(key).map_err(|_| Reject::KeyNotUtf8)
}

/// Decodes a sensor reading from the `expected` sensor's topic and checks it.
///
/// # Errors
/// A [`Reject`] for a missing value, bad framing, undecodable protobuf, non-finite value,
/// non-integer categorical value or a sensor field that disagrees with the topic.
pub fn decode_reading(
    framing: &Framing,
    value: Option<&[u8]>,
    expected: Sensor,
) -> Result<SensorReading, Reject> {
    let bytes = value.ok_or(Reject::MissingValue)?;
    let (pb, _) = framing.decode(bytes)?;
    let r = SensorReading::decode(pb).map_err(|e| Reject::Decode(e.to_string()))?;
    if Sensor::try_from(r.sensor).is_err() {
        // prost maps an unknown value to the default (unspecified), which would be accepted.
        return Err(Reject::UnknownEnum {
            field: "sensor",
            value: r.sensor,
        });
    }
    if !r.value.is_finite() {
        return Err(Reject::NonFinite(r.value));
    }
    let found = r.sensor();
    if found != Sensor::Unspecified && found != expected {
        return Err(Reject::SensorMismatch { expected, found });
    }
    if matches!(expected, Sensor::Sx | Sensor::Sy) {
        categorical(r.value)?;
    }
    Ok(r)
}

/// A categorical value as an integer.
///
/// # Errors
/// [`Reject::NonInteger`] when `v` has a fractional part or does not fit in i64.
pub fn categorical(v: f64) -> Result<i64, Reject> {
    if v.fract() != 0.0 || v.abs() >= 9.0e15 {
        return Err(Reject::NonInteger(v));
    }
    Ok(v as i64)
}

/// Decodes a feature from the `expected` kind's topic and checks it.
///
/// # Errors
/// A [`Reject`] for a missing value, bad framing, undecodable protobuf, or a feature whose
/// kind disagrees with the topic or whose bin is outside 0..=9.
pub fn decode_feature(
    framing: &Framing,
    value: Option<&[u8]>,
    expected: FeatureKind,
) -> Result<Feature, Reject> {
    let bytes = value.ok_or(Reject::MissingValue)?;
    let (pb, _) = framing.decode(bytes)?;
    let f = Feature::decode(pb).map_err(|e| Reject::Decode(e.to_string()))?;
    if FeatureKind::try_from(f.kind).is_err() {
        return Err(Reject::UnknownEnum {
            field: "kind",
            value: f.kind,
        });
    }
    if f.kind() != expected {
        return Err(Reject::InvalidFeature(format!(
            "kind {:?} on the {:?} topic",
            f.kind(),
            expected
        )));
    }
    if f.bin >= crate::binning::BINS {
        return Err(Reject::InvalidFeature(format!(
            "bin {} is not in 0..=9",
            f.bin
        )));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &SensorReading) -> Vec<u8> {
        r.encode_to_vec()
    }

    #[test]
    fn good_readings_decode() {
        let r = SensorReading {
            event_time_ms: 5,
            value: 3.0,
            sensor: Sensor::Sx as i32,
            ingest_time_ms: 0,
        };
        let got = decode_reading(&Framing::Plain, Some(&enc(&r)), Sensor::Sx).unwrap();
        assert_eq!(got, r);
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        let p = Framing::Plain;
        let code = |r: Result<SensorReading, Reject>| r.unwrap_err().code();
        assert_eq!(code(decode_reading(&p, None, Sensor::Sz)), "missing-value");
        assert_eq!(
            code(decode_reading(&p, Some(&[0xff, 0xff, 0xff]), Sensor::Sz)),
            "decode"
        );
        let nan = SensorReading {
            value: f64::NAN,
            ..Default::default()
        };
        assert_eq!(
            code(decode_reading(&p, Some(&enc(&nan)), Sensor::Sz)),
            "non-finite"
        );
        let frac = SensorReading {
            value: 1.5,
            ..Default::default()
        };
        assert_eq!(
            code(decode_reading(&p, Some(&enc(&frac)), Sensor::Sy)),
            "non-integer"
        );
        assert!(decode_reading(&p, Some(&enc(&frac)), Sensor::Sz).is_ok());
        let wrong = SensorReading {
            sensor: Sensor::Sx as i32,
            ..Default::default()
        };
        assert_eq!(
            code(decode_reading(&p, Some(&enc(&wrong)), Sensor::Sz)),
            "sensor-mismatch"
        );
        let c = Framing::Confluent { schema_id: 3 };
        assert_eq!(
            code(decode_reading(&c, Some(&[1, 0, 0, 0, 3, 0]), Sensor::Sz)),
            "framing"
        );
        let unknown = SensorReading {
            sensor: 99,
            ..Default::default()
        };
        assert_eq!(
            code(decode_reading(&p, Some(&enc(&unknown)), Sensor::Sz)),
            "unknown-enum"
        );
        assert_eq!(client_id(None), Err(Reject::MissingKey));
        assert_eq!(client_id(Some(b"")), Err(Reject::MissingKey));
        assert_eq!(client_id(Some(&[0xc3, 0x28])), Err(Reject::KeyNotUtf8));
        assert_eq!(client_id(Some(b"2007-01-01")), Ok("2007-01-01"));
    }

    #[test]
    fn readings_outside_the_bounds_are_rejected() {
        let b = ReadingBounds::default();
        let now = 1_800_000_000_000;
        let at = |t: i64, v: f64| SensorReading {
            event_time_ms: t,
            value: v,
            ..Default::default()
        };
        assert!(b.check(&at(now, 1.0), now).is_ok());
        assert!(b.check(&at(now + 300_000, 1.0), now).is_ok());
        let code = |r: Result<(), Reject>| r.unwrap_err().code();
        assert_eq!(code(b.check(&at(now + 300_001, 1.0), now)), "future");
        assert_eq!(code(b.check(&at(i64::MAX, 1.0), now)), "future");
        assert_eq!(code(b.check(&at(i64::MIN, 1.0), now)), "too-old");
        assert_eq!(code(b.check(&at(-1, 1.0), now)), "too-old");
        assert_eq!(code(b.check(&at(now, f64::MAX), now)), "out-of-range");
        assert_eq!(code(b.check(&at(now, -1e13), now)), "out-of-range");
        assert!(b.check(&at(now, -1e12), now).is_ok());
        // The wall clock itself near i64::MAX cannot overflow the check.
        assert!(b.check(&at(0, 0.0), i64::MAX).is_ok());
        // Event times alone (features).
        assert!(b.check_time(now, now).is_ok());
        assert_eq!(code(b.check_time(i64::MIN, now)), "too-old");
        assert_eq!(code(b.check_time(now + 3 * 86_400_000, now)), "future");
        assert_eq!(
            code(b.check_time(now + DEFAULT_MAX_FUTURE_SKEW_MS + 1, now)),
            "future"
        );
        assert!(b.check_time(now + DEFAULT_MAX_FUTURE_SKEW_MS, now).is_ok());
    }

    #[test]
    fn the_future_bound_is_never_looser_than_the_output_topics() {
        let loose = ReadingBounds {
            max_future_skew_ms: 2 * 86_400_000,
            ..ReadingBounds::default()
        };
        // Kafka 4's 1 h default, less a minute for the clocks' difference.
        assert_eq!(
            loose.within_topic_bound(Some(3_600_000)).max_future_skew_ms,
            3_540_000
        );
        // A small topic bound keeps nine tenths of it; no bound changes nothing.
        assert_eq!(
            loose.within_topic_bound(Some(10_000)).max_future_skew_ms,
            9_000
        );
        assert_eq!(loose.within_topic_bound(None), loose);
        // A tighter own bound stays.
        let d = ReadingBounds::default();
        assert_eq!(d.within_topic_bound(Some(3_600_000)), d);
    }

    #[test]
    fn features_are_checked() {
        let f = Feature {
            kind: FeatureKind::Fa as i32,
            bin: 10,
            ..Default::default()
        };
        let e = decode_feature(&Framing::Plain, Some(&f.encode_to_vec()), FeatureKind::Fa);
        assert_eq!(e.unwrap_err().code(), "invalid-feature");
        let f = Feature {
            kind: FeatureKind::Fi as i32,
            bin: 3,
            ..Default::default()
        };
        let e = decode_feature(&Framing::Plain, Some(&f.encode_to_vec()), FeatureKind::Fa);
        assert_eq!(e.unwrap_err().code(), "invalid-feature");
        let f = Feature {
            kind: -7,
            ..Default::default()
        };
        let e = decode_feature(&Framing::Plain, Some(&f.encode_to_vec()), FeatureKind::Fa);
        assert_eq!(e.unwrap_err().code(), "unknown-enum");
    }
}
