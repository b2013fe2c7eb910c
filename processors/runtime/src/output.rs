//! What a processor emits: a record to produce ([`Output`]), and the cut-down copy of one the
//! broker refuses as too large ([`truncated`]).

use rdkafka::message::OwnedHeaders;
use std::sync::Arc;

/// A record to produce.
#[derive(Debug, Clone)]
pub struct Output {
    /// Destination topic (shared: the processors keep one `Arc` per output topic, so an
    /// output costs no allocation for its topic name).
    pub topic: Arc<str>,
    /// Key (the client id for every SensorFlow topic; shared by the three features of one
    /// reading).
    pub key: Option<Arc<[u8]>>,
    /// Framed value.
    pub value: Vec<u8>,
    /// Kafka timestamp, ms (SensorFlow sets it to the event time).
    pub timestamp_ms: Option<i64>,
    /// Headers (dead letters).
    pub headers: Option<OwnedHeaders>,
}

/// Bytes of a too-large record's value that are kept (64 KiB): enough to diagnose it,
/// far below every broker's default `message.max.bytes` (1 MB).
pub const TRUNCATED_VALUE_BYTES: usize = 64 * 1024;
/// Header with the original value size in bytes of a truncated record.
pub const ORIGINAL_SIZE_HEADER: &str = "sensorflow.original.size";

/// `out` with its value cut to [`TRUNCATED_VALUE_BYTES`] and `sensorflow.original.size`
/// (bytes) and `sensorflow.truncated: true` headers added.
pub fn truncated(out: &Output) -> Output {
    let size = out.value.len().to_string();
    let mut h = out.headers.clone().unwrap_or_default();
    for (k, v) in [
        (ORIGINAL_SIZE_HEADER, size.as_str()),
        ("sensorflow.truncated", "true"),
    ] {
        h = h.insert(rdkafka::message::Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    Output {
        topic: out.topic.clone(),
        key: out.key.clone(),
        value: out.value[..out.value.len().min(TRUNCATED_VALUE_BYTES)].to_vec(),
        timestamp_ms: out.timestamp_ms,
        headers: Some(h),
    }
}
