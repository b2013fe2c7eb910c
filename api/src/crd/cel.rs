//! The CEL rules of the CRD (`x-kubernetes-validations`), each with the message the API server
//! returns when it refuses an object. Kept next to the operator's own checks in
//! the operator's `validate` step, which enforces the same conditions (tested against a real API server in
//! `tests/operator/cel/`).

use kube::core::{Message, Rule};

use crate::topics::TopicRole;

/// On `StageSpec`.
pub const MIN_LE_MAX: &str = "self.minReplicas <= self.maxReplicas";
/// Message of [`MIN_LE_MAX`].
pub const MIN_LE_MAX_MSG: &str = "minReplicas must not exceed maxReplicas";
/// On the spec: window-processor cannot use more consumers than partitions.
pub const MAX_REPLICAS_WINDOW: &str = "!has(self.processors) || !has(self.processors.window) || !has(self.topics) || self.processors.window.maxReplicas <= self.topics.partitions";
/// Message of [`MAX_REPLICAS_WINDOW`].
pub const MAX_REPLICAS_WINDOW_MSG: &str =
    "processors.window.maxReplicas must not exceed topics.partitions";
/// On the spec: join-predict likewise.
pub const MAX_REPLICAS_JOIN: &str = "!has(self.processors) || !has(self.processors.join) || !has(self.topics) || self.processors.join.maxReplicas <= self.topics.partitions";
/// Message of [`MAX_REPLICAS_JOIN`].
pub const MAX_REPLICAS_JOIN_MSG: &str =
    "processors.join.maxReplicas must not exceed topics.partitions";
/// On `window`: a hopping window has an advance.
pub const HOPPING_NEEDS_ADVANCE: &str = "self.kind != 'Hopping' || has(self.advanceMs)";
/// Message of [`HOPPING_NEEDS_ADVANCE`].
pub const HOPPING_NEEDS_ADVANCE_MSG: &str = "a Hopping window needs advanceMs";
/// On `window`: only a hopping window has an advance.
pub const ADVANCE_ONLY_HOPPING: &str = "!has(self.advanceMs) || self.kind == 'Hopping'";
/// Message of [`ADVANCE_ONLY_HOPPING`].
pub const ADVANCE_ONLY_HOPPING_MSG: &str = "advanceMs is for Hopping windows only";
/// On `window`: `0 < advance ≤ size`, and a reading in at most 1000 windows.
pub const ADVANCE_WITHIN_SIZE: &str = "!has(self.advanceMs) || (self.advanceMs <= self.sizeMs && (self.sizeMs + self.advanceMs - 1) / self.advanceMs <= 1000)";
/// Message of [`ADVANCE_WITHIN_SIZE`].
pub const ADVANCE_WITHIN_SIZE_MSG: &str = "advanceMs must be at most sizeMs and at least sizeMs / 1000 (a reading in at most 1000 windows)";
/// On `window`: final emission needs windows that close.
pub const FINAL_NEEDS_CLOSING: &str =
    "self.emit != 'Final' || self.kind == 'Tumbling' || self.kind == 'Hopping'";
/// Message of [`FINAL_NEEDS_CLOSING`].
pub const FINAL_NEEDS_CLOSING_MSG: &str =
    "emit: Final needs a Tumbling or Hopping window (Sliding and Global windows never close)";
/// On every `BinRange`.
pub const LO_BELOW_HI: &str = "self.lo < self.hi";
/// Message of [`LO_BELOW_HI`].
pub const LO_BELOW_HI_MSG: &str = "lo must be less than hi (bins are [lo, hi))";
/// On `model.threshold` (also a schema minimum/maximum).
pub const THRESHOLD_IN_UNIT: &str = "self >= 0.0 && self <= 1.0";
/// Message of [`THRESHOLD_IN_UNIT`].
pub const THRESHOLD_IN_UNIT_MSG: &str = "threshold must be in [0, 1]";
/// On `model.weights` (also schema minItems/maxItems).
pub const FIVE_WEIGHTS: &str = "size(self) == 5";
/// Message of [`FIVE_WEIGHTS`].
pub const FIVE_WEIGHTS_MSG: &str = "weights must have exactly 5 numbers";
/// Transition rule on `topics.partitions`.
pub const PARTITIONS_NEVER_DECREASE: &str = "self >= oldSelf";
/// Message of [`PARTITIONS_NEVER_DECREASE`].
pub const PARTITIONS_NEVER_DECREASE_MSG: &str =
    "partitions cannot be decreased (Kafka cannot remove partitions)";
/// On `kafka.security`.
pub const SASL_PLAINTEXT_OPT_IN: &str = "!has(self.protocol) || self.protocol != 'SASL_PLAINTEXT' || (has(self.allowPlaintextCredentials) && self.allowPlaintextCredentials)";
/// Message of [`SASL_PLAINTEXT_OPT_IN`].
pub const SASL_PLAINTEXT_OPT_IN_MSG: &str = "SASL_PLAINTEXT sends the credentials unencrypted: use SASL_SSL, or set allowPlaintextCredentials: true to accept that";
/// On `kafka.security`: a client certificate only over TLS.
pub const CLIENT_CERTIFICATE_NEEDS_TLS: &str = "!has(self.clientCertificateSecret) || (has(self.protocol) && self.protocol in ['SSL', 'SASL_SSL'])";
/// Message of [`CLIENT_CERTIFICATE_NEEDS_TLS`].
pub const CLIENT_CERTIFICATE_NEEDS_TLS_MSG: &str = "clientCertificateSecret needs protocol SSL or SASL_SSL (a client certificate is presented in the TLS handshake)";
/// On `sink`.
pub const NO_CREDENTIALS_OVER_HTTP: &str = "!has(self.endpoint) || !has(self.credentialsSecret) || !self.endpoint.lowerAscii().startsWith('http://')";
/// Message of [`NO_CREDENTIALS_OVER_HTTP`].
pub const NO_CREDENTIALS_OVER_HTTP_MSG: &str =
    "an http:// endpoint would send the credentials of credentialsSecret unencrypted: use https://";
/// On `kafka.properties`: no credential or TLS keys.
pub const KAFKA_PROPERTIES_NO_CREDENTIALS: &str =
    "self.all(k, !k.startsWith('sasl.') && !k.startsWith('ssl.') && k != 'security.protocol')";
/// Message of [`KAFKA_PROPERTIES_NO_CREDENTIALS`].
pub const KAFKA_PROPERTIES_NO_CREDENTIALS_MSG: &str = "kafka.properties must not set sasl.*, ssl.* or security.protocol: credentials and TLS come from kafka.security and Secrets";
/// On `kafka.properties`: not the keys the processors own.
pub const KAFKA_PROPERTIES_OWNED: &str = "self.all(k, !(k in ['bootstrap.servers', 'group.id', 'transactional.id', 'enable.auto.commit', 'enable.auto.offset.store']))";
/// Message of [`KAFKA_PROPERTIES_OWNED`].
pub const KAFKA_PROPERTIES_OWNED_MSG: &str = "kafka.properties must not set bootstrap.servers, group.id, transactional.id, enable.auto.commit or enable.auto.offset.store: the operator and the processors own them";
/// On `kafka.properties`: no librdkafka key that would redirect the connection, weaken its TLS
/// or authentication checks, or load code (librdkafka 2.12 `CONFIGURATION.md`):
/// `metadata.broker.list` (what `bootstrap.servers` is an alias of), `plugin.library.paths`
/// (loads shared libraries), `enable.ssl.*` (`enable.ssl.certificate.verification`),
/// `enable.sasl.*` (`enable.sasl.oauthbearer.unsecure.jwt`), `https.*` (the CA trusted for
/// the OAUTHBEARER token endpoint) and `ssl_*` (`ssl_key`, `ssl_ca`, ...).
pub const KAFKA_PROPERTIES_CONNECTION: &str = "self.all(k, !(k in ['metadata.broker.list', 'plugin.library.paths']) && !k.startsWith('enable.ssl.') && !k.startsWith('enable.sasl.') && !k.startsWith('https.') && !k.startsWith('ssl_'))";
/// Message of [`KAFKA_PROPERTIES_CONNECTION`].
pub const KAFKA_PROPERTIES_CONNECTION_MSG: &str = "kafka.properties must not set metadata.broker.list, plugin.library.paths, enable.ssl.*, enable.sasl.*, https.* or ssl_*: they would redirect the connection, weaken its certificate or token checks, or load code";
/// On `kafka.properties`: the separators of `SF_KAFKA_PROPERTIES`.
pub const KAFKA_PROPERTIES_SEPARATORS: &str =
    "self.all(k, !k.contains(',') && !k.contains('=') && !self[k].contains(','))";
/// Message of [`KAFKA_PROPERTIES_SEPARATORS`].
pub const KAFKA_PROPERTIES_SEPARATORS_MSG: &str =
    "kafka.properties: keys must not contain ',' or '=', values must not contain ','";
/// On a pod template overlay.
pub const SA_NAME_OR_ANNOTATIONS: &str = "!has(self.serviceAccountName) || !has(self.serviceAccountAnnotations) || size(self.serviceAccountAnnotations) == 0";
/// Message of [`SA_NAME_OR_ANNOTATIONS`].
pub const SA_NAME_OR_ANNOTATIONS_MSG: &str = "serviceAccountAnnotations apply to the ServiceAccount the operator creates; with serviceAccountName (your own) annotate that one instead";
/// Message of [`distinct_topic_names`].
pub const DISTINCT_TOPICS_MSG: &str =
    "the nine topic names (explicit or the <name>.<role> defaults) must all differ";

/// The resolved topic names as a CEL list (explicit name, else `<metadata.name>.<suffix>`).
pub fn resolved_topics_list() -> String {
    let items: Vec<String> = TopicRole::ALL
        .iter()
        .map(|r| {
            let (field, suffix) = (r.spec_field(), r.as_str());
            format!(
                "(has(self.spec.topics) && has(self.spec.topics.{field}) ? self.spec.topics.{field} : self.metadata.name + '.{suffix}')"
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Root rule (it needs `metadata.name` for the defaults): all nine resolved names differ.
pub fn distinct_topic_names() -> Rule {
    let list = resolved_topics_list();
    Rule {
        field_path: Some(".spec.topics".to_owned()),
        ..Rule::new(format!("{list}.all(t, {list}.exists_one(u, u == t))"))
            .message(Message::Message(DISTINCT_TOPICS_MSG.to_owned()))
    }
}
