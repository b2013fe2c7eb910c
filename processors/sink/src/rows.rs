//! Kafka records to typed Arrow columns, one schema per message kind (pure: no I/O).
//!
//! Every file starts with the Kafka coordinates, then the decoded message fields:
//!
//! | kind | topics | columns after `kafka_partition int32, kafka_offset int64, kafka_timestamp ts` |
//! |---|---|---|
//! | [`Kind::Reading`] | SX SY SZ | `client_id, event_time ts, value double, sensor string, ingest_time ts?` |
//! | [`Kind::Feature`] | FA FI FD | `client_id, kind string, event_time ts, source_partition int32, source_offset int64, bin int32, value double, window_count int64, ingest_time ts?, window_start_ms int64?, window_end_ms int64?, source_index int32` |
//! | [`Kind::Prediction`] | predictions | `client_id, event_time ts, f_sx f_sy f_fa_bin f_fi_bin f_fd_bin int64, probability double, alert bool, model_name, model_version, trigger string, source_topic string, source_partition int32, source_offset int64, features_source_partition int32, features_source_offset int64, ingest_time ts?, threshold double, predicted_at ts?, features_source_index int32` |
//! | [`Kind::Raw`] | dead-letter, late, others | `key binary?, value binary?, reason, error, source_topic string?, source_partition int32?, source_offset int64?, source_timestamp ts?, processor string?` |
//!
//! `ts` is Parquet `TIMESTAMP(MILLIS, isAdjustedToUTC=true)`; `?` marks nullable columns (a
//! `0` "unknown" time in the message becomes null). The prediction's 5-integer feature vector
//! `[SX, SY, FA bin, FI bin, FD bin]` is stored as five columns so SQL can filter on them.

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use prost::Message as _;
use sensorflow_core::input::{self, Reject};
use sensorflow_core::proto::{Feature, FeatureKind, Prediction, SensorReading};
use sensorflow_core::wire::Framing;
use std::sync::Arc;

/// How a topic's values are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `SensorReading` (SX, SY, SZ).
    Reading,
    /// `Feature` (FA, FI, FD).
    Feature,
    /// `Prediction`.
    Prediction,
    /// Undecoded bytes plus the dead-letter headers (dead-letter, late, any other topic).
    Raw,
}

/// The dead-letter headers of a record (see `sensorflow_runtime::dlq`), for [`Kind::Raw`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawHeaders {
    /// `sensorflow.reason`.
    pub reason: Option<String>,
    /// `sensorflow.error`.
    pub error: Option<String>,
    /// `sensorflow.source.topic`.
    pub source_topic: Option<String>,
    /// `sensorflow.source.partition`.
    pub source_partition: Option<i32>,
    /// `sensorflow.source.offset`.
    pub source_offset: Option<i64>,
    /// `sensorflow.source.timestamp`, ms.
    pub source_timestamp_ms: Option<i64>,
    /// `sensorflow.processor`.
    pub processor: Option<String>,
}

/// One Kafka record, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Key (the client id).
    pub key: Option<&'a [u8]>,
    /// Framed value.
    pub value: Option<&'a [u8]>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, Unix ms.
    pub timestamp_ms: Option<i64>,
    /// Dead-letter headers (read only for [`Kind::Raw`]).
    pub headers: Option<&'a RawHeaders>,
}

fn ts(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        nullable,
    )
}

fn s(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

/// The Arrow schema of `kind`'s files.
pub fn schema(kind: Kind) -> SchemaRef {
    let mut f = vec![
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        ts("kafka_timestamp", true),
    ];
    match kind {
        Kind::Reading => f.extend([
            s("client_id"),
            ts("event_time", false),
            Field::new("value", DataType::Float64, false),
            s("sensor"),
            ts("ingest_time", true),
        ]),
        Kind::Feature => f.extend([
            s("client_id"),
            s("kind"),
            ts("event_time", false),
            Field::new("source_partition", DataType::Int32, false),
            Field::new("source_offset", DataType::Int64, false),
            Field::new("bin", DataType::Int32, false),
            Field::new("value", DataType::Float64, false),
            Field::new("window_count", DataType::Int64, false),
            ts("ingest_time", true),
            // Unix ms, [start, end); plain integers, since the global window spans the whole
            // i64 range (beyond a timestamp's); null in features written before windows had
            // them (both 0 on the wire).
            Field::new("window_start_ms", DataType::Int64, true),
            Field::new("window_end_ms", DataType::Int64, true),
            Field::new("source_index", DataType::Int32, false),
        ]),
        Kind::Prediction => {
            f.extend([s("client_id"), ts("event_time", false)]);
            for n in FEATURE_COLUMNS {
                f.push(Field::new(n, DataType::Int64, false));
            }
            f.extend([
                Field::new("probability", DataType::Float64, false),
                Field::new("alert", DataType::Boolean, false),
                s("model_name"),
                s("model_version"),
                s("trigger"),
                s("source_topic"),
                Field::new("source_partition", DataType::Int32, false),
                Field::new("source_offset", DataType::Int64, false),
                Field::new("features_source_partition", DataType::Int32, false),
                Field::new("features_source_offset", DataType::Int64, false),
                ts("ingest_time", true),
                Field::new("threshold", DataType::Float64, false),
                ts("predicted_at", true),
                Field::new("features_source_index", DataType::Int32, false),
            ]);
        }
        Kind::Raw => f.extend([
            Field::new("key", DataType::Binary, true),
            Field::new("value", DataType::Binary, true),
            Field::new("reason", DataType::Utf8, true),
            Field::new("error", DataType::Utf8, true),
            Field::new("source_topic", DataType::Utf8, true),
            Field::new("source_partition", DataType::Int32, true),
            Field::new("source_offset", DataType::Int64, true),
            ts("source_timestamp", true),
            Field::new("processor", DataType::Utf8, true),
        ]),
    }
    Arc::new(Schema::new(f))
}

/// Column names of the prediction's feature vector, in vector order.
pub const FEATURE_COLUMNS: [&str; 5] = ["f_sx", "f_sy", "f_fa_bin", "f_fi_bin", "f_fd_bin"];

fn tsb() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone("UTC")
}

fn known(ms: i64) -> Option<i64> {
    (ms != 0).then_some(ms)
}

#[derive(Default)]
struct ReadingCols {
    client: StringBuilder,
    event: Option<TimestampMillisecondBuilder>,
    value: Float64Builder,
    sensor: StringBuilder,
    ingest: Option<TimestampMillisecondBuilder>,
}

#[derive(Default)]
struct FeatureCols {
    client: StringBuilder,
    kind: StringBuilder,
    event: Option<TimestampMillisecondBuilder>,
    src_part: Int32Builder,
    src_off: Int64Builder,
    bin: Int32Builder,
    value: Float64Builder,
    count: Int64Builder,
    ingest: Option<TimestampMillisecondBuilder>,
    win_start: Int64Builder,
    win_end: Int64Builder,
    index: Int32Builder,
}

#[derive(Default)]
struct PredictionCols {
    client: StringBuilder,
    event: Option<TimestampMillisecondBuilder>,
    features: [Int64Builder; 5],
    probability: Float64Builder,
    alert: BooleanBuilder,
    model_name: StringBuilder,
    model_version: StringBuilder,
    trigger: StringBuilder,
    src_topic: StringBuilder,
    src_part: Int32Builder,
    src_off: Int64Builder,
    fsrc_part: Int32Builder,
    fsrc_off: Int64Builder,
    fsrc_index: Int32Builder,
    ingest: Option<TimestampMillisecondBuilder>,
    threshold: Float64Builder,
    predicted: Option<TimestampMillisecondBuilder>,
}

#[derive(Default)]
struct RawCols {
    key: BinaryBuilder,
    value: BinaryBuilder,
    reason: StringBuilder,
    error: StringBuilder,
    src_topic: StringBuilder,
    src_part: Int32Builder,
    src_off: Int64Builder,
    src_ts: Option<TimestampMillisecondBuilder>,
    processor: StringBuilder,
}

enum Cols {
    Reading(Box<ReadingCols>),
    Feature(Box<FeatureCols>),
    Prediction(Box<PredictionCols>),
    Raw(Box<RawCols>),
}

/// `Option<TimestampMillisecondBuilder>` defaults to `None`; this gets or makes the UTC one.
fn t(b: &mut Option<TimestampMillisecondBuilder>) -> &mut TimestampMillisecondBuilder {
    b.get_or_insert_with(tsb)
}

fn fin(b: &mut Option<TimestampMillisecondBuilder>) -> ArrayRef {
    Arc::new(t(b).finish())
}

/// A decoded message, ready to append.
enum Decoded<'a> {
    Reading(&'a str, SensorReading),
    Feature(&'a str, Feature),
    Prediction(&'a str, Prediction),
    Raw,
}

/// Rows of one file being built.
pub struct Rows {
    kind: Kind,
    framing: Framing,
    schema: SchemaRef,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    cols: Cols,
    len: usize,
}

impl Rows {
    /// Empty rows of `kind`, values framed with `framing`.
    pub fn new(kind: Kind, framing: Framing) -> Self {
        let cols = match kind {
            Kind::Reading => Cols::Reading(Box::default()),
            Kind::Feature => Cols::Feature(Box::default()),
            Kind::Prediction => Cols::Prediction(Box::default()),
            Kind::Raw => Cols::Raw(Box::default()),
        };
        Self {
            kind,
            framing,
            schema: schema(kind),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: tsb(),
            cols,
            len: 0,
        }
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Rows appended since the last [`Rows::finish`].
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn decode<'a>(&self, r: &Record<'a>) -> Result<Decoded<'a>, Reject> {
        if self.kind == Kind::Raw {
            return Ok(Decoded::Raw);
        }
        let client = input::client_id(r.key)?;
        let bytes = r.value.ok_or(Reject::MissingValue)?;
        let (pb, _) = self.framing.decode(bytes)?;
        let err = |e: prost::DecodeError| Reject::Decode(e.to_string());
        Ok(match self.kind {
            Kind::Reading => Decoded::Reading(client, SensorReading::decode(pb).map_err(err)?),
            Kind::Feature => Decoded::Feature(client, Feature::decode(pb).map_err(err)?),
            Kind::Prediction => {
                let p = Prediction::decode(pb).map_err(err)?;
                if p.features.len() != 5 {
                    return Err(Reject::Decode(format!(
                        "prediction has {} features, expected 5",
                        p.features.len()
                    )));
                }
                Decoded::Prediction(client, p)
            }
            Kind::Raw => Decoded::Raw,
        })
    }

    /// Decodes `r` and appends it as one row.
    ///
    /// # Errors
    /// A [`Reject`] (nothing appended) when the key is missing or not UTF-8, the value is
    /// missing, the framing is wrong, the protobuf does not decode, or a prediction's vector
    /// does not hold 5 integers. [`Kind::Raw`] never fails.
    pub fn append(&mut self, r: &Record<'_>) -> Result<(), Reject> {
        let decoded = self.decode(r)?;
        self.partition.append_value(r.partition);
        self.offset.append_value(r.offset);
        self.timestamp.append_option(r.timestamp_ms);
        match (&mut self.cols, decoded) {
            (Cols::Reading(c), Decoded::Reading(client, m)) => {
                c.client.append_value(client);
                t(&mut c.event).append_value(m.event_time_ms);
                c.value.append_value(m.value);
                c.sensor.append_value(m.sensor().as_str_name());
                t(&mut c.ingest).append_option(known(m.ingest_time_ms));
            }
            (Cols::Feature(c), Decoded::Feature(client, m)) => {
                c.client.append_value(client);
                c.kind.append_value(
                    FeatureKind::try_from(m.kind).map_or("UNKNOWN", |k| k.as_str_name()),
                );
                t(&mut c.event).append_value(m.event_time_ms);
                c.src_part.append_value(m.source_partition);
                c.src_off.append_value(m.source_offset);
                c.bin.append_value(m.bin as i32);
                c.value.append_value(m.value);
                c.count.append_value(i64::from(m.window_count));
                t(&mut c.ingest).append_option(known(m.ingest_time_ms));
                let window = (m.window_start_ms, m.window_end_ms) != (0, 0);
                c.win_start
                    .append_option(window.then_some(m.window_start_ms));
                c.win_end.append_option(window.then_some(m.window_end_ms));
                c.index
                    .append_value(i32::try_from(m.source_index).unwrap_or(i32::MAX));
            }
            (Cols::Prediction(c), Decoded::Prediction(client, m)) => {
                c.client.append_value(client);
                t(&mut c.event).append_value(m.event_time_ms);
                for (b, v) in c.features.iter_mut().zip(&m.features) {
                    b.append_value(*v);
                }
                c.probability.append_value(m.probability);
                c.alert.append_value(m.alert);
                c.model_name.append_value(&m.model_name);
                c.model_version.append_value(&m.model_version);
                c.trigger.append_value(m.trigger().as_str_name());
                c.src_topic.append_value(&m.source_topic);
                c.src_part.append_value(m.source_partition);
                c.src_off.append_value(m.source_offset);
                c.fsrc_part.append_value(m.features_source_partition);
                c.fsrc_off.append_value(m.features_source_offset);
                c.fsrc_index
                    .append_value(i32::try_from(m.features_source_index).unwrap_or(i32::MAX));
                t(&mut c.ingest).append_option(known(m.ingest_time_ms));
                c.threshold.append_value(m.threshold);
                t(&mut c.predicted).append_option(known(m.predicted_at_ms));
            }
            (Cols::Raw(c), _) => {
                let h = r.headers.cloned().unwrap_or_default();
                c.key.append_option(r.key);
                c.value.append_option(r.value);
                c.reason.append_option(h.reason);
                c.error.append_option(h.error);
                c.src_topic.append_option(h.source_topic);
                c.src_part.append_option(h.source_partition);
                c.src_off.append_option(h.source_offset);
                t(&mut c.src_ts).append_option(h.source_timestamp_ms);
                c.processor.append_option(h.processor);
            }
            // `decode` returns the variant of `self.kind`; the columns were made from it too.
            _ => unreachable!("decoded kind matches the column kind"),
        }
        self.len += 1;
        Ok(())
    }

    /// The buffered rows as a batch; the builders are left empty for the next file.
    ///
    /// # Errors
    /// An [`ArrowError`] if the columns disagree with the schema (a bug).
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
        ];
        match &mut self.cols {
            Cols::Reading(c) => cols.extend::<[ArrayRef; 5]>([
                Arc::new(c.client.finish()),
                fin(&mut c.event),
                Arc::new(c.value.finish()),
                Arc::new(c.sensor.finish()),
                fin(&mut c.ingest),
            ]),
            Cols::Feature(c) => cols.extend::<[ArrayRef; 12]>([
                Arc::new(c.client.finish()),
                Arc::new(c.kind.finish()),
                fin(&mut c.event),
                Arc::new(c.src_part.finish()),
                Arc::new(c.src_off.finish()),
                Arc::new(c.bin.finish()),
                Arc::new(c.value.finish()),
                Arc::new(c.count.finish()),
                fin(&mut c.ingest),
                Arc::new(c.win_start.finish()),
                Arc::new(c.win_end.finish()),
                Arc::new(c.index.finish()),
            ]),
            Cols::Prediction(c) => {
                cols.push(Arc::new(c.client.finish()));
                cols.push(fin(&mut c.event));
                for b in &mut c.features {
                    cols.push(Arc::new(b.finish()));
                }
                cols.extend::<[ArrayRef; 14]>([
                    Arc::new(c.probability.finish()),
                    Arc::new(c.alert.finish()),
                    Arc::new(c.model_name.finish()),
                    Arc::new(c.model_version.finish()),
                    Arc::new(c.trigger.finish()),
                    Arc::new(c.src_topic.finish()),
                    Arc::new(c.src_part.finish()),
                    Arc::new(c.src_off.finish()),
                    Arc::new(c.fsrc_part.finish()),
                    Arc::new(c.fsrc_off.finish()),
                    fin(&mut c.ingest),
                    Arc::new(c.threshold.finish()),
                    fin(&mut c.predicted),
                    Arc::new(c.fsrc_index.finish()),
                ]);
            }
            Cols::Raw(c) => cols.extend::<[ArrayRef; 9]>([
                Arc::new(c.key.finish()),
                Arc::new(c.value.finish()),
                Arc::new(c.reason.finish()),
                Arc::new(c.error.finish()),
                Arc::new(c.src_topic.finish()),
                Arc::new(c.src_part.finish()),
                Arc::new(c.src_off.finish()),
                fin(&mut c.src_ts),
                Arc::new(c.processor.finish()),
            ]),
        }
        self.len = 0;
        RecordBatch::try_new(self.schema.clone(), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
    use proptest::prelude::*;
    use sensorflow_core::proto::{Sensor, TriggerKind};

    fn rec<'a>(key: &'a [u8], value: &'a [u8], offset: i64) -> Record<'a> {
        Record {
            key: Some(key),
            value: Some(value),
            partition: 3,
            offset,
            timestamp_ms: Some(1_000 + offset),
            headers: None,
        }
    }

    #[test]
    fn every_kind_matches_its_schema() {
        for kind in [Kind::Reading, Kind::Feature, Kind::Prediction, Kind::Raw] {
            let mut rows = Rows::new(kind, Framing::Plain);
            let b = rows.finish().unwrap();
            assert_eq!(b.num_rows(), 0);
            assert_eq!(b.schema(), schema(kind));
        }
    }

    #[test]
    fn prediction_columns() {
        let p = Prediction {
            client_id: "c".into(),
            event_time_ms: 5,
            features: vec![1, 2, 3, 4, 5],
            probability: 0.25,
            alert: false,
            model_name: "logistic".into(),
            model_version: "1".into(),
            trigger: TriggerKind::TriggerSx as i32,
            source_topic: "SX".into(),
            threshold: 0.5,
            predicted_at_ms: 0,
            ..Default::default()
        };
        let mut rows = Rows::new(Kind::Prediction, Framing::Plain);
        rows.append(&rec(b"c", &p.encode_to_vec(), 9)).unwrap();
        let bad = Prediction {
            features: vec![1],
            ..p
        };
        let err = rows
            .append(&rec(b"c", &bad.encode_to_vec(), 10))
            .unwrap_err();
        assert_eq!(err.code(), "decode");
        let b = rows.finish().unwrap();
        assert_eq!(b.num_rows(), 1);
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        assert_eq!(col("f_fd_bin").as_primitive::<Int64Type>().value(0), 5);
        assert_eq!(col("trigger").as_string::<i32>().value(0), "TRIGGER_SX");
        assert!(col("predicted_at").is_null(0));
    }

    #[test]
    fn raw_keeps_bytes_and_headers() {
        let h = RawHeaders {
            reason: Some("decode".into()),
            source_offset: Some(7),
            ..Default::default()
        };
        let mut rows = Rows::new(Kind::Raw, Framing::Plain);
        rows.append(&Record {
            key: None,
            value: Some(b"\xff\x00"),
            partition: 0,
            offset: 1,
            timestamp_ms: None,
            headers: Some(&h),
        })
        .unwrap();
        let b = rows.finish().unwrap();
        assert_eq!(
            b.column_by_name("value")
                .unwrap()
                .as_binary::<i32>()
                .value(0),
            b"\xff\x00"
        );
        assert!(b.column_by_name("key").unwrap().is_null(0));
        assert_eq!(
            b.column_by_name("reason")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "decode"
        );
        assert!(b.column_by_name("kafka_timestamp").unwrap().is_null(0));
    }

    proptest! {
        /// Readings come back column by column exactly as encoded; garbage is rejected without
        /// leaving a partial row behind.
        #[test]
        fn readings_round_trip(
            input in prop::collection::vec((any::<i64>(), any::<f64>(), 0i64..3, any::<bool>(), "[a-z0-9]{1,8}"), 0..50),
            confluent in any::<bool>(),
        ) {
            let framing = if confluent { Framing::Confluent { schema_id: 4 } } else { Framing::Plain };
            let mut rows = Rows::new(Kind::Reading, framing);
            let mut expect = Vec::new();
            for (i, (t, v, ingest, garbage, client)) in input.iter().enumerate() {
                let m = SensorReading { event_time_ms: *t, value: *v, sensor: Sensor::Sz as i32, ingest_time_ms: *ingest };
                let mut framed = Vec::new();
                framing.encode_into(&m.encode_to_vec(), &mut framed);
                if *garbage {
                    // A truncated varint never decodes.
                    framed.truncate(framed.len().saturating_sub(m.encode_to_vec().len()));
                    framed.extend_from_slice(&[0x08, 0xff]);
                    prop_assert!(rows.append(&rec(client.as_bytes(), &framed, i as i64)).is_err());
                } else {
                    rows.append(&rec(client.as_bytes(), &framed, i as i64)).unwrap();
                    expect.push((i as i64, client.clone(), m));
                }
            }
            let b = rows.finish().unwrap();
            prop_assert_eq!(b.num_rows(), expect.len());
            let off = b.column_by_name("kafka_offset").unwrap().as_primitive::<Int64Type>().clone();
            let client = b.column_by_name("client_id").unwrap().as_string::<i32>().clone();
            let ev = b.column_by_name("event_time").unwrap().as_primitive::<TimestampMillisecondType>().clone();
            let val = b.column_by_name("value").unwrap().as_primitive::<Float64Type>().clone();
            let ingest = b.column_by_name("ingest_time").unwrap().clone();
            for (row, (o, c, m)) in expect.iter().enumerate() {
                prop_assert_eq!(off.value(row), *o);
                prop_assert_eq!(client.value(row), c.as_str());
                prop_assert_eq!(ev.value(row), m.event_time_ms);
                // Bit-exact, except that proto3 does not encode -0.0 (it equals the default).
                prop_assert!(val.value(row).to_bits() == m.value.to_bits() || val.value(row) == m.value);
                prop_assert_eq!(ingest.is_null(row), m.ingest_time_ms == 0);
            }
        }
    }
}
