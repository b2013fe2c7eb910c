//! Names, labels and the parts of a pod the operator owns: what every object it builds and the
//! validation of user overlays agree on.

/// Label with the pipeline name on every owned object.
pub const PIPELINE_LABEL: &str = "sensorflow.io/pipeline";
/// Label naming the component (`window`, `join`, `sink`, `common`, `metrics`, `processor`).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/managed-by` value of owned objects.
pub const MANAGED_BY: &str = "sensorflow-operator";
/// Pod-template annotation that rolls pods on configuration changes.
pub const CONFIG_HASH_ANNOTATION: &str = "sensorflow.io/config-hash";
/// Port of every processor's `/metrics`, `/health` and `/ready`.
pub const METRICS_PORT: i32 = 9100;
/// Where the Kafka CA bundle is mounted.
pub const KAFKA_CA_DIR: &str = "/etc/sensorflow/kafka-ca";
/// Where the Kafka client certificate and key (mutual TLS) are mounted.
pub const KAFKA_CLIENT_CERT_DIR: &str = "/etc/sensorflow/kafka-client-cert";
/// Where the GCS credentials are mounted.
pub const GCS_CREDENTIALS_DIR: &str = "/etc/sensorflow/gcs";
/// Volumes the operator adds to a pod (a pod template overlay may not reuse the names).
pub const OWNED_VOLUMES: [&str; 4] = ["tmp", "kafka-ca", "kafka-client-cert", "gcs-credentials"];
/// Mount paths the operator owns: `/tmp` and everything under `/etc/sensorflow`.
pub fn owned_mount_path(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    p == "/tmp" || p == "/etc/sensorflow" || p.starts_with("/etc/sensorflow/")
}
/// Label and annotation key prefixes the operator owns on pods (a pod template overlay may not
/// set them).
pub const OWNED_KEY_PREFIXES: [&str; 3] =
    ["app.kubernetes.io/", "sensorflow.io/", "prometheus.io/"];
/// Whether a pod label or annotation key is the operator's ([`OWNED_KEY_PREFIXES`]).
pub fn owned_key(key: &str) -> bool {
    OWNED_KEY_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// A processor stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// window-processor.
    Window,
    /// join-predict.
    Join,
    /// gcs-sink.
    Sink,
}

impl Stage {
    /// Short name used in object names and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Window => "window",
            Stage::Join => "join",
            Stage::Sink => "sink",
        }
    }
    /// Binary in `/usr/local/bin` of the image.
    pub fn binary(self) -> &'static str {
        match self {
            Stage::Window => sensorflow_api::processors::WINDOW_PROCESSOR,
            Stage::Join => sensorflow_api::processors::JOIN_PREDICT,
            Stage::Sink => sensorflow_api::processors::GCS_SINK,
        }
    }
}

/// Name of a stage's Deployment: `<pipeline>-<stage>`.
pub fn deployment_name(pipeline: &str, stage: Stage) -> String {
    format!("{pipeline}-{}", stage.as_str())
}
