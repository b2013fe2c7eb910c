//! Dead-letter and late records: the original key and value, with the reason in headers.
//!
//! Headers (all UTF-8 strings):
//! | header | value |
//! |---|---|
//! | `sensorflow.reason` | reason code: `decode`, `missing-key`, `non-finite`, `late`, … |
//! | `sensorflow.error` | human-readable message |
//! | `sensorflow.source.topic` | topic the record came from |
//! | `sensorflow.source.partition` | its partition |
//! | `sensorflow.source.offset` | its offset |
//! | `sensorflow.source.timestamp` | its Kafka timestamp, ms (when it had one) |
//! | `sensorflow.processor` | which processor rejected it |

use crate::output::Output;
use crate::record::ConsumedRecord;
use rdkafka::message::{Header, OwnedHeaders};
use sensorflow_core::input::Reject;

/// Header name of the reason code.
pub const REASON: &str = "sensorflow.reason";
/// Header name of the error message.
pub const ERROR: &str = "sensorflow.error";
/// Header name of the source topic.
pub const SOURCE_TOPIC: &str = "sensorflow.source.topic";
/// Header name of the source partition.
pub const SOURCE_PARTITION: &str = "sensorflow.source.partition";
/// Header name of the source offset.
pub const SOURCE_OFFSET: &str = "sensorflow.source.offset";
/// Header name of the source Kafka timestamp.
pub const SOURCE_TIMESTAMP: &str = "sensorflow.source.timestamp";
/// Header name of the rejecting processor.
pub const PROCESSOR: &str = "sensorflow.processor";

/// Builds the dead-letter record for `msg` rejected with `reject`, to `topic`: its key, value
/// and timestamp, with the headers of the table above.
pub fn dead_letter(
    msg: &ConsumedRecord<'_>,
    reject: &Reject,
    topic: &str,
    processor: &str,
) -> Output {
    let mut h = OwnedHeaders::new();
    let mut add = |k: &str, v: &str| {
        h = std::mem::take(&mut h).insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    };
    add(REASON, reject.code());
    add(ERROR, &reject.to_string());
    add(SOURCE_TOPIC, msg.topic());
    add(SOURCE_PARTITION, &msg.partition().to_string());
    add(SOURCE_OFFSET, &msg.offset().to_string());
    if let Some(ts) = msg.timestamp_ms {
        add(SOURCE_TIMESTAMP, &ts.to_string());
    }
    add(PROCESSOR, processor);
    Output {
        topic: topic.into(),
        key: msg.key().map(Into::into),
        value: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        timestamp_ms: msg.timestamp_ms,
        headers: Some(h),
    }
}
