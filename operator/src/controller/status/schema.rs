//! Status under an older CRD, pure: drop the fields the installed schema does not declare.
//!
//! Helm installs a chart's `crds/` once and never upgrades them, so an operator can run against
//! the CRD of an earlier chart version (a `helm upgrade` without the CRD step of
//! operator/README.md#upgrading, or a new `image.tag` on an old chart). Server-side apply then
//! refuses the whole status write (HTTP 500, "failed to create typed patch object …: .status.sink:
//! field not declared in schema"; `fieldValidation=Ignore` does not help), and the pipeline would
//! never show `Ready`. [`prune`] removes from the status what the installed schema lacks, as the
//! API server's structural pruning does for an update, so the write goes through with every field
//! the CRD knows; the caller warns with the list of dropped fields.
//!
//! The schema is an OpenAPI v3 schema object as the API server publishes it for the CRD
//! (`/openapi/v3/apis/<group>/<version>`, `components.schemas.<…>.properties.status`), which has
//! the shape of the CRD's `openAPIV3Schema`: `properties`, `items`, `additionalProperties`,
//! `x-kubernetes-preserve-unknown-fields`.

use serde_json::Value;

/// Removes from `value` every object field that `schema` does not declare, recursively, and
/// returns the JSON paths removed (`path` is the path of `value`, e.g. `.status`; array elements
/// add `[]`, map values `[*]`). Rules, from the structural schema of CustomResourceDefinitions:
/// - `x-kubernetes-preserve-unknown-fields: true`: the value and everything under it is kept;
/// - an object with `properties`: fields not among them are removed, the others pruned by their
///   own schema;
/// - an object with an `additionalProperties` schema (a map): each value pruned by it;
/// - an array with `items`: each element pruned by it;
/// - any other schema (a scalar, or one this function cannot read such as `$ref`): kept as is.
pub fn prune(value: &mut Value, schema: &Value, path: &str) -> Vec<String> {
    let mut dropped = Vec::new();
    prune_into(value, schema, path, &mut dropped);
    dropped
}

fn prune_into(value: &mut Value, schema: &Value, path: &str, dropped: &mut Vec<String>) {
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return;
    }
    match value {
        Value::Object(fields) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                fields.retain(|k, _| {
                    let keep = props.contains_key(k);
                    if !keep {
                        dropped.push(format!("{path}.{k}"));
                    }
                    keep
                });
                for (k, v) in fields.iter_mut() {
                    prune_into(v, &props[k], &format!("{path}.{k}"), dropped);
                }
            } else if let Some(each) = schema.get("additionalProperties").filter(|s| s.is_object())
            {
                for v in fields.values_mut() {
                    prune_into(v, each, &format!("{path}[*]"), dropped);
                }
            }
        }
        Value::Array(items) => {
            if let Some(each) = schema.get("items") {
                for v in items {
                    prune_into(v, each, &format!("{path}[]"), dropped);
                }
            }
        }
        _ => {}
    }
}

/// True when the API server's refusal of a server-side apply is the "field not declared in
/// schema" of an installed schema older than the object (see the module docs).
pub fn is_undeclared_field(code: u16, message: &str) -> bool {
    code == 500 && message.contains("field not declared in schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The shape of an older CRD's status: no `sink`, no `window.timeLagSeconds`.
    fn older() -> Value {
        json!({
            "type": "object",
            "properties": {
                "phase": {"type": "string"},
                "window": {"type": "object", "properties": {"ready": {"type": "integer"}}},
                "conditions": {"type": "array", "items": {"type": "object", "properties": {
                    "type": {"type": "string"}, "status": {"type": "string"}}}},
                "topics": {"type": "object", "additionalProperties": {"type": "object",
                    "properties": {"partitions": {"type": "integer"}}}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            }
        })
    }

    #[test]
    fn drops_exactly_the_undeclared_fields_at_every_depth() {
        let mut st = json!({
            "phase": "Running",
            "sink": {"ready": 1},
            "window": {"ready": 2, "timeLagSeconds": 3},
            "conditions": [{"type": "Ready", "status": "True", "observedAt": "x"}],
            "topics": {"a": {"partitions": 100, "owner": "me"}},
            "extra": {"anything": {"goes": 1}},
        });
        let dropped = prune(&mut st, &older(), ".status");
        assert_eq!(
            dropped,
            vec![
                ".status.sink",
                ".status.conditions[].observedAt",
                ".status.topics[*].owner",
                ".status.window.timeLagSeconds",
            ]
        );
        assert_eq!(
            st,
            json!({
                "phase": "Running",
                "window": {"ready": 2},
                "conditions": [{"type": "Ready", "status": "True"}],
                "topics": {"a": {"partitions": 100}},
                "extra": {"anything": {"goes": 1}},
            })
        );
    }

    #[test]
    fn a_status_the_schema_declares_is_untouched() {
        let st = json!({"phase": "Running", "window": {"ready": 2},
            "conditions": [{"type": "Ready", "status": "True"}], "topics": {}});
        let mut pruned = st.clone();
        assert!(prune(&mut pruned, &older(), ".status").is_empty());
        assert_eq!(pruned, st);
    }

    #[test]
    fn the_current_crd_declares_the_whole_status_the_operator_writes() {
        use crate::crd::SensorPipeline;
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(SensorPipeline::crd()).unwrap();
        let schema =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        // Every field set, so every one is serialised.
        let mut st = json!({
            "observedGeneration": 3, "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "m",
                "lastTransitionTime": "t", "observedGeneration": 3}],
            "totalLag": 1, "timeLagSeconds": 2, "deadLetterPerSecond": 0.5, "latePerSecond": 0.25,
            "topics": [{"name": "SZ", "partitions": 100}], "createdTopics": ["SZ"],
            "defaultNames": {"topicPrefix": "a", "groupPrefix": "b", "objectPrefix": "c"},
            "cleanupAttempts": 1,
        });
        let stage = json!({"replicas": 2, "readyReplicas": 1, "lag": 5, "timeLagSeconds": 6,
            "recordsInPerSecond": 7.5, "scaleDownPendingSince": "t",
            "notReadyPods": [{"pod": "p", "container": "c", "reason": "CrashLoopBackOff",
                "message": "m", "lastTerminationReason": "OOMKilled", "lastExitCode": 137,
                "restarts": 4}]});
        for s in ["window", "join", "sink"] {
            st[s] = stage.clone();
        }
        // It is what the operator's type writes, no more and no fewer fields.
        let typed: crate::crd::SensorPipelineStatus = serde_json::from_value(st.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), st);
        assert!(prune(&mut st, schema, ".status").is_empty());
    }

    #[test]
    fn recognises_the_api_servers_refusal() {
        let m = "failed to create typed patch object (t1/p; sensorflow.io/v1alpha1, \
                 Kind=SensorPipeline): .status.sink: field not declared in schema";
        assert!(is_undeclared_field(500, m));
        assert!(!is_undeclared_field(422, m));
        assert!(!is_undeclared_field(500, "etcdserver: request timed out"));
    }
}
