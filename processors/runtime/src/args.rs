//! Flags every data-plane binary shares beside the broker connection and topic names
//! ([`sensorflow_kafka::config`]): the record framing.

use clap::Args;
use sensorflow_api::env;
use sensorflow_core::wire::Framing;

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
