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
            Reject::InvalidFeature(_) => "invalid-feature",
            Reject::Late { .. } => "late",
            Reject::Model(_) => "invalid-vector",
        }
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
        assert_eq!(client_id(None), Err(Reject::MissingKey));
        assert_eq!(client_id(Some(b"")), Err(Reject::MissingKey));
        assert_eq!(client_id(Some(&[0xc3, 0x28])), Err(Reject::KeyNotUtf8));
        assert_eq!(client_id(Some(b"2007-01-01")), Ok("2007-01-01"));
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
    }
}
