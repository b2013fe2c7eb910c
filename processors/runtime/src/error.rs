//! The consume loop's fatal errors.

use crate::driver::SubscribeError;
use rdkafka::error::KafkaError;

/// A failure the loop cannot recover from by itself; the process exits non-zero without
/// committing, and a restart resumes from the last commit.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Producing failed after every retry.
    #[error("producing to {topic} failed after {attempts} attempts: {source}")]
    Produce {
        /// Destination topic.
        topic: String,
        /// Attempts made.
        attempts: usize,
        /// Last error.
        source: KafkaError,
    },
    /// Committing offsets failed for a reason other than a rebalance.
    #[error("committing offsets failed: {0}")]
    Commit(KafkaError),
    /// Moving the fetch position of newly assigned partitions to their rebuilt offsets failed
    /// after every retry.
    #[error("seeking assigned partitions to their committed offsets failed: {0}")]
    Seek(KafkaError),
    /// Subscribing failed.
    #[error("subscribing to {topics:?} failed: {source}")]
    Subscribe {
        /// Topics.
        topics: Vec<String>,
        /// Cause.
        source: KafkaError,
    },
    /// A Kafka transaction failed (exactly-once mode); it was aborted.
    #[error("transaction failed and was aborted: {0}")]
    Transaction(KafkaError),
    /// Rebuilding state failed.
    #[error(transparent)]
    Rebuild(#[from] crate::rebuild::RebuildError),
    /// The broker refused an output for good in its delivery report (a timestamp or size its
    /// topic does not accept, an invalid record) although the topic limits read at start-up
    /// did not predict it (they changed since, or the broker's clock differs). Nothing after
    /// it is committed; [`crate::runner::run`] re-reads the limits and resumes from the last
    /// commit in process, so the record is dead-lettered with its reason this time.
    #[error("the broker refused a record for {topic} for good: {source}")]
    Refused {
        /// The output's topic.
        topic: String,
        /// The broker's error.
        source: KafkaError,
    },
    /// A processor-specific fatal error.
    #[error("{0}")]
    Processor(String),
}

impl From<SubscribeError> for PipelineError {
    fn from(e: SubscribeError) -> Self {
        PipelineError::Subscribe {
            topics: e.topics,
            source: e.source,
        }
    }
}
