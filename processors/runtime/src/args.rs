//! The client flags every data-plane binary shares ([`ClientArgs`]): the broker connection and
//! the topic names ([`sensorflow_kafka::config`]), and the record framing.

use clap::Args;
use sensorflow_api::env;
use sensorflow_core::wire::Framing;
use sensorflow_kafka::config::{KafkaArgs, TopicArgs};

/// The flags of a client of a pipeline's topics (window-processor, join-predict, gcs-sink,
/// replay): `KAFKA_*` for the broker, `SF_TOPIC_*` for the nine topic names, `SF_WIRE_FORMAT`
/// and `SF_SCHEMA_ID` for the framing.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub topics: TopicArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub framing: FramingArgs,
}

/// Record framing flags.
#[derive(Debug, Clone, Args)]
pub struct FramingArgs {
    /// Value framing: `plain` protobuf, or `confluent` (Schema Registry wire format).
    #[arg(long, env = env::WIRE_FORMAT, default_value = "plain")]
    pub wire_format: sensorflow_api::WireFormat,
    /// Schema id written into produced records when --wire-format=confluent.
    #[arg(long, env = env::SCHEMA_ID, default_value_t = 1)]
    pub schema_id: u32,
}

impl FramingArgs {
    /// The framing.
    pub fn framing(&self) -> Framing {
        match self.wire_format {
            sensorflow_api::WireFormat::Confluent => Framing::Confluent {
                schema_id: self.schema_id,
            },
            sensorflow_api::WireFormat::Plain => Framing::Plain,
        }
    }
}
