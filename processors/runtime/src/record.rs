//! The transport-free record the consume loops hand to processors and to the sink.
//!
//! ```text
//!   librdkafka BorrowedMessage ──ConsumedRecord::from_kafka──► ConsumedRecord<'_> ──► Processor::process
//!   a unit test ─────────────────ConsumedRecord::new(..)────────┘                    (no broker)
//! ```
//!
//! A [`ConsumedRecord`] borrows the key, value and headers of the message it was made from (no
//! copy on the hot path; a record without headers allocates nothing). Its accessors carry the
//! names of rdkafka's `Message` trait, so processor code reads the same either way.

use rdkafka::Message;
use rdkafka::message::Headers;

/// One header of a consumed record: a UTF-8 key and an optional byte value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader<'a> {
    /// Header key.
    pub key: &'a str,
    /// Header value (`None`: a null value).
    pub value: Option<&'a [u8]>,
}

/// A consumed Kafka record, independent of the client library: where it was read (topic,
/// partition, offset), its timestamp, key, value and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord<'a> {
    /// Topic it was read from.
    pub topic: &'a str,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Kafka timestamp, Unix epoch ms (`None` when the record carries none).
    pub timestamp_ms: Option<i64>,
    /// Key bytes (`None`: a null key).
    pub key: Option<&'a [u8]>,
    /// Value bytes (`None`: a null value, a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers in record order (empty when it has none).
    pub headers: Vec<RecordHeader<'a>>,
}

impl<'a> ConsumedRecord<'a> {
    /// A record of `topic`/`partition` at `offset` with no timestamp, key, value or headers
    /// (tests build the rest with the `with_*` methods).
    pub fn new(topic: &'a str, partition: i32, offset: i64) -> Self {
        Self {
            topic,
            partition,
            offset,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: Vec::new(),
        }
    }

    /// The same record with key `key`.
    #[must_use]
    pub fn with_key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    /// The same record with value `value`.
    #[must_use]
    pub fn with_value(mut self, value: &'a [u8]) -> Self {
        self.value = Some(value);
        self
    }

    /// The same record with Kafka timestamp `ms` (Unix epoch ms).
    #[must_use]
    pub fn with_timestamp(mut self, ms: i64) -> Self {
        self.timestamp_ms = Some(ms);
        self
    }

    /// The same record with one more header.
    #[must_use]
    pub fn with_header(mut self, key: &'a str, value: &'a [u8]) -> Self {
        self.headers.push(RecordHeader {
            key,
            value: Some(value),
        });
        self
    }

    /// A view of a librdkafka message (borrows its key, value and headers).
    pub fn from_kafka<M: Message>(m: &'a M) -> Self {
        let headers = m.headers().map_or_else(Vec::new, |hs| {
            hs.iter()
                .map(|h| RecordHeader {
                    key: h.key,
                    value: h.value,
                })
                .collect()
        });
        Self {
            headers,
            ..Self::from_kafka_without_headers(m)
        }
    }

    /// [`ConsumedRecord::from_kafka`] with no headers: librdkafka parses a message's headers
    /// (allocating a list) only when asked, so a reader that never looks at them skips that
    /// (5.8 % of join-predict's CPU when its features carried headers).
    pub fn from_kafka_without_headers<M: Message>(m: &'a M) -> Self {
        Self {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key(),
            value: m.payload(),
            headers: Vec::new(),
        }
    }

    /// Topic it was read from.
    pub fn topic(&self) -> &'a str {
        self.topic
    }

    /// Partition it was read from.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Its offset.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Key bytes.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    /// Value bytes (rdkafka's name for the value).
    pub fn payload(&self) -> Option<&'a [u8]> {
        self.value
    }

    /// The value of the first header named `key` (`None` when absent or null).
    pub fn header(&self, key: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
    }
}

#[cfg(test)]
mod tests {
    use super::ConsumedRecord;
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    #[test]
    fn a_kafka_message_becomes_the_same_record() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "a",
                value: Some(b"1".as_slice()),
            })
            .insert(Header::<&[u8]> {
                key: "null",
                value: None,
            });
        let m = OwnedMessage::new(
            Some(b"value".to_vec()),
            Some(b"client-1".to_vec()),
            "SZ".to_owned(),
            Timestamp::CreateTime(1_700_000_000_000),
            3,
            42,
            Some(headers),
        );
        let r = ConsumedRecord::from_kafka(&m);
        let want = ConsumedRecord::new("SZ", 3, 42)
            .with_key(b"client-1")
            .with_value(b"value")
            .with_timestamp(1_700_000_000_000)
            .with_header("a", b"1");
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.headers[1].key, "null");
        assert_eq!(r.headers[1].value, None);
        assert_eq!(r.header("a"), Some(b"1".as_slice()));
        assert_eq!(r.header("missing"), None);
        let mut r2 = r.clone();
        r2.headers.truncate(1);
        assert_eq!(r2, want);
        let bare = OwnedMessage::new(None, None, "SX".into(), Timestamp::NotAvailable, 0, 7, None);
        let r = ConsumedRecord::from_kafka(&bare);
        assert_eq!(r, ConsumedRecord::new("SX", 0, 7));
        assert!(r.headers.is_empty() && r.payload().is_none() && r.key().is_none());
    }
}
