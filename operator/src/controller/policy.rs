//! The operator's least-privilege policy (issue 26): what a `SensorPipeline` may ask the
//! operator to run, beyond what the CRD's schema and CEL rules already refuse for everyone.
//!
//! The policy belongs to one operator installation (its flags, set by the chart's `policy.*`
//! values), so the pipelines of the namespaces it watches can obtain no more than it allows:
//!
//! ```text
//!   --allowed-image-repositories ┐
//!   --allow-service-account-name ├─▶ Policy ──check(spec)──▶ Ok: build / apply as usual
//!   --allowed-volume-types       ┘                      └──▶ Err(PolicyViolations) ─▶ Ready=False
//!                                                            PolicyViolation + Warning, nothing applied
//! ```
//!
//! [`check`] is pure; the reconciler calls it right after `validate` and, on a refusal, writes
//! no object (existing Deployments keep the spec they were last built from) and waits for a
//! change of the pipeline. The chart can also render the same policy as a
//! `ValidatingAdmissionPolicy`, so `kubectl apply` is refused at once; this check is the one
//! that always holds (an admission policy switched off, or a pipeline stored before it).

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::Volume;

use crate::crd::{DEFAULT_IMAGE, PodTemplateOverlay, SensorPipelineSpec};

/// The `allowedImageRepositories` entry that allows every repository.
pub const ANY_REPOSITORY: &str = "*";

/// Volume types a pod template may add by default: the field names of a Kubernetes `Volume`
/// whose data come from the namespace's own objects or from scratch space.
pub const DEFAULT_VOLUME_TYPES: [&str; 6] = [
    "secret",
    "configMap",
    "emptyDir",
    "persistentVolumeClaim",
    "csi",
    "projected",
];

/// Every volume type of `core/v1` `Volume` (its field names besides `name`, Kubernetes 1.33+):
/// the names `--allowed-volume-types` accepts.
pub const KNOWN_VOLUME_TYPES: [&str; 30] = [
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "hostPath",
    "image",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
];

/// The operator's policy (see the module docs). Built once from the command line with
/// [`Policy::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Image repositories `processors.image` may name (the reference without `:tag` and
    /// `@digest`, compared exactly), or [`ANY_REPOSITORY`].
    pub allowed_image_repositories: Vec<String>,
    /// Whether a pod template may set `serviceAccountName` (run as a ServiceAccount of the
    /// namespace that the operator did not create).
    pub allow_service_account_name: bool,
    /// Volume types (`Volume` field names: `secret`, `hostPath`, ...) a pod template may add.
    pub allowed_volume_types: BTreeSet<String>,
}

impl Default for Policy {
    /// The defaults of the operator's flags: the repository of [`DEFAULT_IMAGE`], no
    /// `serviceAccountName`, [`DEFAULT_VOLUME_TYPES`].
    fn default() -> Self {
        Self {
            allowed_image_repositories: vec![image_repository(DEFAULT_IMAGE).to_owned()],
            allow_service_account_name: false,
            allowed_volume_types: DEFAULT_VOLUME_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
        }
    }
}

/// A policy the operator refuses to start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// No image repository is allowed: no pipeline could run.
    #[error("--allowed-image-repositories is empty: name at least one repository (or '*')")]
    NoRepository,
    /// An allowed repository carries a tag or a digest (only the repository is compared).
    #[error(
        "--allowed-image-repositories: '{0}' has a tag or digest; list repositories only (e.g. sensorflow/sensorflow)"
    )]
    NotARepository(String),
    /// A volume type that is no field of `core/v1` `Volume` (for example `configmap` for
    /// `configMap`).
    #[error("--allowed-volume-types: '{0}' is not a Kubernetes volume type (one of: {known})", known = KNOWN_VOLUME_TYPES.join(", "))]
    UnknownVolumeType(String),
}

impl Policy {
    /// A policy from the flags' lists (empty entries, as an empty flag gives, are dropped).
    ///
    /// # Errors
    /// [`PolicyError`] when no repository is listed, a repository has a tag or digest, or a
    /// volume type is none of [`KNOWN_VOLUME_TYPES`].
    pub fn new(
        repositories: &[String],
        allow_service_account_name: bool,
        volume_types: &[String],
    ) -> Result<Self, PolicyError> {
        let repos: Vec<String> = repositories
            .iter()
            .map(|r| r.trim())
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect();
        if repos.is_empty() {
            return Err(PolicyError::NoRepository);
        }
        if let Some(r) = repos
            .iter()
            .find(|r| *r != ANY_REPOSITORY && image_repository(r) != r.as_str())
        {
            return Err(PolicyError::NotARepository(r.clone()));
        }
        let mut types = BTreeSet::new();
        for t in volume_types
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
        {
            if !KNOWN_VOLUME_TYPES.contains(&t) {
                return Err(PolicyError::UnknownVolumeType(t.to_owned()));
            }
            types.insert(t.to_owned());
        }
        Ok(Self {
            allowed_image_repositories: repos,
            allow_service_account_name,
            allowed_volume_types: types,
        })
    }

    /// Whether `image` (a reference `repo`, `repo:tag`, `repo@sha256:…` or
    /// `repo:tag@sha256:…`) is from an allowed repository.
    pub fn allows_image(&self, image: &str) -> bool {
        let repo = image_repository(image);
        self.allowed_image_repositories
            .iter()
            .any(|r| r == ANY_REPOSITORY || r == repo)
    }

    /// One line for logs: the policy as the flags give it.
    pub fn summary(&self) -> String {
        format!(
            "allowed image repositories: {}; serviceAccountName allowed: {}; allowed volume types: {}",
            self.allowed_image_repositories.join(", "),
            self.allow_service_account_name,
            self.volume_types_list()
        )
    }

    fn volume_types_list(&self) -> String {
        if self.allowed_volume_types.is_empty() {
            "(none)".to_owned()
        } else {
            self.allowed_volume_types
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    fn check_overlay(&self, errs: &mut Vec<String>, field: &str, o: &PodTemplateOverlay) {
        if let Some(sa) = &o.service_account_name
            && !self.allow_service_account_name
        {
            errs.push(format!(
                "{field}.serviceAccountName: '{sa}' is refused: this operator does not let pipelines name a ServiceAccount (policy allowServiceAccountName: false); leave it unset to run as the operator's own per-pipeline ServiceAccount (serviceAccountAnnotations stay allowed)"
            ));
        }
        for v in &o.volumes {
            for t in volume_types(v) {
                if !self.allowed_volume_types.contains(&t) {
                    errs.push(format!(
                        "{field}.volumes: '{}' is a {t} volume, which this operator does not allow (policy allowedVolumeTypes: {})",
                        v.name,
                        self.volume_types_list()
                    ));
                }
            }
        }
    }
}

/// The repository of an image reference: without `@digest`, and without `:tag` when that
/// colon comes after the last `/` (a colon before it is a registry port,
/// `registry:5000/team/app`). No normalisation: `docker.io/sensorflow/sensorflow` and
/// `sensorflow/sensorflow` are different repositories to the policy.
pub fn image_repository(image: &str) -> &str {
    let name = image.split('@').next().unwrap_or(image);
    match (name.rfind(':'), name.rfind('/')) {
        (Some(colon), Some(slash)) if colon > slash => &name[..colon],
        (Some(colon), None) => &name[..colon],
        _ => name,
    }
}

/// The volume types of `v`: the names of its fields besides `name` (one for a valid volume).
/// A volume without a source is an `emptyDir` (Kubernetes' default for it).
pub fn volume_types(v: &Volume) -> Vec<String> {
    let types: Vec<String> = match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k != "name")
            .collect(),
        _ => Vec::new(),
    };
    if types.is_empty() {
        vec!["emptyDir".to_owned()]
    } else {
        types
    }
}

/// Every way a spec exceeds the policy, in spec order. Displayed joined with `; `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyViolations(pub Vec<String>);

impl fmt::Display for PolicyViolations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for PolicyViolations {}

/// Checks `spec` against `policy`: the repository of the image the processors will run
/// (`processors.image`, or `operator_image` when the pipeline pins none: the image the
/// operator resolves it to, see [`crate::crd::ProcessorsSpec::image_or`]), and in each pod
/// template (`processors.window`, `processors.join`, `sink`) `serviceAccountName` and the
/// volume types.
///
/// # Errors
/// Every violation (not just the first) as [`PolicyViolations`], each naming the field and
/// the policy value it exceeds.
pub fn check(
    policy: &Policy,
    spec: &SensorPipelineSpec,
    operator_image: &str,
) -> Result<(), PolicyViolations> {
    let mut errs = Vec::new();
    let image = spec.processors.image_or(operator_image);
    if !policy.allows_image(image) {
        let field = if spec.processors.image.is_some() {
            "processors.image"
        } else {
            "processors.image (unset: the operator's own image)"
        };
        errs.push(format!(
            "{field}: repository '{}' (of '{image}') is not allowed by this operator (policy allowedImageRepositories: {})",
            image_repository(image),
            policy.allowed_image_repositories.join(", ")
        ));
    }
    let p = &spec.processors;
    policy.check_overlay(
        &mut errs,
        "processors.window.podTemplate",
        &p.window.pod_template,
    );
    policy.check_overlay(
        &mut errs,
        "processors.join.podTemplate",
        &p.join.pod_template,
    );
    if let Some(sink) = &spec.sink {
        policy.check_overlay(&mut errs, "sink.podTemplate", &sink.pod_template);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(PolicyViolations(errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::validate::tests::spec;
    use proptest::prelude::*;

    fn volume(json: serde_json::Value) -> Volume {
        serde_json::from_value(json).expect("volume")
    }

    #[test]
    fn repository_of_a_reference() {
        for (image, repo) in [
            ("sensorflow/sensorflow:0.1.0", "sensorflow/sensorflow"),
            ("sensorflow/sensorflow", "sensorflow/sensorflow"),
            ("sensorflow/sensorflow@sha256:abc", "sensorflow/sensorflow"),
            (
                "sensorflow/sensorflow:0.1@sha256:abc",
                "sensorflow/sensorflow",
            ),
            ("registry:5000/team/app", "registry:5000/team/app"),
            ("registry:5000/team/app:1.2", "registry:5000/team/app"),
            ("busybox:1.36", "busybox"),
        ] {
            assert_eq!(image_repository(image), repo, "{image}");
        }
    }

    #[test]
    fn the_default_policy_allows_the_default_spec() {
        assert_eq!(check(&Policy::default(), &spec(), DEFAULT_IMAGE), Ok(()));
        assert_eq!(
            Policy::default().allowed_image_repositories,
            ["sensorflow/sensorflow"]
        );
    }

    #[test]
    fn an_image_of_another_repository_is_refused_even_with_the_same_prefix() {
        let policy = Policy::default();
        for image in [
            "sensorflow/sensorflow-evil:0.1.0",
            "sensorflow/sensorflow/evil:1",
            "evil/sensorflow:0.1.0",
            "docker.io/sensorflow/sensorflow:0.1.0",
            "sensorflow/sensorflo:0.1.0",
        ] {
            let mut s = spec();
            s.processors.image = Some(image.into());
            let e = check(&policy, &s, DEFAULT_IMAGE).expect_err(image);
            assert!(
                e.to_string()
                    .contains("policy allowedImageRepositories: sensorflow/sensorflow"),
                "{e}"
            );
        }
        let mut s = spec();
        s.processors.image = Some("sensorflow/sensorflow@sha256:0123".into());
        assert_eq!(check(&policy, &s, DEFAULT_IMAGE), Ok(()));
        let any = Policy::new(&["*".into()], false, &[]).expect("policy");
        s.processors.image = Some("evil/anything:1".into());
        assert_eq!(check(&any, &s, DEFAULT_IMAGE), Ok(()));
    }

    #[test]
    fn an_unset_image_is_checked_as_the_operators_own() {
        let s = spec();
        assert_eq!(s.processors.image, None);
        let policy = Policy::default();
        assert_eq!(check(&policy, &s, "sensorflow/sensorflow:9.9.9"), Ok(()));
        // An operator whose own image lies outside its policy refuses the unpinned pipelines
        // and says why.
        let e = check(&policy, &s, "registry.example:5000/sf/sensorflow:1").expect_err("refused");
        assert_eq!(
            e.0,
            [
                "processors.image (unset: the operator's own image): repository 'registry.example:5000/sf/sensorflow' (of 'registry.example:5000/sf/sensorflow:1') is not allowed by this operator (policy allowedImageRepositories: sensorflow/sensorflow)"
            ]
        );
    }

    #[test]
    fn service_account_name_needs_the_policy() {
        let mut s = spec();
        s.processors.join.pod_template.service_account_name = Some("admin-sa".into());
        let e = check(&Policy::default(), &s, DEFAULT_IMAGE).expect_err("refused");
        assert_eq!(e.0.len(), 1);
        assert!(
            e.0[0].starts_with("processors.join.podTemplate.serviceAccountName: 'admin-sa'"),
            "{e}"
        );
        assert!(e.0[0].contains("allowServiceAccountName: false"), "{e}");
        let open = Policy {
            allow_service_account_name: true,
            ..Policy::default()
        };
        assert_eq!(check(&open, &s, DEFAULT_IMAGE), Ok(()));
        // Annotations of the operator's own ServiceAccount stay allowed.
        let mut s = spec();
        s.processors.window.pod_template.service_account_annotations = [(
            "iam.gke.io/gcp-service-account".to_owned(),
            "x@p.iam.gserviceaccount.com".to_owned(),
        )]
        .into();
        assert_eq!(check(&Policy::default(), &s, DEFAULT_IMAGE), Ok(()));
    }

    #[test]
    fn volume_types_outside_the_policy_are_refused_in_every_overlay() {
        let mut s = spec();
        let host = volume(serde_json::json!({"name": "root", "hostPath": {"path": "/"}}));
        let ok = volume(serde_json::json!({"name": "scratch", "emptyDir": {}}));
        s.processors.window.pod_template.volumes = vec![ok.clone(), host.clone()];
        s.sink = Some(
            serde_json::from_value(serde_json::json!({"bucket": "bkt",
                "podTemplate": {"volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}}))
            .expect("sink"),
        );
        let e = check(&Policy::default(), &s, DEFAULT_IMAGE).expect_err("refused");
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(
            e.0[0]
                .starts_with("processors.window.podTemplate.volumes: 'root' is a hostPath volume"),
            "{e}"
        );
        assert!(e.0[0].contains("allowedVolumeTypes: configMap, csi, emptyDir, persistentVolumeClaim, projected, secret"), "{e}");
        assert!(
            e.0[1].starts_with("sink.podTemplate.volumes: 'n' is a nfs volume"),
            "{e}"
        );
        let wide = Policy::new(
            &["sensorflow/sensorflow".into()],
            false,
            &["hostPath".into(), "nfs".into(), "emptyDir".into()],
        )
        .expect("policy");
        assert_eq!(check(&wide, &s, DEFAULT_IMAGE), Ok(()));
        // No source at all: Kubernetes makes it an emptyDir.
        assert_eq!(
            volume_types(&volume(serde_json::json!({"name": "x"}))),
            ["emptyDir"]
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        assert_eq!(
            Policy::new(&[String::new()], false, &[]),
            Err(PolicyError::NoRepository)
        );
        assert_eq!(
            Policy::new(&["sensorflow/sensorflow:0.1.0".into()], false, &[]),
            Err(PolicyError::NotARepository(
                "sensorflow/sensorflow:0.1.0".into()
            ))
        );
        assert!(matches!(
            Policy::new(&["a/b".into()], false, &["configmap".into()]),
            Err(PolicyError::UnknownVolumeType(t)) if t == "configmap"
        ));
        assert_eq!(
            Policy::new(&["registry:5000/a/b".into()], false, &[])
                .map(|p| p.allowed_volume_types.len()),
            Ok(0)
        );
    }

    /// Every field of the CRD's `Volume` schema is a known volume type (so the flag can name
    /// every type the API server stores), and nothing else is.
    #[test]
    fn known_volume_types_are_the_crds() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(crate::crd::SensorPipeline::crd()).expect("json");
        let volume = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["processors"]["properties"]["window"]["properties"]["podTemplate"]["properties"]
            ["volumes"]["items"]["properties"];
        let mut fields: Vec<&str> = volume
            .as_object()
            .expect("volume properties")
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "name")
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, KNOWN_VOLUME_TYPES);
    }

    proptest! {
        /// A reference is allowed exactly when its repository (the naive way: cut at '@',
        /// then at a ':' with no '/' after it) equals an allowed entry; appending anything to
        /// an allowed repository other than a tag or digest is refused.
        #[test]
        fn image_allowed_iff_repository_listed(
            repo in "[a-z]{1,6}(/[a-z]{1,6}){0,2}",
            suffix in "(|-[a-z]{1,4}|/[a-z]{1,4}|[a-z]{1,3})",
            tag in proptest::option::of("[a-z0-9.]{1,6}"),
            digest in proptest::option::of("[0-9a-f]{8}"),
        ) {
            let mut image = format!("{repo}{suffix}");
            if let Some(t) = &tag { image.push(':'); image.push_str(t); }
            if let Some(d) = &digest { image.push_str("@sha256:"); image.push_str(d); }
            let policy = Policy::new(std::slice::from_ref(&repo), false, &[]).expect("policy");
            prop_assert_eq!(policy.allows_image(&image), suffix.is_empty());
            let mut s = spec();
            s.processors.image = Some(image.clone());
            prop_assert_eq!(check(&policy, &s, "x/unused:1").is_ok(), suffix.is_empty());
            // Unset: the operator's own image is what is checked.
            s.processors.image = None;
            prop_assert_eq!(check(&policy, &s, &image).is_ok(), suffix.is_empty());
        }

        /// A volume is allowed exactly when its type is in the list.
        #[test]
        fn volume_allowed_iff_type_listed(
            allowed in proptest::sample::subsequence(KNOWN_VOLUME_TYPES.to_vec(), 0..8),
            pick in 0usize..KNOWN_VOLUME_TYPES.len(),
        ) {
            let t = KNOWN_VOLUME_TYPES[pick];
            // The types whose source has no required field; the others are the same code path.
            let v: Result<Volume, _> = serde_json::from_value(serde_json::json!({"name": "v", t: {}}));
            prop_assume!(v.is_ok());
            let v = v.expect("volume");
            prop_assume!(volume_types(&v) == [t]);
            let policy = Policy::new(&["a/b".into()], false, &allowed.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).expect("policy");
            let mut s = spec();
            s.processors.image = Some("a/b:1".into());
            s.processors.join.pod_template.volumes = vec![v];
            prop_assert_eq!(check(&policy, &s, DEFAULT_IMAGE).is_ok(), allowed.contains(&t));
        }
    }
}
