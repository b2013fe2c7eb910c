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
//! | `sensorflow.refused.topic` | an output refused by its topic: the topic it was meant for |
//!
//! A refused output ([`refused`]) keeps the headers it had (a late record's source headers),
//! under the new reason and error.

use crate::output::Output;
use crate::record::ConsumedRecord;
use rdkafka::message::{Header, OwnedHeaders};
use sensorflow_core::input::Reject;
#[cfg(test)]
use std::sync::Arc;

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
/// Header name of the topic a refused output was meant for.
pub const REFUSED_TOPIC: &str = "sensorflow.refused.topic";

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

/// The dead-letter record, to `topic`, of an output its own topic refuses (or would refuse):
/// its key, value and timestamp, reason `code`, `error`, the topic it was meant for, and the
/// output's own headers (a late record's source, for instance) except a previous reason and
/// error.
pub fn refused(out: &Output, code: &str, error: &str, topic: &str, processor: &str) -> Output {
    use rdkafka::message::Headers as _;
    let mut h = OwnedHeaders::new();
    let mut add = |k: &str, v: &[u8]| {
        h = std::mem::take(&mut h).insert(Header {
            key: k,
            value: Some(v),
        });
    };
    add(REASON, code.as_bytes());
    add(ERROR, error.as_bytes());
    add(REFUSED_TOPIC, out.topic.as_bytes());
    let mut has_source_timestamp = false;
    let mut has_processor = false;
    if let Some(orig) = &out.headers {
        for x in orig.iter() {
            if x.key == REASON || x.key == ERROR {
                continue;
            }
            has_source_timestamp |= x.key == SOURCE_TIMESTAMP;
            has_processor |= x.key == PROCESSOR;
            add(x.key, x.value.unwrap_or_default());
        }
    }
    if let (false, Some(ts)) = (has_source_timestamp, out.timestamp_ms) {
        add(SOURCE_TIMESTAMP, ts.to_string().as_bytes());
    }
    if !has_processor {
        add(PROCESSOR, processor.as_bytes());
    }
    Output {
        topic: topic.into(),
        key: out.key.clone(),
        value: out.value.clone(),
        timestamp_ms: out.timestamp_ms,
        headers: Some(h),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rdkafka::message::Headers as _;

    fn header(o: &Output, k: &str) -> Vec<String> {
        o.headers
            .as_ref()
            .unwrap()
            .iter()
            .filter(|h| h.key == k)
            .map(|h| String::from_utf8(h.value.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_refused_late_record_keeps_its_source_under_the_new_reason() {
        let late = Output {
            topic: "p.late".into(),
            key: Some(Arc::from(&b"c1"[..])),
            value: b"v".to_vec(),
            timestamp_ms: Some(42),
            headers: Some(
                OwnedHeaders::new()
                    .insert(Header {
                        key: REASON,
                        value: Some("late"),
                    })
                    .insert(Header {
                        key: ERROR,
                        value: Some("older than the watermark"),
                    })
                    .insert(Header {
                        key: SOURCE_TOPIC,
                        value: Some("p.sz"),
                    })
                    .insert(Header {
                        key: SOURCE_OFFSET,
                        value: Some("7"),
                    })
                    .insert(Header {
                        key: PROCESSOR,
                        value: Some("window-processor"),
                    }),
            ),
        };
        let d = refused(
            &late,
            "refused-timestamp",
            "too old",
            "p.dlq",
            "window-processor",
        );
        assert_eq!(&*d.topic, "p.dlq");
        assert_eq!(header(&d, REASON), ["refused-timestamp"]);
        assert_eq!(header(&d, ERROR), ["too old"]);
        assert_eq!(header(&d, REFUSED_TOPIC), ["p.late"]);
        assert_eq!(header(&d, SOURCE_TOPIC), ["p.sz"]);
        assert_eq!(header(&d, SOURCE_OFFSET), ["7"]);
        assert_eq!(header(&d, SOURCE_TIMESTAMP), ["42"]);
        assert_eq!(header(&d, PROCESSOR), ["window-processor"]);
        assert_eq!((d.value, d.timestamp_ms), (b"v".to_vec(), Some(42)));
    }
}
