//! How record values are framed on every SensorFlow topic (`SF_WIRE_FORMAT`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Value framing: plain protobuf, or the Confluent Schema Registry wire format (magic byte,
/// schema id, message index, then the protobuf bytes; the schema id is `SF_SCHEMA_ID`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// The protobuf bytes alone (default).
    #[default]
    Plain,
    /// Confluent Schema Registry framing.
    Confluent,
}

#[cfg(test)]
mod tests {
    use super::WireFormat;

    #[test]
    fn wire_formats_are_spelled_as_their_serde_names() {
        for w in WireFormat::ALL {
            assert_eq!(
                serde_json::to_value(w).expect("json"),
                w.as_str(),
                "serde and as_str agree"
            );
            assert_eq!(w.as_str().parse::<WireFormat>(), Ok(*w));
        }
        assert!("Confluent".parse::<WireFormat>().is_err());
    }
}
