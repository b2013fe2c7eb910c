//! Record value framing: plain protobuf, or the Confluent Schema Registry wire format.
//!
//! Confluent framing (as documented for Schema Registry's protobuf serializer):
//! `0x00` magic byte, 4-byte big-endian schema id, the message-index path (for the first
//! message of the schema the single byte `0x00`, otherwise a zig-zag varint count followed by
//! zig-zag varint indexes), then the protobuf bytes. SensorFlow's schema has one message per
//! topic kind registered under its own subject, so the index path is always `[0]`; readers
//! accept any path of length ≤ 1 pointing at index 0.

use serde::{Deserialize, Serialize};

/// How record values are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "format")]
pub enum Framing {
    /// The protobuf bytes alone (default).
    #[default]
    Plain,
    /// Confluent Schema Registry framing with this schema id.
    Confluent {
        /// The registered schema id written into produced records.
        schema_id: u32,
    },
}

/// A value that does not carry the framing it should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Shorter than the 5-byte Confluent header.
    #[error("record is {0} bytes, shorter than the 5-byte schema-registry header")]
    TooShort(usize),
    /// First byte is not the magic 0.
    #[error("schema-registry magic byte must be 0, got {0:#04x}")]
    BadMagic(u8),
    /// The message-index path is malformed or not `[0]`.
    #[error("unsupported schema-registry message index path: {0}")]
    MessageIndex(&'static str),
}

/// Reads a zig-zag varint (as Confluent writes message indexes).
fn read_zigzag(buf: &[u8]) -> Option<(i64, usize)> {
    let mut x: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        x |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((((x >> 1) as i64) ^ -((x & 1) as i64), i + 1));
        }
    }
    None
}

impl Framing {
    /// Frames protobuf bytes, appending to `out` (cleared first).
    pub fn encode_into(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        if let Framing::Confluent { schema_id } = *self {
            out.push(0);
            out.extend_from_slice(&schema_id.to_be_bytes());
            out.push(0); // message index path [0]
        }
        out.extend_from_slice(payload);
    }

    /// Returns the protobuf bytes inside a framed value, and the schema id if any.
    ///
    /// # Errors
    /// [`FramingError`] when a Confluent-framed value lacks a valid header.
    pub fn decode<'a>(&self, value: &'a [u8]) -> Result<(&'a [u8], Option<u32>), FramingError> {
        match self {
            Framing::Plain => Ok((value, None)),
            Framing::Confluent { .. } => {
                if value.len() < 5 {
                    return Err(FramingError::TooShort(value.len()));
                }
                if value[0] != 0 {
                    return Err(FramingError::BadMagic(value[0]));
                }
                let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
                let rest = &value[5..];
                let (count, used) =
                    read_zigzag(rest).ok_or(FramingError::MessageIndex("truncated varint"))?;
                let mut used_total = used;
                match count {
                    0 => {}
                    1 => {
                        let (idx, u) = read_zigzag(&rest[used..])
                            .ok_or(FramingError::MessageIndex("truncated varint"))?;
                        if idx != 0 {
                            return Err(FramingError::MessageIndex("index is not 0"));
                        }
                        used_total += u;
                    }
                    _ => return Err(FramingError::MessageIndex("nested message path")),
                }
                Ok((&rest[used_total..], Some(id)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn confluent_header_layout() {
        let mut out = Vec::new();
        Framing::Confluent {
            schema_id: 0x0102_0304,
        }
        .encode_into(b"pb", &mut out);
        assert_eq!(out, [0, 1, 2, 3, 4, 0, b'p', b'b']);
    }

    #[test]
    fn explicit_index_path_is_accepted() {
        // count 1 (zig-zag 2), index 0
        let v = [0u8, 0, 0, 0, 9, 2, 0, 42];
        assert_eq!(
            Framing::Confluent { schema_id: 9 }.decode(&v).unwrap(),
            (&[42u8][..], Some(9))
        );
        let nested = [0u8, 0, 0, 0, 9, 4, 0, 2, 42];
        assert!(Framing::Confluent { schema_id: 9 }.decode(&nested).is_err());
    }

    #[test]
    fn bad_headers_are_errors() {
        let f = Framing::Confluent { schema_id: 1 };
        assert_eq!(f.decode(&[0, 0]), Err(FramingError::TooShort(2)));
        assert_eq!(
            f.decode(&[7, 0, 0, 0, 1, 0]),
            Err(FramingError::BadMagic(7))
        );
    }

    proptest! {
        #[test]
        fn round_trip(id in any::<u32>(), payload in prop::collection::vec(any::<u8>(), 0..64), confluent in any::<bool>()) {
            let f = if confluent { Framing::Confluent { schema_id: id } } else { Framing::Plain };
            let mut out = Vec::new();
            f.encode_into(&payload, &mut out);
            let (p, got) = f.decode(&out).unwrap();
            prop_assert_eq!(p, &payload[..]);
            prop_assert_eq!(got, confluent.then_some(id));
        }
    }
}
