#!/usr/bin/env bash
# Checks of the Helm chart's values schema and its monitoring parts, without a cluster.
#
#   tests/chart/run.sh       everything below; exit 1 on any failure
#
# Steps: install what is missing (Helm, promtool built from the Go module once per cache,
# PyYAML, the Prometheus Operator's types from npm) → helm lint --strict with the default
# values and with every optional part on →
# what each values switch renders → the policy values in the operator's environment and the
# ValidatingAdmissionPolicy → bad values, each refused by helm lint and helm template
# with the message that names it (values.schema.json), or refused by helm template and logged
# by helm lint (the cross-field checks in _helpers.tpl: lint mode only logs a template's fail)
# → the ServiceMonitors and the PrometheusRule against the Prometheus Operator's
# monitoring.coreos.com/v1 types (tests/chart/models: tsc for unknown fields and types, the
# models' validate() for the CRD's required fields and patterns), and a typo that must be
# caught → the metric names the code registers (read from the Rust sources by tests/chart/check.py) →
# the PrometheusRule: its metrics registered, `promtool check rules`, and the alerts' unit tests
# (tests/chart/alerts.test.yaml, `promtool test rules`) which a loosened threshold fails → the
# Grafana dashboard: valid JSON of the expected shape, its metrics registered, its queries
# parsed by promtool → negative controls: an unregistered metric or a container that is not
# SensorFlow's (kube-state-metrics queries) is caught. Prints
# "chart: N passed, M failed". Every helm and promtool call runs under a timeout.
#
# Env: SENSORFLOW_CACHE (tools), PROMETHEUS_MODULE_VERSION (tests/cluster/tools.sh).
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
cd "$REPO_ROOT"
work="$REPO_ROOT/.sensorflow/chart-tests"
chart="charts/sensorflow-operator"
rm -rf "$work"
mkdir -p "$work"

# --- prerequisites (each cached after the first run) ---
helm_bin="$(timeout 600 "$REPO_ROOT/tests/cluster/tools.sh" helm)"
# Without promtool the helm checks still run, and each promtool check fails.
promtool_bin="$(timeout 1800 "$REPO_ROOT/tests/cluster/tools.sh" promtool)" \
  || { log "promtool could not be built: its checks fail"; promtool_bin=""; }
# check.py reads the rendered chart with PyYAML: the system Python's, else a venv's.
python=python3
if ! "$python" -c 'import yaml' 2>/dev/null; then
  venv="$SENSORFLOW_CACHE/venv-chart"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/chart/requirements.txt
  python="$venv/bin/python"
fi
# The Prometheus Operator's v1 types (npm: @kubernetes-models/prometheus-operator and
# TypeScript, pinned by tests/chart/models/package-lock.json), installed once per lockfile.
models_dir() {
  local key dir
  key="$(cat tests/chart/models/package.json tests/chart/models/package-lock.json | sha256sum | cut -c1-12)"
  dir="$SENSORFLOW_CACHE/chart-models-$key"
  if [ ! -x "$dir/node_modules/.bin/tsc" ]; then
    command -v npm >/dev/null || apt_install nodejs npm
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    cp tests/chart/models/package.json tests/chart/models/package-lock.json "$dir.tmp/"
    (cd "$dir.tmp" && timeout 600 npm ci --no-audit --no-fund --silent >&2) || return 1
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}
models="$(models_dir)" || { log "the Prometheus Operator models could not be installed: their check fails"; models=""; }
h() { timeout 60 "$helm_bin" "$@"; }
promtool() { [ -n "$promtool_bin" ] && timeout 60 "$promtool_bin" "$@"; }
check() { timeout 60 "$python" tests/chart/check.py "$@"; }
# Every optional part on, in the RBAC mode that lists namespaces.
all_on=(--set monitoring.serviceMonitor.enabled=true --set monitoring.prometheusRule.enabled=true
        --set monitoring.grafanaDashboard.enabled=true --set replicaCount=2
        --set 'watch.namespaces={team-a,team-b}')
render() { h template sensorflow "$chart" -n sensorflow-system "$@"; }

# --- steps ---
lint_default() { h lint --strict "$chart"; }
lint_all_on() {
  h lint --strict "$chart" "${all_on[@]}" \
    && h lint --strict "$chart" "${all_on[@]}" --set watch.clusterWide=true \
         --set monitoring.grafanaDashboard.namespace=monitoring \
         --set monitoring.prometheusRule.additionalAlertLabels.team=data \
         --set monitoring.serviceMonitor.labels.release=kube-prometheus-stack \
         --set image.tag=20261207 --set monitoring.prometheusRule.alerts.deadLetterRate.ratio=0.05
}
# kinds FILE: the "kind name" of every object in a rendered file, sorted.
kinds() { awk '/^kind: /{k=$2} /^  name: /{if (k) print k, $2; k=""}' "$1" | sort; }
switches_render() {
  local ok=0 f="$work/default.yaml" a="$work/all-on.yaml" c="$work/cluster-wide.yaml"
  render > "$f" && render "${all_on[@]}" > "$a" \
    && render "${all_on[@]}" --set watch.clusterWide=true > "$c" || return 1
  ! grep -qE '^kind: (ServiceMonitor|PrometheusRule)$|grafana_dashboard' "$f" \
    || { log "the default values render monitoring objects"; ok=1; }
  [ "$(kinds "$a" | grep -cE '^(ServiceMonitor|PrometheusRule) ')" = 3 ] \
    || { log "all on: expected 2 ServiceMonitors and 1 PrometheusRule: $(kinds "$a" | tr '\n' ' ')"; ok=1; }
  grep -q 'grafana_dashboard: "1"' "$a" || { log "all on: no ConfigMap labelled for the Grafana sidecar"; ok=1; }
  # The processors' ServiceMonitor selects the watched namespaces, or every one cluster-wide.
  grep -A3 'namespaceSelector' "$a" | grep -q '"team-b"' || { log "processors not looked for in team-b"; ok=1; }
  grep -A1 'namespaceSelector' "$c" | grep -q 'any: true' || { log "cluster-wide: namespaceSelector not any"; ok=1; }
  # The ConfigMap carries the dashboard file unchanged.
  "$python" - "$a" "$chart/dashboards/sensorflow.json" <<'EOF' || ok=1
import sys, yaml
cms = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "ConfigMap"]
got = [cm["data"]["sensorflow.json"] for cm in cms if "sensorflow.json" in cm.get("data", {})]
want = open(sys.argv[2]).read().rstrip("\n")
sys.exit(0 if got == [want] else "the dashboard ConfigMap does not hold dashboards/sensorflow.json")
EOF
  return $ok
}
# env_value FILE NAME: the value of the operator's environment variable NAME in a rendered FILE.
env_value() { grep -A1 -- "- name: $2\$" "$1" | sed -n 's/^ *value: //p' | head -1; }
policy_renders() {
  # The policy values become the operator's environment and, with policy.admission.enabled,
  # a ValidatingAdmissionPolicy + binding carrying the same policy for the watched namespaces.
  local ok=0 d="$work/policy"
  mkdir -p "$d"
  render > "$d/default.yaml" \
    && render --set image.repository=registry.example/team/sensorflow > "$d/own-image.yaml" \
    && render --set 'policy.allowedImageRepositories={a/b,registry:5000/c/d}' --set policy.allowServiceAccountName=true \
         --set 'policy.allowedVolumeTypes={emptyDir,hostPath}' --set 'watch.namespaces={team-a,team-b}' > "$d/wide.yaml" \
    && render --set watch.clusterWide=true > "$d/cluster.yaml" \
    && render --set policy.admission.enabled=false > "$d/off.yaml" \
    && render --set 'policy.allowedImageRepositories={*}' --set policy.allowServiceAccountName=true \
         --set 'policy.allowedVolumeTypes={awsElasticBlockStore,azureDisk,azureFile,cephfs,cinder,configMap,csi,downwardAPI,emptyDir,ephemeral,fc,flexVolume,flocker,gcePersistentDisk,gitRepo,glusterfs,hostPath,image,iscsi,nfs,persistentVolumeClaim,photonPersistentDisk,portworxVolume,projected,quobyte,rbd,scaleIO,secret,storageos,vsphereVolume}' \
         > "$d/open.yaml" || return 1
  [ "$(env_value "$d/default.yaml" SF_OPERATOR_ALLOWED_IMAGE_REPOSITORIES)" = '"sensorflow/sensorflow"' ] || { log "default: allowed repositories not image.repository"; ok=1; }
  [ "$(env_value "$d/own-image.yaml" SF_OPERATOR_ALLOWED_IMAGE_REPOSITORIES)" = '"registry.example/team/sensorflow"' ] || { log "allowed repositories do not follow image.repository"; ok=1; }
  # Pipelines without processors.image run the operator's own image, tag default appVersion.
  local app; app="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$chart/Chart.yaml")"
  [ "$(env_value "$d/default.yaml" SF_OPERATOR_PROCESSOR_IMAGE)" = "\"sensorflow/sensorflow:$app\"" ] || { log "default: processor image not the operator's"; ok=1; }
  [ "$(env_value "$d/own-image.yaml" SF_OPERATOR_PROCESSOR_IMAGE)" = "\"registry.example/team/sensorflow:$app\"" ] || { log "processor image does not follow image.repository"; ok=1; }
  [ "$(env_value "$d/own-image.yaml" SF_OPERATOR_PROCESSOR_IMAGE)" = "$(grep -m1 '^ *image: "' "$d/own-image.yaml" | sed 's/^ *image: //')" ] || { log "processor image is not the operator container's image"; ok=1; }
  [ "$(env_value "$d/default.yaml" SF_OPERATOR_ALLOW_SERVICE_ACCOUNT_NAME)" = '"false"' ] || { log "default: serviceAccountName allowed"; ok=1; }
  [ "$(env_value "$d/default.yaml" SF_OPERATOR_ALLOWED_VOLUME_TYPES)" = '"secret,configMap,emptyDir,persistentVolumeClaim,csi,projected"' ] || { log "default: volume types"; ok=1; }
  [ "$(env_value "$d/wide.yaml" SF_OPERATOR_ALLOWED_IMAGE_REPOSITORIES)" = '"a/b,registry:5000/c/d"' ] || { log "wide: repositories"; ok=1; }
  [ "$(env_value "$d/wide.yaml" SF_OPERATOR_ALLOW_SERVICE_ACCOUNT_NAME)" = '"true"' ] || { log "wide: serviceAccountName"; ok=1; }
  [ "$(env_value "$d/wide.yaml" SF_OPERATOR_ALLOWED_VOLUME_TYPES)" = '"emptyDir,hostPath"' ] || { log "wide: volume types"; ok=1; }
  echo "$app" > "$d/app"
  "$python" - "$d" <<'PY' || ok=1
import sys, yaml
d = sys.argv[1]
def objs(name):
    return {o["kind"]: o for o in yaml.safe_load_all(open(f"{d}/{name}.yaml")) if o}
problems = []
def check(cond, what):
    if not cond:
        problems.append(what)
default, wide, cluster, off, opened = (objs(n) for n in ("default", "wide", "cluster", "off", "open"))
vap = default.get("ValidatingAdmissionPolicy")
check(vap is not None and "ValidatingAdmissionPolicyBinding" in default, "default: no admission policy and binding")
if vap:
    exprs = [v["expression"] for v in vap["spec"]["validations"]]
    check(any("variables.repository in ['sensorflow/sensorflow']" == e for e in exprs), f"default: image rule {exprs}")
    # An unset processors.image is checked as the operator's own image (what the operator runs).
    image_var = [v["expression"] for v in vap["spec"]["variables"] if v["name"] == "image"]
    check(len(image_var) == 1 and image_var[0].endswith(": 'sensorflow/sensorflow:" + open(f"{d}/app").read().strip() + "'"),
          f"default: the unset image is not the operator's: {image_var}")
    check(sum("serviceAccountName" in e for e in exprs) == 3, "default: a serviceAccountName rule per pod template")
    vol = [e for e in exprs if "volumes.all" in e]
    check(len(vol) == 3 and all("!has(v.hostPath)" in e and "!has(v.nfs)" in e and "has(v.secret)" not in e
                                and "has(v.configMap)" not in e for e in vol), f"default: volume rules {vol}")
    b = default["ValidatingAdmissionPolicyBinding"]["spec"]
    check(b["policyName"] == vap["metadata"]["name"] and b["validationActions"] == ["Deny"], "default: binding")
    check(b["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"] == ["sensorflow-system"],
          "default: binding not limited to the release namespace")
w = wide.get("ValidatingAdmissionPolicy")
if w:
    exprs = [v["expression"] for v in w["spec"]["validations"]]
    check(not any("serviceAccountName" in e for e in exprs), "wide: serviceAccountName still refused")
    check(any("['a/b','registry:5000/c/d']" in e for e in exprs), f"wide: image rule {exprs}")
    check(all("has(v.hostPath)" not in e and "has(v.emptyDir)" not in e for e in exprs), "wide: hostPath refused")
    check(wide["ValidatingAdmissionPolicyBinding"]["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"]
          == ["team-a", "team-b"], "wide: binding namespaces")
else:
    check(False, "wide: no admission policy")
check("matchResources" not in cluster.get("ValidatingAdmissionPolicyBinding", {"spec": {"matchResources": 1}})["spec"],
      "cluster-wide: binding limited to namespaces")
check("ValidatingAdmissionPolicy" not in off and "ValidatingAdmissionPolicyBinding" not in off, "admission.enabled=false renders a policy")
check("ValidatingAdmissionPolicy" not in opened, "a policy that refuses nothing renders an admission policy")
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
  return $ok
}
# refused MESSAGE ARGS...: helm lint and helm template both refuse the values ARGS, and both
# say MESSAGE (the schema's refusals).
refused() { refused_by_template "$@" && refused_by_lint "$@"; }
# refused_by_template MESSAGE ARGS...: helm template (as helm install) refuses ARGS saying
# MESSAGE. The cross-field checks of _helpers.tpl are `fail`s, which Helm's lint mode turns into
# a log line: for those, helm lint only has to print MESSAGE.
refused_by_template() { refused_by template "$@"; }
refused_by_lint() { refused_by lint "$@"; }
# refused_by template|lint MESSAGE ARGS...: that helm command refuses the values ARGS saying
# MESSAGE.
refused_by() {
  local cmd="$1" expect="$2"; shift 2
  local out; local -a call
  case "$cmd" in
    template) call=(template sensorflow "$chart") ;;
    lint) call=(lint --strict "$chart") ;;
    *) die "refused_by: unknown helm command $cmd" ;;
  esac
  if out="$(h "${call[@]}" "$@" 2>&1)"; then
    log "helm $cmd accepted $*"; return 1
  fi
  grep -qF -- "$expect" <<<"$out" || { log "helm $cmd refused $* without '$expect': $out"; return 1; }
}
logged_by_lint() {
  local expect="$1"; shift
  local out
  out="$(h lint --strict "$chart" "$@" 2>&1 || true)"
  grep -qF -- "$expect" <<<"$out" || { log "helm lint did not say '$expect' for $*: $out"; return 1; }
}
refused_cross_field() { refused_by_template "$@" && logged_by_lint "$@"; }
metrics_from_code() {
  check metrics > "$work/registered.tsv" || return 1
  # The names the runtime's own exposition test asserts must be among them.
  local n ok=0
  for n in sensorflow_records_in_total sensorflow_records_out_total sensorflow_late_total \
      sensorflow_consumer_lag sensorflow_end_to_end_latency_seconds_bucket \
      sensorflow_sink_rows_total sensorflow_operator_stage_replicas; do
    grep -q "^$n	" "$work/registered.tsv" || { log "$n not found in the code"; ok=1; }
  done
  log "$(wc -l < "$work/registered.tsv") exposition names registered by the code ($work/registered.tsv)"
  return $ok
}
monitoring_objects() {
  # OUT_DIR: the ServiceMonitors (listed namespaces and cluster-wide) and the PrometheusRule,
  # checked by tests/chart/models/check-objects.mjs in OUT_DIR.
  local d="$1"
  [ -n "$models" ] || return 1
  mkdir -p "$d" && ln -sfn "$models/node_modules" "$d/node_modules" \
    && cp tests/chart/models/check-objects.mjs "$d/"
}
objects_typed() {
  local d="$work/objects"
  monitoring_objects "$d" \
    && { render "${all_on[@]}"; echo "---"; render "${all_on[@]}" --set watch.clusterWide=true; } > "$d/rendered.yaml" \
    && check objects "$d/rendered.yaml" "$d/objects.json" \
    && timeout 180 node "$d/check-objects.mjs" "$d/objects.json" "$d"
}
objects_typo_caught() {
  # Negative control: a misspelt field (which the API server would silently prune) and a wrong
  # type are each reported, one object file each (tsc reports one error per literal).
  local d="$work/objects-bad" out ok=0
  monitoring_objects "$d" && [ -f "$work/objects/objects.json" ] || return 1
  sed '0,/"scrapeTimeout"/s//"scrapeTimout"/' "$work/objects/objects.json" > "$d/objects.json"
  if out="$(timeout 180 node "$d/check-objects.mjs" "$d/objects.json" "$d" 2>&1)"; then
    log "a ServiceMonitor with scrapeTimout passed"; ok=1
  else
    grep -q "'\"scrapeTimout\"' does not exist in type 'IEndpoint'" <<<"$out" || { log "scrapeTimout not reported: $out"; ok=1; }
  fi
  sed '0,/"honorLabels": true/s//"honorLabels": "yes"/' "$work/objects/objects.json" > "$d/objects.json"
  if out="$(timeout 180 node "$d/check-objects.mjs" "$d/objects.json" "$d" 2>&1)"; then
    log "a ServiceMonitor with honorLabels: \"yes\" passed"; ok=1
  else
    grep -q 'honorLabels must be boolean' <<<"$out" || { log "honorLabels type not reported: $out"; ok=1; }
  fi
  return $ok
}
rules_metrics() {
  render --set monitoring.prometheusRule.enabled=true \
      --set monitoring.prometheusRule.additionalAlertLabels.team=data > "$work/rule.yaml" \
    && check rules "$work/rule.yaml" "$work/rules.json" "$work/alerts.rules.json"
}
rules_promtool() { promtool check rules --lint=all --lint-fatal "$work/rules.json"; }
alerts_unit_tests() {
  cp tests/chart/alerts.test.yaml "$work/" && promtool test rules "$work/alerts.test.yaml"
}
alerts_tests_discriminate() {
  # The alert tests must fail when a threshold or a hold time is loosened or tightened: each
  # mutant chart is rendered, and promtool test rules has to refuse it.
  local mutant ok=0 d="$work/mutant"
  mkdir -p "$d" && cp tests/chart/alerts.test.yaml "$d/"
  for mutant in monitoring.prometheusRule.alerts.deadLetterRate.ratio=0.1 \
      monitoring.prometheusRule.alerts.consumerLagGrowing.for=5m \
      monitoring.prometheusRule.alerts.crashLooping.restarts=100 \
      monitoring.prometheusRule.alerts.transactionsAborted.count=2; do
    render --set monitoring.prometheusRule.enabled=true \
        --set monitoring.prometheusRule.additionalAlertLabels.team=data --set "$mutant" > "$d/rule.yaml" \
      && check rules "$d/rule.yaml" "$d/rules.json" "$d/alerts.rules.json" >/dev/null || return 1
    # Refused as a failed expectation (promtool prints FAILED: and the alert), not as an error.
    if promtool test rules "$d/alerts.test.yaml" >"$d/out.txt" 2>&1; then
      log "the alert tests pass with $mutant"; ok=1
    elif ! grep -q 'alertname: SensorFlow' "$d/out.txt"; then
      log "with $mutant promtool failed without a failed expectation: $(cat "$d/out.txt")"; ok=1
    fi
  done
  return $ok
}
dashboard_metrics() { check dashboard "$chart/dashboards/sensorflow.json" "$work/dashboard.rules.json"; }
dashboard_promtool() { promtool check rules --lint=none "$work/dashboard.rules.json"; }
unregistered_caught() {
  # Negative controls: a counter queried without its _total suffix (dashboard), a container
  # name that is not SensorFlow's (dashboard) and a metric that does not exist (rules) are each
  # reported by name.
  local out ok=0
  sed 's/sensorflow_late_total/sensorflow_late/' "$chart/dashboards/sensorflow.json" > "$work/bad-dashboard.json"
  if out="$(check dashboard "$work/bad-dashboard.json" "$work/bad.rules.json" 2>&1)"; then
    log "a dashboard querying sensorflow_late passed"; ok=1
  else
    grep -q 'sensorflow_late is not a metric the code registers (a counter: sensorflow_late_total)' <<<"$out" \
      || { log "unexpected refusal: $out"; ok=1; }
  fi
  sed 's/join-predict|gcs-sink/join-predictor|gcs-sink/' "$chart/dashboards/sensorflow.json" > "$work/bad-dashboard.json"
  if out="$(check dashboard "$work/bad-dashboard.json" "$work/bad.rules.json" 2>&1)"; then
    log "a dashboard selecting container join-predictor passed"; ok=1
  else
    grep -q "container 'join-predictor' is none of SensorFlow's" <<<"$out" || { log "unexpected refusal: $out"; ok=1; }
  fi
  sed 's/sensorflow_transactions_aborted_total/sensorflow_transaction_aborts_total/' "$work/rule.yaml" > "$work/bad-rule.yaml"
  if out="$(check rules "$work/bad-rule.yaml" "$work/bad.rules.json" 2>&1)"; then
    log "a rule on sensorflow_transaction_aborts_total passed"; ok=1
  else
    grep -q 'sensorflow_transaction_aborts_total is not a metric the code registers' <<<"$out" \
      || { log "unexpected refusal: $out"; ok=1; }
  fi
  return $ok
}

step "helm lint --strict (default values)" lint_default
step "helm lint --strict (ServiceMonitors, PrometheusRule, dashboard, HA; listed and cluster-wide namespaces; numbers as --set gives them)" lint_all_on
step "each monitoring switch renders its objects, and only when on" switches_render
sm=monitoring.serviceMonitor
alerts=monitoring.prometheusRule.alerts
step "refused: negative replicaCount" refused "minimum: got -1, want 0" --set replicaCount=-1
step "refused: unknown key (a typo)" refused "additional properties 'replicaCont' not allowed" --set replicaCont=2
step "refused: image.pullPolicy outside its enum" refused "value must be one of 'Always', 'IfNotPresent', 'Never'" --set image.pullPolicy=Sometimes
step "refused: metrics.port out of range" refused "maximum: got 70,000, want 65,535" --set metrics.port=70000
step "refused: logJson not a boolean" refused "got string, want boolean" --set logJson=yes
step "refused: a namespace name that is not a DNS label" refused "does not match pattern" --set 'watch.namespaces={Team_A}'
step "refused: a resource quantity Kubernetes cannot parse" refused "'lots' does not match pattern" --set resources.limits.memory=lots
step "refused: scrape interval without a unit" refused "got number, want string" --set $sm.interval=30
step "refused: scrape interval not a Prometheus duration" refused "'30sec' does not match pattern" --set $sm.interval=30sec
step "refused: an alert's for not a Prometheus duration" refused "'soon' does not match pattern" --set $alerts.consumerLagGrowing.for=soon
step "refused: an alert severity outside its enum" refused "value must be one of 'critical', 'warning', 'info'" --set $alerts.crashLooping.severity=page
step "refused: dead-letter ratio above 1" refused "at '/monitoring/prometheusRule/alerts/deadLetterRate/ratio'" --set $alerts.deadLetterRate.ratio=1.5
step "policy values render into the operator's environment and the ValidatingAdmissionPolicy" policy_renders
step "refused: an allowed image repository with a tag" refused "does not match pattern" --set 'policy.allowedImageRepositories={sensorflow/sensorflow:0.1.0}'
step "refused: a volume type Kubernetes does not have" refused "value must be one of 'awsElasticBlockStore'" --set 'policy.allowedVolumeTypes={configmap}'
step "refused: allowServiceAccountName not a boolean" refused "got string, want boolean" --set-string policy.allowServiceAccountName=yes
step "refused at render: retryPeriodSeconds not below renewDeadlineSeconds" refused_cross_field "leaderElection.retryPeriodSeconds (10) must be less than leaderElection.renewDeadlineSeconds (10)" --set leaderElection.retryPeriodSeconds=10
step "refused at render: ServiceMonitor without the metrics Service" refused_cross_field "monitoring.serviceMonitor.enabled needs metrics.service.enabled" --set $sm.enabled=true --set metrics.service.enabled=false
step "ServiceMonitors and PrometheusRule match the Prometheus Operator's v1 types (tsc, validate)" objects_typed
step "negative control: a misspelt or mistyped ServiceMonitor field is caught" objects_typo_caught
step "metric names read from the code (registration sites, prefixes, _total)" metrics_from_code
step "PrometheusRule: every metric is one the code registers" rules_metrics
step "PrometheusRule: promtool check rules --lint=all" rules_promtool
step "alerts fire on their series and not on look-alikes (promtool test rules)" alerts_unit_tests
step "the alert tests fail on a loosened or tightened threshold" alerts_tests_discriminate
step "dashboard: valid JSON, panels on the grid, every metric one the code registers" dashboard_metrics
step "dashboard: every query parses (promtool check rules)" dashboard_promtool
step "negative controls: an unregistered metric or a wrong container name is caught" unregistered_caught

suite_summary chart
