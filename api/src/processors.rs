//! The names of SensorFlow's processors: each is its binary's name, its Kafka `client.id`,
//! the value of the `sensorflow.processor` dead-letter header it writes, and the container
//! command the operator runs.

/// The window-processor (SZ → FA, FI, FD).
pub const WINDOW_PROCESSOR: &str = "window-processor";
/// The join (SX, SY, FA, FI, FD → predictions).
pub const JOIN_PREDICT: &str = "join-predict";
/// The sink (topics → Parquet on GCS or a local directory).
pub const GCS_SINK: &str = "gcs-sink";
