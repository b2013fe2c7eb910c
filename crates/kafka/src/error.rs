//! The admin calls' one error type.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Admin failures.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The broker call failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done (with the bootstrap servers, group or topic concerned).
        what: String,
        /// Cause.
        source: KafkaError,
    },
    /// The broker refused the client's SASL authentication (wrong username or password, or a
    /// mechanism the listener does not enable). `detail` is librdkafka's report of the
    /// refusal, which the failed request itself does not carry.
    #[error("{what}: SASL authentication failed: {detail}")]
    Authentication {
        /// What was being done (with the bootstrap servers).
        what: String,
        /// The broker's refusal as librdkafka logged it.
        detail: String,
    },
    /// A topic exists with another partition count.
    #[error("topic {topic} has {actual} partitions, expected {expected}")]
    PartitionMismatch {
        /// Topic.
        topic: String,
        /// Partitions found.
        actual: i32,
        /// Partitions wanted.
        expected: i32,
    },
    /// A topic does not exist (or has a partition without a leader yet).
    #[error("topic {0} does not exist or has a partition without a leader")]
    Missing(String),
    /// The broker refused an operation on one topic.
    #[error("{op} {topic}: {code}")]
    Topic {
        /// CreateTopics or DeleteTopics.
        op: &'static str,
        /// Topic.
        topic: String,
        /// Broker error code.
        code: RDKafkaErrorCode,
    },
    /// The broker refused topic configuration, did not apply it, or could not describe it
    /// (the message names the topics, keys and the broker's values or error).
    #[error("topic configuration: {0}")]
    Config(String),
    /// The blocking task panicked or was cancelled.
    #[error("blocking kafka task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl AdminError {
    /// Whether the broker refused the client's SASL authentication.
    pub fn is_authentication(&self) -> bool {
        matches!(self, AdminError::Authentication { .. })
    }
}

pub(crate) fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> AdminError {
    let what = what.into();
    move |source| AdminError::Kafka { what, source }
}
