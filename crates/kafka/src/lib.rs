//! # sensorflow-kafka
//!
//! The Kafka edge that the operator and the data plane share, with no consume loop in it:
//!
//! ```text
//!   acls        pure: the ACLs a pipeline's principal needs (one list for docs, CLI, tests)
//!   config      flags / env (KafkaArgs, TopicArgs, profiles) ──► rdkafka ClientConfig
//!   connection  the operator's Connection (typed settings + Secrets) ──► ClientConfig,
//!               and a client context that remembers why the broker refused
//!   plan        pure: topics to create / raise / refuse, configs to alter, co-partitioning
//!   limits      pure: what a topic accepts (timestamp bounds, batch size), checked per record
//!   admin       metadata, CreateTopics, AlterConfigs, DeleteTopics, lag, group progress
//!   error       AdminError
//! ```
//!
//! Only standard Kafka client settings and admin requests are used, so everything works
//! against Apache Kafka or any other Kafka-protocol broker.

pub mod acls;
pub mod admin;
pub mod config;
pub mod connection;
pub mod error;
pub mod limits;
pub mod plan;

pub use admin::*;
pub use connection::{Connection, ConnectionContext};
pub use error::AdminError;
pub use plan::*;
