//! Arrow batches to Parquet bytes in memory (no I/O: the bytes are uploaded whole, so no reader
//! ever sees a partial file).

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::str::FromStr;

/// Parquet compression codec of the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// ZSTD at a level in 1..=22 (default level 1: fastest, still ~4× on sensor rows).
    Zstd(i32),
    /// No compression.
    Uncompressed,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::Zstd(1)
    }
}

impl FromStr for Codec {
    type Err = String;
    /// `zstd`, `zstd:N` (N in 1..=22) or `uncompressed`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "zstd" => Ok(Codec::default()),
            None if s == "uncompressed" || s == "none" => Ok(Codec::Uncompressed),
            Some(("zstd", n)) => match n.parse::<i32>() {
                Ok(l) if (1..=22).contains(&l) => Ok(Codec::Zstd(l)),
                _ => Err(format!("zstd level must be 1..=22, got {n:?}")),
            },
            _ => Err(format!("expected zstd, zstd:N or uncompressed, got {s:?}")),
        }
    }
}

/// How files are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeConfig {
    /// Compression codec.
    pub codec: Codec,
    /// Rows per row group (≥ 1).
    pub row_group_rows: usize,
}

/// Encoding failed (a bug or an invalid level, not a data problem: rows are typed already).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The codec level is out of range.
    #[error("invalid compression: {0}")]
    Codec(String),
    /// The Parquet writer failed.
    #[error("parquet encoding of {rows} rows failed: {source}")]
    Parquet {
        /// Rows in the batch.
        rows: usize,
        /// Cause.
        source: parquet::errors::ParquetError,
    },
}

impl EncodeConfig {
    fn properties(&self, metadata: Vec<KeyValue>) -> Result<WriterProperties, EncodeError> {
        let compression = match self.codec {
            Codec::Zstd(l) => Compression::ZSTD(
                ZstdLevel::try_new(l).map_err(|e| EncodeError::Codec(e.to_string()))?,
            ),
            Codec::Uncompressed => Compression::UNCOMPRESSED,
        };
        Ok(WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)))
            .set_created_by(format!("sensorflow-sink {}", env!("CARGO_PKG_VERSION")))
            .set_key_value_metadata(Some(metadata))
            .build())
    }
}

/// Encodes `batch` as one Parquet file, with `metadata` as file key/value metadata.
///
/// # Errors
/// [`EncodeError`] when the codec level is invalid or the writer fails.
pub fn encode(
    batch: &RecordBatch,
    cfg: &EncodeConfig,
    metadata: &[(&str, String)],
) -> Result<Vec<u8>, EncodeError> {
    let rows = batch.num_rows();
    let kv = metadata
        .iter()
        .map(|(k, v)| KeyValue::new((*k).to_owned(), v.clone()))
        .collect();
    let props = cfg.properties(kv)?;
    let err = |source| EncodeError::Parquet { rows, source };
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 4 + 4096);
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).map_err(err)?;
    w.write(batch).map_err(err)?;
    w.close().map_err(err)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{Kind, Record, Rows};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use prost::Message as _;
    use sensorflow_core::proto::SensorReading;
    use sensorflow_core::wire::Framing;

    #[test]
    fn codec_parsing() {
        assert_eq!("zstd".parse(), Ok(Codec::Zstd(1)));
        assert_eq!("zstd:9".parse(), Ok(Codec::Zstd(9)));
        assert_eq!("uncompressed".parse(), Ok(Codec::Uncompressed));
        assert!("zstd:0".parse::<Codec>().is_err());
        assert!("gzip".parse::<Codec>().is_err());
    }

    #[test]
    fn round_trip_with_row_groups_and_metadata() {
        let mut rows = Rows::new(Kind::Reading, Framing::Plain);
        for i in 0..1000i64 {
            let v = SensorReading {
                event_time_ms: i * 60_000,
                value: i as f64 / 7.0,
                ..Default::default()
            }
            .encode_to_vec();
            rows.append(&Record {
                key: Some(b"day-1"),
                value: Some(&v),
                partition: 0,
                offset: i,
                timestamp_ms: Some(i * 60_000),
                headers: None,
            })
            .unwrap();
        }
        let batch = rows.finish().unwrap();
        let cfg = EncodeConfig {
            codec: Codec::default(),
            row_group_rows: 300,
        };
        let bytes = encode(&batch, &cfg, &[("sensorflow.topic", "SZ".into())]).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
        let md = reader.metadata().clone();
        assert_eq!(md.num_row_groups(), 4);
        let kv = md.file_metadata().key_value_metadata().unwrap();
        assert!(
            kv.iter()
                .any(|k| k.key == "sensorflow.topic" && k.value.as_deref() == Some("SZ"))
        );
        let back: Vec<_> = reader.build().unwrap().map(Result::unwrap).collect();
        let back = arrow_select_concat(&back);
        assert_eq!(back, batch);
    }

    fn arrow_select_concat(batches: &[RecordBatch]) -> RecordBatch {
        let schema = batches[0].schema();
        let cols = (0..schema.fields().len())
            .map(|i| {
                let arrays: Vec<&dyn arrow_array::Array> =
                    batches.iter().map(|b| b.column(i).as_ref()).collect();
                arrow_select::concat::concat(&arrays).unwrap()
            })
            .collect();
        RecordBatch::try_new(schema, cols).unwrap()
    }
}
