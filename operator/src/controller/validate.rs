//! Pure cross-field validation of a [`SensorPipelineSpec`].
//!
//! The OpenAPI schema already refuses wrong types, enum values and out-of-range numbers (422).
//! This step checks what the schema cannot express on Kubernetes 1.20 (no CEL rules) and
//! resolves defaults that depend on the pipeline's namespace and name (topic names, consumer
//! groups, transactional ids: [`Naming`]).
//!
//! ```text
//!   SensorPipelineSpec ──validate(name, naming)──▶ Ok(Validated)  ──▶ build / topics / planner
//!                                     └──▶ Err(ValidationErrors) ──▶ Ready=False + Warning Event
//! ```

use std::collections::BTreeSet;
use std::fmt;

use crate::controller::build::owned::{OWNED_VOLUMES, owned_key, owned_mount_path};
use crate::crd::{
    BinRange, DefaultNames, ModelKind, PodTemplateOverlay, ScalingMode, SecurityProtocol,
    SensorPipelineSpec, SensorPipelineStatus, StageSpec, TopicOverride, kafka_property_refused,
};
use sensorflow_api::env;

/// Longest pipeline name: `<name>-metrics` must stay a valid 63-character Service name.
pub const MAX_NAME_LEN: usize = 55;

/// Every reason the spec was refused, in spec order. Displayed joined with `; `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<String>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for ValidationErrors {}

/// Resolved topic names of one pipeline (defined with the topic roles in `sensorflow-api`).
pub use sensorflow_api::TopicNames;

/// The Kafka name prefixes of one pipeline: topics `<topic_prefix><role>` (where not named
/// explicitly), consumer groups `<group_prefix>-<stage>` and transactional ids
/// `<group_prefix>-<stage>-<pod>`. These are what a pipeline's prefixed Kafka ACLs cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    /// Prefix of the default topic names, for example `team-a.demo.`.
    pub topic_prefix: String,
    /// Prefix of the consumer groups and transactional ids, for example `team-a.demo`.
    pub group_prefix: String,
    /// Object name prefix of the GCS sink, for example `team-a/demo/`.
    pub object_prefix: String,
}

impl Naming {
    /// The defaults of a new pipeline: `<namespace>.<name>.` and `<namespace>.<name>`, so
    /// that same-named pipelines of two namespaces never share a topic or a group (Kubernetes
    /// namespaces have no `.`, so the namespace part cannot be confused).
    pub fn namespaced_defaults(namespace: &str, name: &str) -> DefaultNames {
        DefaultNames {
            topic_prefix: format!("{namespace}.{name}."),
            group_prefix: format!("{namespace}.{name}"),
            object_prefix: format!("{namespace}/{name}/"),
        }
    }

    /// The defaults of operators before 0.2: `<name>.` and `<name>`.
    pub fn legacy_defaults(name: &str) -> DefaultNames {
        DefaultNames {
            topic_prefix: format!("{name}."),
            group_prefix: name.to_owned(),
            object_prefix: format!("{name}/"),
        }
    }

    /// The defaults a pipeline keeps for its whole life: the ones recorded in
    /// `status.defaultNames`; for a pipeline an older operator already reconciled (a status
    /// with `observedGeneration` but no `defaultNames`) the legacy ones, so an upgrade never
    /// renames its topics and groups; else (a new pipeline) the namespaced ones.
    pub fn fixed_defaults(
        namespace: &str,
        name: &str,
        status: Option<&SensorPipelineStatus>,
    ) -> DefaultNames {
        match status {
            Some(s) if s.default_names.is_some() => s.default_names.clone().unwrap_or_default(),
            Some(s) if s.observed_generation.is_some() => Self::legacy_defaults(name),
            _ => Self::namespaced_defaults(namespace, name),
        }
    }

    /// The prefixes in effect: `topics.prefix` / `kafka.groupPrefix` / `sink.prefix` where
    /// set, else `defaults`.
    pub fn resolve(spec: &SensorPipelineSpec, defaults: &DefaultNames) -> Self {
        Self {
            topic_prefix: spec
                .topics
                .prefix
                .clone()
                .unwrap_or_else(|| defaults.topic_prefix.clone()),
            group_prefix: spec
                .kafka
                .group_prefix
                .clone()
                .unwrap_or_else(|| defaults.group_prefix.clone()),
            object_prefix: spec
                .sink
                .as_ref()
                .and_then(|s| s.prefix.clone())
                .unwrap_or_else(|| defaults.object_prefix.clone()),
        }
    }

    /// The legacy naming of pipeline `name` (`<name>.`, `<name>`), for tests.
    pub fn legacy(name: &str) -> Self {
        let d = Self::legacy_defaults(name);
        Self {
            topic_prefix: d.topic_prefix,
            group_prefix: d.group_prefix,
            object_prefix: d.object_prefix,
        }
    }
}

/// A spec that passed [`validate`], with name-derived defaults resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// Pipeline (object) name.
    pub name: String,
    /// The spec as written (schema defaults applied by the API server).
    pub spec: SensorPipelineSpec,
    /// The name prefixes in effect.
    pub naming: Naming,
    /// Resolved topic names.
    pub topics: TopicNames,
    /// The image the processors run: `processors.image` when the pipeline pins one, else the
    /// operator's own image. [`validate`] resolves an unset one to
    /// [`crate::crd::DEFAULT_IMAGE`]; the reconciler then applies the operator's setting with
    /// [`Validated::with_operator_image`].
    pub image: String,
}

impl Validated {
    /// `self` with an unset `processors.image` resolved to `operator_image` (the operator's
    /// `--processor-image`); a pinned image stays.
    #[must_use]
    pub fn with_operator_image(mut self, operator_image: &str) -> Self {
        self.image = self.spec.processors.image_or(operator_image).to_owned();
        self
    }

    /// Consumer group of window-processor: `<groupPrefix>-window`.
    pub fn window_group(&self) -> String {
        format!("{}-window", self.naming.group_prefix)
    }
    /// Consumer group of join-predict: `<groupPrefix>-join`.
    pub fn join_group(&self) -> String {
        format!("{}-join", self.naming.group_prefix)
    }
    /// Consumer group of gcs-sink: `<groupPrefix>-sink`.
    pub fn sink_group(&self) -> String {
        format!("{}-sink", self.naming.group_prefix)
    }
    /// The consumer groups this pipeline's processors use (window, join, and sink when set).
    pub fn groups(&self) -> Vec<String> {
        let mut g = vec![self.window_group(), self.join_group()];
        if self.spec.sink.is_some() {
            g.push(self.sink_group());
        }
        g
    }
    /// Whether the operator's planner owns the replica counts.
    pub fn planner_enabled(&self) -> bool {
        self.spec.processors.scaling_mode == ScalingMode::Planner
    }
}

fn check_range(errs: &mut Vec<String>, field: &str, r: &BinRange) {
    if !r.lo.is_finite() || !r.hi.is_finite() {
        errs.push(format!("{field}: bounds must be finite numbers"));
    } else if r.lo >= r.hi {
        errs.push(format!(
            "{field}: lo ({}) must be less than hi ({})",
            r.lo, r.hi
        ));
    }
}

fn check_stage(errs: &mut Vec<String>, field: &str, s: &StageSpec, partitions: i32) {
    if s.min_replicas > s.max_replicas {
        errs.push(format!(
            "{field}: minReplicas ({}) must not exceed maxReplicas ({})",
            s.min_replicas, s.max_replicas
        ));
    }
    if s.max_replicas > partitions {
        errs.push(format!(
            "{field}: maxReplicas ({}) must not exceed topics.partitions ({partitions}): extra consumers would sit idle",
            s.max_replicas
        ));
    }
    if s.lag_target_per_replica < 1 {
        errs.push(format!("{field}: lagTargetPerReplica must be at least 1"));
    }
}

/// The pod template overlay rules (see [`PodTemplateOverlay`]): nothing the operator owns.
fn check_overlay(errs: &mut Vec<String>, field: &str, o: &PodTemplateOverlay) {
    for k in o.labels.keys() {
        if owned_key(k) {
            errs.push(format!(
                "{field}.labels: '{k}' is the operator's (app.kubernetes.io/*, sensorflow.io/*, prometheus.io/*)"
            ));
        }
    }
    for k in o.annotations.keys() {
        if owned_key(k) {
            errs.push(format!(
                "{field}.annotations: '{k}' is the operator's (app.kubernetes.io/*, sensorflow.io/*, prometheus.io/*)"
            ));
        }
    }
    let mut names = BTreeSet::new();
    for e in &o.env {
        if env::is_contract(&e.name) {
            errs.push(format!(
                "{field}.env: '{}' is set by the operator (processor contract); use the spec field that sets it",
                e.name
            ));
        } else if !names.insert(e.name.as_str()) {
            errs.push(format!("{field}.env: '{}' listed twice", e.name));
        }
    }
    let mut vols = BTreeSet::new();
    for v in &o.volumes {
        if OWNED_VOLUMES.contains(&v.name.as_str()) {
            errs.push(format!(
                "{field}.volumes: '{}' is the operator's volume name",
                v.name
            ));
        } else if !vols.insert(v.name.as_str()) {
            errs.push(format!("{field}.volumes: '{}' listed twice", v.name));
        }
    }
    for m in &o.volume_mounts {
        if owned_mount_path(&m.mount_path) {
            errs.push(format!(
                "{field}.volumeMounts: {} is the operator's mount path (/tmp, /etc/sensorflow)",
                m.mount_path
            ));
        }
        if !vols.contains(m.name.as_str()) {
            errs.push(format!(
                "{field}.volumeMounts: '{}' names no volume of {field}.volumes",
                m.name
            ));
        }
    }
    if o.service_account_name.is_some() && !o.service_account_annotations.is_empty() {
        errs.push(format!(
            "{field}: serviceAccountAnnotations apply to the ServiceAccount the operator creates; with serviceAccountName annotate your own"
        ));
    }
}

fn check_override(errs: &mut Vec<String>, field: &str, o: Option<&TopicOverride>) {
    if let Some(o) = o
        && o.retention_ms.is_some()
        && o.config.contains_key("retention.ms")
    {
        errs.push(format!(
            "{field}.config: 'retention.ms' conflicts with {field}.retentionMs"
        ));
    }
}

/// Checks the cross-field rules of `spec` for the pipeline called `name` and resolves its topic
/// names.
///
/// # Errors
/// Returns every violated rule (not just the first) as [`ValidationErrors`].
pub fn validate(
    name: &str,
    naming: &Naming,
    spec: &SensorPipelineSpec,
) -> Result<Validated, ValidationErrors> {
    let mut errs = Vec::new();
    if name.len() > MAX_NAME_LEN {
        errs.push(format!(
            "metadata.name: at most {MAX_NAME_LEN} characters (derived object names get suffixes)"
        ));
    }

    for server in spec.kafka.bootstrap_servers.split(',') {
        let ok = server
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            errs.push(format!(
                "kafka.bootstrapServers: '{server}' is not host:port"
            ));
        }
    }
    if let Some(sec) = &spec.kafka.security {
        let sasl = matches!(
            sec.protocol,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        );
        if sasl && sec.sasl_mechanism.is_none() {
            errs.push("kafka.security.saslMechanism: required with a SASL_* protocol".to_owned());
        }
        if sasl && sec.credentials_secret.is_none() {
            errs.push(
                "kafka.security.credentialsSecret: required with a SASL_* protocol".to_owned(),
            );
        }
        if !sasl && (sec.sasl_mechanism.is_some() || sec.credentials_secret.is_some()) {
            errs.push(
                "kafka.security: saslMechanism/credentialsSecret need protocol SASL_PLAINTEXT or SASL_SSL"
                    .to_owned(),
            );
        }
        let tls = matches!(
            sec.protocol,
            SecurityProtocol::Ssl | SecurityProtocol::SaslSsl
        );
        if !tls && sec.ca_secret.is_some() {
            errs.push("kafka.security.caSecret: needs protocol SSL or SASL_SSL".to_owned());
        }
        if !tls && sec.client_certificate_secret.is_some() {
            errs.push(
                "kafka.security.clientCertificateSecret: needs protocol SSL or SASL_SSL (a client certificate is presented in the TLS handshake)"
                    .to_owned(),
            );
        }
        if let Some(cc) = &sec.client_certificate_secret
            && cc.certificate_key == cc.key_key
        {
            errs.push(format!(
                "kafka.security.clientCertificateSecret: certificateKey and keyKey are both '{}'; they must name two keys",
                cc.key_key
            ));
        }
        if sec.protocol == SecurityProtocol::SaslPlaintext && !sec.allow_plaintext_credentials {
            errs.push(
                "kafka.security.protocol: SASL_PLAINTEXT sends the credentials unencrypted; use SASL_SSL, or set allowPlaintextCredentials: true to accept that"
                    .to_owned(),
            );
        }
        if sec.allow_plaintext_credentials && sec.protocol != SecurityProtocol::SaslPlaintext {
            errs.push(
                "kafka.security.allowPlaintextCredentials: only meaningful with protocol SASL_PLAINTEXT"
                    .to_owned(),
            );
        }
    }

    for (k, v) in &spec.kafka.properties {
        if kafka_property_refused(k) {
            errs.push(format!(
                "kafka.properties: '{k}' is refused (sasl.*, ssl.*, security.protocol come from kafka.security and Secrets; bootstrap.servers, group.id, transactional.id, enable.auto.commit, enable.auto.offset.store are the processors'; metadata.broker.list, plugin.library.paths, enable.ssl.*, enable.sasl.*, https.*, ssl_* would redirect or weaken the connection or load code)"
            ));
        }
        if k.contains(',') || k.contains('=') || v.contains(',') || k.trim().is_empty() {
            errs.push(format!(
                "kafka.properties: '{k}': keys must be non-empty without ',' or '=', values without ','"
            ));
        }
    }

    let t = &spec.topics;
    let topics = TopicNames::with_prefix(&naming.topic_prefix, t);
    let mut seen = BTreeSet::new();
    for topic in topics.all() {
        if !seen.insert(topic) {
            errs.push(format!("topics: '{topic}' is used for more than one role"));
        }
    }
    if t.partitions < 1 {
        errs.push("topics.partitions: must be at least 1".to_owned());
    }
    if t.replication_factor < 1 {
        errs.push("topics.replicationFactor: must be at least 1".to_owned());
    }
    for key in t.config.keys() {
        if key == "retention.ms" && t.retention_ms.is_some() {
            errs.push("topics.config: 'retention.ms' conflicts with topics.retentionMs".to_owned());
        }
    }

    check_override(
        &mut errs,
        "topics.overrides.predictions",
        t.overrides.predictions.as_ref(),
    );
    check_override(
        &mut errs,
        "topics.overrides.deadLetter",
        t.overrides.dead_letter.as_ref(),
    );
    check_override(
        &mut errs,
        "topics.overrides.late",
        t.overrides.late.as_ref(),
    );

    let w = &spec.window;
    check_range(&mut errs, "window.faRange", &w.fa_range);
    check_range(&mut errs, "window.fiRange", &w.fi_range);
    check_range(&mut errs, "window.fdRange", &w.fd_range);
    if w.size_ms <= 0 {
        errs.push("window.sizeMs: must be positive".to_owned());
    }
    if w.grace_ms < 0 {
        errs.push("window.graceMs: must not be negative".to_owned());
    }
    // The CRD's CEL rules on `window` (crd::cel), again for objects stored before them.
    use sensorflow_api::{WindowEmit, WindowKind};
    match (w.kind, w.advance_ms) {
        (WindowKind::Hopping, None) => errs.push(format!(
            "window.advanceMs: {}",
            crate::crd::cel::HOPPING_NEEDS_ADVANCE_MSG
        )),
        (WindowKind::Hopping, Some(a))
            if a <= 0 || a > w.size_ms || (w.size_ms - 1) / a + 1 > 1000 =>
        {
            errs.push(format!(
                "window.advanceMs: {}",
                crate::crd::cel::ADVANCE_WITHIN_SIZE_MSG
            ));
        }
        (WindowKind::Hopping, Some(_)) => {}
        (_, Some(_)) => errs.push(format!(
            "window.advanceMs: {}",
            crate::crd::cel::ADVANCE_ONLY_HOPPING_MSG
        )),
        (_, None) => {}
    }
    if w.emit == WindowEmit::Final && !matches!(w.kind, WindowKind::Tumbling | WindowKind::Hopping)
    {
        errs.push(format!(
            "window.emit: {}",
            crate::crd::cel::FINAL_NEEDS_CLOSING_MSG
        ));
    }

    let m = &spec.model;
    if !(0.0..=1.0).contains(&m.threshold) {
        errs.push(format!(
            "model.threshold: {} is outside [0, 1]",
            m.threshold
        ));
    }
    if let Some(weights) = &m.weights {
        if weights.len() != 5 {
            errs.push(format!(
                "model.weights: exactly 5 weights needed, got {}",
                weights.len()
            ));
        }
        if weights.iter().any(|w| !w.is_finite()) {
            errs.push("model.weights: must be finite numbers".to_owned());
        }
        if m.kind == ModelKind::Random {
            errs.push("model.weights: only used by kind logistic".to_owned());
        }
    }
    if m.bias.is_some_and(|b| !b.is_finite()) {
        errs.push("model.bias: must be a finite number".to_owned());
    }

    let p = &spec.processors;
    check_stage(&mut errs, "processors.window", &p.window, t.partitions);
    check_stage(&mut errs, "processors.join", &p.join, t.partitions);
    if p.log_level.trim().is_empty() {
        errs.push("processors.logLevel: must not be empty".to_owned());
    }
    check_overlay(
        &mut errs,
        "processors.window.podTemplate",
        &p.window.pod_template,
    );
    check_overlay(
        &mut errs,
        "processors.join.podTemplate",
        &p.join.pod_template,
    );
    if u32::try_from(p.schema_id).is_err() {
        errs.push("processors.schemaId: must be in [0, 2147483647]".to_owned());
    }

    if let Some(sink) = &spec.sink {
        let mut roles = BTreeSet::new();
        for role in &sink.topics {
            if !roles.insert(*role) {
                errs.push(format!("sink.topics: {role} listed twice"));
            }
        }
        check_overlay(&mut errs, "sink.podTemplate", &sink.pod_template);
        if sink.prefix.as_deref().is_some_and(|p| p.starts_with('/')) {
            errs.push("sink.prefix: must not start with '/'".to_owned());
        }
        let plain_http = sink.endpoint.as_deref().is_some_and(|e| {
            e.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        });
        if plain_http && sink.credentials_secret.is_some() {
            errs.push(
                "sink.endpoint: an http:// endpoint would send the credentials of sink.credentialsSecret unencrypted; use https://"
                    .to_owned(),
            );
        }
    }

    if errs.is_empty() {
        Ok(Validated {
            name: name.to_owned(),
            spec: spec.clone(),
            naming: naming.clone(),
            topics,
            image: spec
                .processors
                .image_or(crate::crd::DEFAULT_IMAGE)
                .to_owned(),
        })
    } else {
        Err(ValidationErrors(errs))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::{KafkaSpec, SinkSpec, SinkTopic};
    use proptest::prelude::*;

    #[test]
    fn default_names_are_namespaced_fixed_once_and_legacy_pipelines_keep_theirs() {
        let new = Naming::fixed_defaults("team-a", "demo", None);
        assert_eq!(new.topic_prefix, "team-a.demo.");
        assert_eq!(new.group_prefix, "team-a.demo");
        assert_eq!(new.object_prefix, "team-a/demo/");
        // Reconciled by an operator before 0.2: a status without defaultNames.
        let old = SensorPipelineStatus {
            observed_generation: Some(3),
            ..Default::default()
        };
        let legacy = Naming::fixed_defaults("team-a", "demo", Some(&old));
        assert_eq!(legacy.topic_prefix, "demo.");
        assert_eq!(legacy.group_prefix, "demo");
        // Recorded ones win.
        let recorded = SensorPipelineStatus {
            observed_generation: Some(3),
            default_names: Some(new.clone()),
            ..Default::default()
        };
        assert_eq!(
            Naming::fixed_defaults("team-a", "demo", Some(&recorded)),
            new
        );
        // The spec's prefixes win over the defaults.
        let mut s = spec();
        s.topics.prefix = Some("shared.".into());
        s.kafka.group_prefix = Some("grp".into());
        let n = Naming::resolve(&s, &new);
        let v = validate("demo", &n, &s).expect("valid");
        assert_eq!(v.topics.sx, "shared.sx");
        assert_eq!(v.join_group(), "grp-join");
        let v = validate("demo", &Naming::resolve(&spec(), &new), &spec()).expect("valid");
        assert_eq!(v.topics.predictions, "team-a.demo.predictions");
        assert_eq!(v.window_group(), "team-a.demo-window");
    }

    pub(crate) fn spec() -> SensorPipelineSpec {
        SensorPipelineSpec {
            kafka: KafkaSpec {
                bootstrap_servers: "kafka:9092".into(),
                security: None,
                properties: Default::default(),
                group_prefix: None,
            },
            topics: Default::default(),
            window: Default::default(),
            model: Default::default(),
            join: Default::default(),
            processors: Default::default(),
            sink: None,
            suspend: false,
        }
    }

    #[test]
    fn defaults_are_valid_and_derive_topic_names() {
        let v = validate("p1", &Naming::legacy("p1"), &spec()).expect("valid");
        assert_eq!(v.topics.sz, "p1.sz");
        assert_eq!(v.topics.dead_letter, "p1.dead-letter");
        assert_eq!(v.join_group(), "p1-join");
        assert_eq!(v.topics.join_inputs().len(), 5);
    }

    #[test]
    fn min_above_max_and_max_above_partitions_are_refused() {
        let mut s = spec();
        s.processors.window.min_replicas = 5;
        s.processors.window.max_replicas = 4;
        s.topics.partitions = 3;
        let e = validate("p", &Naming::legacy("p"), &s).expect_err("invalid");
        assert!(
            e.to_string()
                .contains("minReplicas (5) must not exceed maxReplicas (4)")
        );
        assert!(
            e.to_string()
                .contains("maxReplicas (4) must not exceed topics.partitions (3)")
        );
        // join's default max (10) also exceeds 3 partitions.
        assert_eq!(e.0.len(), 3);
    }

    #[test]
    fn empty_bin_range_is_refused() {
        let mut s = spec();
        s.window.fi_range = BinRange { lo: 10.0, hi: 10.0 };
        let e = validate("p", &Naming::legacy("p"), &s).expect_err("invalid");
        assert_eq!(
            e.0,
            vec!["window.fiRange: lo (10) must be less than hi (10)"]
        );
    }

    #[test]
    fn threshold_outside_unit_interval_is_refused() {
        let mut s = spec();
        s.model.threshold = 1.5;
        assert!(validate("p", &Naming::legacy("p"), &s).is_err());
    }

    #[test]
    fn duplicate_topic_names_are_refused() {
        let mut s = spec();
        s.topics.sx = Some("same".into());
        s.topics.sy = Some("same".into());
        assert!(
            validate("p", &Naming::legacy("p"), &s)
                .expect_err("invalid")
                .to_string()
                .contains("'same' is used for more than one role")
        );
    }

    #[test]
    fn sasl_needs_mechanism_and_secret() {
        let mut s = spec();
        s.kafka.security = Some(crate::crd::KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: None,
            credentials_secret: None,
            ca_secret: None,
            allow_plaintext_credentials: false,
            client_certificate_secret: None,
        });
        assert_eq!(
            validate("p", &Naming::legacy("p"), &s)
                .expect_err("invalid")
                .0
                .len(),
            2
        );
    }

    fn sasl(protocol: SecurityProtocol, opt_in: bool) -> SensorPipelineSpec {
        let mut s = spec();
        s.kafka.security = Some(crate::crd::KafkaSecurity {
            protocol,
            sasl_mechanism: Some(crate::crd::SaslMechanism::ScramSha512),
            credentials_secret: Some(crate::crd::CredentialsSecretRef {
                name: "creds".into(),
                username_key: "username".into(),
                password_key: "password".into(),
                username_from: Default::default(),
            }),
            ca_secret: None,
            allow_plaintext_credentials: opt_in,
            client_certificate_secret: None,
        });
        s
    }

    #[test]
    fn sasl_over_plaintext_needs_an_explicit_opt_in() {
        let e = validate(
            "p",
            &Naming::legacy("p"),
            &sasl(SecurityProtocol::SaslPlaintext, false),
        )
        .expect_err("refused");
        assert!(
            e.to_string()
                .contains("SASL_PLAINTEXT sends the credentials unencrypted"),
            "{e}"
        );
        assert!(
            validate(
                "p",
                &Naming::legacy("p"),
                &sasl(SecurityProtocol::SaslPlaintext, true)
            )
            .is_ok()
        );
        assert!(
            validate(
                "p",
                &Naming::legacy("p"),
                &sasl(SecurityProtocol::SaslSsl, false)
            )
            .is_ok()
        );
        // The opt-in on a TLS listener is a mistake worth pointing out.
        assert!(
            validate(
                "p",
                &Naming::legacy("p"),
                &sasl(SecurityProtocol::SaslSsl, true)
            )
            .is_err()
        );
    }

    #[test]
    fn http_gcs_endpoint_with_credentials_is_refused() {
        let sink = |endpoint: &str, creds: bool| {
            let mut s = spec();
            s.sink = Some(SinkSpec {
                bucket: "bkt".into(),
                prefix: None,
                topics: vec![SinkTopic::Predictions],
                rotation: Default::default(),
                credentials_secret: creds.then(|| crate::crd::SecretKeyRef {
                    name: "gcs".into(),
                    key: "key.json".into(),
                }),
                endpoint: Some(endpoint.into()),
                replicas: 1,
                resources: None,
                pod_template: Default::default(),
            });
            validate("p", &Naming::legacy("p"), &s)
        };
        let e = sink("http://fake-gcs:4443", true).expect_err("refused");
        assert!(e.to_string().contains("http:// endpoint"), "{e}");
        assert!(sink("HTTP://fake-gcs:4443", true).is_err());
        assert!(
            sink("http://fake-gcs:4443", false).is_ok(),
            "anonymous over http is fine"
        );
        assert!(sink("https://storage.example:443", true).is_ok());
    }

    #[test]
    fn bad_bootstrap_and_long_name_are_refused() {
        let mut s = spec();
        s.kafka.bootstrap_servers = "kafka".into();
        let e =
            validate(&"x".repeat(60), &Naming::legacy(&"x".repeat(60)), &s).expect_err("invalid");
        assert_eq!(e.0.len(), 2);
    }

    #[test]
    fn sink_duplicate_roles_are_refused() {
        let mut s = spec();
        s.sink = Some(SinkSpec {
            bucket: "b".into(),
            prefix: None,
            topics: vec![SinkTopic::Predictions, SinkTopic::Predictions],
            rotation: Default::default(),
            credentials_secret: None,
            endpoint: None,
            replicas: 1,
            resources: None,
            pod_template: Default::default(),
        });
        assert!(validate("p", &Naming::legacy("p"), &s).is_err());
    }

    proptest! {
        /// validate accepts exactly the stage bounds with min <= max <= partitions.
        #[test]
        fn stage_bounds(min in 0i32..50, max in 1i32..50, partitions in 1i32..50) {
            let mut s = spec();
            s.topics.partitions = partitions;
            s.processors.window.min_replicas = min;
            s.processors.window.max_replicas = max;
            s.processors.join.min_replicas = 1;
            s.processors.join.max_replicas = 1;
            let ok = validate("p", &Naming::legacy("p"), &s).is_ok();
            prop_assert_eq!(ok, min <= max && max <= partitions);
        }

        /// validate accepts exactly the ranges with lo < hi.
        #[test]
        fn bin_ranges(lo in -1e6f64..1e6, hi in -1e6f64..1e6) {
            let mut s = spec();
            s.window.fa_range = BinRange { lo, hi };
            prop_assert_eq!(validate("p", &Naming::legacy("p"), &s).is_ok(), lo < hi);
        }
    }
}
