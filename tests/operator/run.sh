#!/usr/bin/env bash
# Operator tests against a REAL kube-apiserver and a real Apache Kafka broker (scripts/broker.sh).
#
#   tests/operator/run.sh            everything below, then tear down; exit 1 on any failure
#
# Steps: build/install what is missing (k8s binaries, Kafka jars, helm, kubernetes-validate) →
# start the broker and the control plane (fresh state) → unit tests → CRD up to date → install
# the CRD → CEL refusals (tests/operator/cel/) → scenario tests (operator/tests/scenarios*.rs) → status under the
# previous chart's CRD (operator/tests/older_crd.rs) → helm lint / template |
# kubernetes-validate / install → the chart's admission policy (tests/operator/admission/) → RBAC checks (namespaced default, cluster-wide opt-in) → the
# operator under the chart's RBAC → teardown. Prints one summary line
# "operator: N passed, M failed". Every kubectl/helm call has a timeout (k/h below), so no step
# can hang; the scenarios have their own deadlines and a whole-run timeout.
#
# Env: SENSORFLOW_OPERATOR_BROKER_PORT (default 19192), SENSORFLOW_K8S_PORT (default 16443),
# SENSORFLOW_ETCD_PORT (12379), SENSORFLOW_KCM_PORT (10357), SF_TEST_PORT_OFFSET (added to the
# operators' metrics ports 18181–18198, default 0: two runs side by side), KEEP=1 to leave
# broker and control plane running afterwards.
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
. "$REPO_ROOT/scripts/rust-env.sh"
cd "$REPO_ROOT"
work="$REPO_ROOT/.sensorflow/operator-tests"
broker_dir="$work/broker"
k8s_dir="$work/k8s"
logs="$work/logs"
export SENSORFLOW_BROKER_PORT="${SENSORFLOW_OPERATOR_BROKER_PORT:-19192}"

# The processes this script starts itself are recorded in pids (tests/lib/suite.sh) and
# stopped by PID on exit; the broker and the control plane by their own scripts.
teardown() {
  stop_pids
  if [ "${KEEP:-0}" = 1 ]; then
    log "KEEP=1: broker ($broker_dir) and control plane ($k8s_dir) left running"
    return
  fi
  "$REPO_ROOT/tests/cluster/control-plane.sh" down "$k8s_dir" || true
  "$REPO_ROOT/scripts/broker.sh" stop "$broker_dir" || true
}
trap teardown EXIT

# --- prerequisites (each cached after the first run) ---
mkdir -p "$work"
kbin="$("$REPO_ROOT/tests/cluster/build-k8s.sh")"
kubectl_bin="$kbin/kubectl"
# kubectl and helm never wait forever: a per-request timeout and a kill timer on the whole call.
k() { timeout 90 "$kubectl_bin" --request-timeout=30s "$@"; }
h() { timeout 180 "$helm" "$@"; }
kubectl="$kbin/kubectl"
helm="$("$REPO_ROOT/tests/cluster/tools.sh" helm)"
kvalidate="$("$REPO_ROOT/tests/cluster/tools.sh" kubernetes-validate)"
apt_install curl
"$REPO_ROOT/scripts/install-kafka.sh" >/dev/null

# --- fresh broker and control plane ---
"$REPO_ROOT/tests/cluster/control-plane.sh" down "$k8s_dir" >/dev/null 2>&1 || true
"$REPO_ROOT/scripts/broker.sh" stop "$broker_dir" >/dev/null 2>&1 || true
# Fresh credentials too: a process left over from an interrupted run cannot talk to this cluster.
rm -rf "$broker_dir" "$k8s_dir" "$logs"
mkdir -p "$logs"
bootstrap="$("$REPO_ROOT/scripts/broker.sh" start "$broker_dir")"
export KUBECONFIG; KUBECONFIG="$("$REPO_ROOT/tests/cluster/control-plane.sh" up "$k8s_dir")"
export SF_TEST_BOOTSTRAP="$bootstrap" SF_TEST_KUBECTL="$kubectl" SF_TEST_LOG_DIR="$logs"
# The broker's SASL_SSL listener (bootstrap, SCRAM-SHA-512 and PLAIN users, test CA), which the
# secured-listener scenarios put into Secrets.
export SF_TEST_SASL_ENV="$broker_dir/sasl.env"
log "broker $bootstrap, kubeconfig $KUBECONFIG, logs $logs"

# --- steps ---
build_tests() {
  cargo build --profile "$SENSORFLOW_CARGO_PROFILE" -q -p sensorflow-operator --bins --tests
}
unit_tests() {
  cargo test --profile "$SENSORFLOW_CARGO_PROFILE" -q -p sensorflow-operator --lib --bins
}
crd_up_to_date() {
  cargo run --profile "$SENSORFLOW_CARGO_PROFILE" -q -p sensorflow-operator --bin crdgen > crds/sensorpipelines.yaml \
    && git diff --exit-code -- crds/ \
    && cmp crds/sensorpipelines.yaml charts/sensorflow-operator/crds/sensorpipelines.yaml \
    || { log "crds/ is stale: regenerate with 'cargo run -p sensorflow-operator --bin crdgen > crds/sensorpipelines.yaml' and copy it to charts/sensorflow-operator/crds/"; return 1; }
}
install_crd() {
  k apply --server-side -f crds/sensorpipelines.yaml >/dev/null \
    && wait_crd_established 30 k \
    && ! k get crd sensorpipelines.sensorflow.io -o jsonpath='{.status.conditions[*].type}' | grep -q NonStructuralSchema
}
example_server_dry_run() {
  k apply --dry-run=server -f examples/sensorpipeline.yaml
}
cel_rules_refuse() {
  # Every cross-field CEL rule of the CRD, tried against the real API server: valid.yaml is
  # accepted, each refuse-*.yaml is refused with its rule's message (its "# expect:" line).
  local ok=0 f expect out n=0
  k create namespace sf-cel >/dev/null || return 1
  k -n sf-cel apply -f tests/operator/cel/valid.yaml >/dev/null || { log "valid.yaml refused"; return 1; }
  for f in tests/operator/cel/refuse-*.yaml; do
    expect="$(sed -n 's/^# expect: //p' "$f")"
    [ -n "$expect" ] || { log "$f has no '# expect:' line"; ok=1; continue; }
    if out="$(k -n sf-cel apply -f "$f" 2>&1)"; then
      log "$f was accepted"; ok=1
    elif ! grep -qF -- "$expect" <<<"$out"; then
      log "$f refused without the rule's message '$expect': $out"; ok=1
    else
      n=$((n + 1))
    fi
  done
  log "$n manifests refused by CEL with the rule's message"
  k delete namespace sf-cel --wait=false >/dev/null
  return $ok
}
older_crd() {
  # The CRD of the previous chart version (as e2e scenario 1 installs it), a scenario under it,
  # then this version's CRD again whatever the outcome.
  local prev="$work/previous-chart" rc=0
  rm -rf "$prev" && mkdir -p "$prev" \
    && tar -xzf tests/e2e/previous-chart-40ff2cd.tar.gz -C "$prev" charts/sensorflow-operator/crds/sensorpipelines.yaml \
    && k apply --server-side --force-conflicts -f "$prev/charts/sensorflow-operator/crds/sensorpipelines.yaml" >/dev/null \
    && wait_crd_established 30 k || return 1
  timeout 600 cargo test --profile "$SENSORFLOW_CARGO_PROFILE" -p sensorflow-operator --test older_crd -- --include-ignored --test-threads=1 2>&1 \
    | tee "$logs/older-crd.log"
  rc="${PIPESTATUS[0]}"
  install_crd || rc=1
  return "$rc"
}
scenarios() {
  timeout 2400 cargo test --profile "$SENSORFLOW_CARGO_PROFILE" -p sensorflow-operator --no-fail-fast --test 'scenarios*' -- --include-ignored --test-threads=1 2>&1 \
    | tee "$logs/scenarios.log"
  return "${PIPESTATUS[0]}"
}
helm_lint() {
  h lint --strict charts/sensorflow-operator \
    && h lint --strict charts/sensorflow-operator --set watch.clusterWide=true \
    && h lint --strict charts/sensorflow-operator --set 'watch.namespaces={a,b}'
}
helm_validate() {
  h template sensorflow charts/sensorflow-operator --include-crds -n sensorflow-system > "$logs/rendered.yaml" \
    && "$kvalidate" --strict -k 1.30.0 --quiet "$logs/rendered.yaml" \
    && h template sensorflow charts/sensorflow-operator -n sensorflow-system \
         --set replicaCount=2 --set leaderElection.enabled=false --set metrics.service.enabled=false \
         --set watch.clusterWide=true > "$logs/rendered-ha.yaml" \
    && "$kvalidate" --strict -k 1.30.0 --quiet "$logs/rendered-ha.yaml" \
    && h template sensorflow charts/sensorflow-operator -n sensorflow-system \
         --set 'watch.namespaces={team-a,team-b}' > "$logs/rendered-ns.yaml" \
    && "$kvalidate" --strict -k 1.30.0 --quiet "$logs/rendered-ns.yaml" \
    && grep -q 'readOnlyRootFilesystem: true' "$logs/rendered.yaml" \
    && grep -q 'runAsNonRoot: true' "$logs/rendered.yaml" \
    && ! grep -q '^kind: ClusterRole' "$logs/rendered.yaml" \
    && grep -q '^kind: ClusterRole$' "$logs/rendered-ha.yaml" \
    && [ "$(grep -c '^kind: Role$' "$logs/rendered-ns.yaml")" = 3 ] \
    && grep -A1 'SF_OPERATOR_WATCH_NAMESPACES' "$logs/rendered-ns.yaml" | grep -q '"team-a,team-b"' \
    && grep -q '^kind: ValidatingAdmissionPolicy$' "$logs/rendered.yaml" \
    && grep -q '^kind: ValidatingAdmissionPolicyBinding$' "$logs/rendered.yaml" \
    && grep -A1 'SF_OPERATOR_ALLOWED_IMAGE_REPOSITORIES' "$logs/rendered.yaml" | grep -q '"sensorflow/sensorflow"'
}
helm_install() {
  # Fresh API server: Helm installs the CRD from the chart's crds/ (and keeps it on uninstall).
  h install sensorflow charts/sensorflow-operator -n sensorflow-system --create-namespace \
      --set replicaCount=2 --timeout 120s >/dev/null \
    && h status sensorflow -n sensorflow-system >/dev/null \
    && k -n sensorflow-system get deployment sensorflow-sensorflow-operator >/dev/null \
    && k -n sensorflow-system get serviceaccount/sensorflow-sensorflow-operator \
         service/sensorflow-sensorflow-operator-metrics role/sensorflow-sensorflow-operator-leader \
         rolebinding/sensorflow-sensorflow-operator-leader role/sensorflow-sensorflow-operator \
         rolebinding/sensorflow-sensorflow-operator >/dev/null \
    && ! k get clusterrole/sensorflow-sensorflow-operator >/dev/null 2>&1 \
    && k get crd/sensorpipelines.sensorflow.io >/dev/null \
    && h uninstall sensorflow -n sensorflow-system --timeout 120s >/dev/null
}

# admission_refuses NS FILE: kubectl apply of FILE in NS is refused with its "# expect:" text.
admission_refuses() {
  local ns="$1" f="$2" expect out
  expect="$(sed -n 's/^# expect: //p' "$f")"
  [ -n "$expect" ] || { log "$f has no '# expect:' line"; return 1; }
  out="$(k -n "$ns" apply -f "$f" 2>&1)" && { k -n "$ns" delete -f "$f" --wait=false >/dev/null 2>&1; return 1; }
  grep -qF -- "$expect" <<<"$out" || { log "$f refused without '$expect': $out"; return 1; }
}
vap_name=sensorflow-sensorflow-operator-sensorflow-system
vap_type_checked() {
  [ "$(k get validatingadmissionpolicy $vap_name -o jsonpath='{.status.observedGeneration}')" \
    = "$(k get validatingadmissionpolicy $vap_name -o jsonpath='{.metadata.generation}')" ]
}
admission_policy() {
  # The chart's ValidatingAdmissionPolicy (tests/operator/admission/README.md): installed for
  # sf-vap, it type-checks without warnings, refuses each escalation there with its message,
  # accepts the compliant manifest, lets the operator's own metadata updates of a pipeline
  # stored before it through (finalizers) but not a spec change, leaves unwatched namespaces
  # alone, and widens with the values.
  local ns=sf-vap other=sf-vap-other ok=0 f warnings
  k create namespace $ns >/dev/null && k create namespace $other >/dev/null || return 1
  # A pipeline stored before the policy (another repository's image).
  printf '%s\n' "apiVersion: sensorflow.io/v1alpha1" "kind: SensorPipeline" "metadata: {name: vap-before}" \
    "spec: {kafka: {bootstrapServers: \"kafka:9092\"}, processors: {image: \"sensorflow/sensorflow-evil:0.1.0\"}}" \
    | k -n $ns apply -f - >/dev/null || { log "could not store a pipeline before the policy"; return 1; }
  h install sensorflow charts/sensorflow-operator -n sensorflow-system --create-namespace --timeout 120s \
      --set 'watch.namespaces={sf-vap}' >/dev/null || return 1
  wait_for 30 0.5 vap_type_checked || { log "the admission policy was not type-checked"; ok=1; }
  warnings="$(k get validatingadmissionpolicy $vap_name -o jsonpath='{.status.typeChecking.expressionWarnings}')"
  [ -z "$warnings" ] || { log "type-check warnings: $warnings"; ok=1; }
  # The binding takes effect within a moment of its creation.
  wait_for 30 0.5 admission_refuses $ns tests/operator/admission/refuse-service-account-name.yaml \
    || { log "the admission policy never refused refuse-service-account-name.yaml"; ok=1; }
  for f in tests/operator/admission/refuse-*.yaml; do
    admission_refuses $ns "$f" || { log "$f not refused in $ns"; ok=1; }
  done
  k -n $ns apply -f tests/operator/admission/valid.yaml >/dev/null || { log "valid.yaml refused"; ok=1; }
  # No processors.image: checked as the operator's own image, and nothing defaulted into the store.
  k -n $ns apply -f tests/operator/admission/valid-no-image.yaml >/dev/null || { log "valid-no-image.yaml refused"; ok=1; }
  [ -z "$(k -n $ns get sp vap-no-image -o jsonpath='{.spec.processors.image}' 2>&1)" ] \
    || { log "the API server stored a processors.image for valid-no-image.yaml"; ok=1; }
  k -n $ns patch sp vap-before --type merge -p '{"metadata":{"finalizers":["sensorflow.io/topics"],"labels":{"a":"b"}}}' >/dev/null \
    || { log "a metadata update of a pipeline stored before the policy was refused"; ok=1; }
  ! k -n $ns patch sp vap-before --type merge -p '{"spec":{"suspend":true}}' >/dev/null 2>&1 \
    || { log "a spec change of a refused pipeline was accepted"; ok=1; }
  k -n $ns patch sp vap-before --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null || ok=1
  k -n $ns delete sp vap-before --timeout 30s >/dev/null || ok=1
  for f in tests/operator/admission/refuse-*.yaml; do
    k -n $other apply -f "$f" >/dev/null || { log "$f refused in the unwatched namespace $other"; ok=1; }
  done
  h upgrade sensorflow charts/sensorflow-operator -n sensorflow-system --reuse-values --timeout 120s \
      --set 'policy.allowedImageRepositories={sensorflow/sensorflow,sensorflow/sensorflow-evil}' \
      --set policy.allowServiceAccountName=true --set 'policy.allowedVolumeTypes={emptyDir,hostPath,nfs}' >/dev/null || ok=1
  wait_for 30 0.5 k -n $ns apply -f tests/operator/admission/refuse-image.yaml >/dev/null 2>&1 \
    || { log "widened: refuse-image.yaml still refused"; ok=1; }
  for f in refuse-service-account-name refuse-host-path refuse-sink-nfs; do
    wait_for 30 0.5 k -n $ns apply -f "tests/operator/admission/$f.yaml" >/dev/null 2>&1 \
      || { log "widened: $f.yaml still refused"; ok=1; }
  done
  admission_refuses $ns tests/operator/admission/refuse-image-registry.yaml \
    || { log "widened: another registry's image accepted"; ok=1; }
  h uninstall sensorflow -n sensorflow-system --timeout 120s >/dev/null || ok=1
  ! k get validatingadmissionpolicy $vap_name >/dev/null 2>&1 || { log "policy left after uninstall"; ok=1; }
  k delete namespace $ns $other --wait=false >/dev/null
  return $ok
}

sa=system:serviceaccount:sensorflow-system:sensorflow-sensorflow-operator
can() { [ "$(k auth can-i "$@" --as "$sa" 2>/dev/null)" = yes ]; }
# Verbs every mode must grant in a watched namespace, and never grant anywhere.
rbac_common_checks() {
  local ns="$1" ok=0
  can patch sensorpipelines.sensorflow.io -n "$ns" || { log "cannot patch sensorpipelines in $ns"; ok=1; }
  can watch sensorpipelines.sensorflow.io -n "$ns" || { log "cannot watch sensorpipelines in $ns"; ok=1; }
  can patch sensorpipelines.sensorflow.io --subresource=status -n "$ns" || { log "cannot patch status in $ns"; ok=1; }
  can create deployments.apps -n "$ns" || { log "cannot create deployments in $ns"; ok=1; }
  can create events.events.k8s.io -n "$ns" || { log "cannot create events in $ns"; ok=1; }
  can get secrets -n "$ns" || { log "cannot get secrets in $ns"; ok=1; }
  ! can list secrets -n "$ns" || { log "can list secrets in $ns"; ok=1; }
  ! can watch secrets -n "$ns" || { log "can watch secrets in $ns"; ok=1; }
  ! can delete secrets -n "$ns" || { log "can delete secrets in $ns"; ok=1; }
  ! can create pods -n "$ns" || { log "can create pods in $ns"; ok=1; }
  can list pods -n "$ns" || { log "cannot list pods in $ns"; ok=1; }
  # The status fallback under an older CRD reads the group's OpenAPI v3 document: granted to
  # every authenticated client by system:discovery, no RBAC on CustomResourceDefinitions.
  can get /openapi/v3/apis/sensorflow.io/v1alpha1 || { log "cannot read the OpenAPI v3 document"; ok=1; }
  ! can get customresourcedefinitions.apiextensions.k8s.io || { log "can read CRDs"; ok=1; }
  ! can watch pods -n "$ns" || { log "can watch pods in $ns"; ok=1; }
  ! can get pods/log -n "$ns" || { log "can read pod logs in $ns"; ok=1; }
  ! can patch pods --subresource=status -n "$ns" || { log "can write pod status in $ns"; ok=1; }
  ! can delete sensorpipelines.sensorflow.io -n "$ns" || { log "can delete pipelines in $ns"; ok=1; }
  can update leases.coordination.k8s.io -n sensorflow-system || { log "cannot update leases"; ok=1; }
  ! can update leases.coordination.k8s.io -n default || { log "leases beyond its namespace"; ok=1; }
  ! can '*' '*' || { log "has wildcard access"; ok=1; }
  return $ok
}
rbac_namespaced_default() {
  # Default: only the release namespace; nothing cluster-wide, in particular no Secrets elsewhere.
  h install sensorflow charts/sensorflow-operator -n sensorflow-system --create-namespace --timeout 120s >/dev/null || return 1
  local ok=0
  rbac_common_checks sensorflow-system || ok=1
  ! can get secrets -n default || { log "default mode: can get secrets in default"; ok=1; }
  ! can get secrets -A || { log "default mode: can get secrets cluster-wide"; ok=1; }
  ! can list sensorpipelines.sensorflow.io -A || { log "default mode: can list pipelines cluster-wide"; ok=1; }
  ! can list pods -n default || { log "default mode: can list pods in default"; ok=1; }
  ! can create deployments.apps -n default || { log "default mode: can create deployments in default"; ok=1; }
  [ "$(k -n sensorflow-system get deploy sensorflow-sensorflow-operator \
        -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="SF_OPERATOR_WATCH_NAMESPACES")].value}')" = sensorflow-system ] \
    || { log "operator not told to watch only its namespace"; ok=1; }
  h uninstall sensorflow -n sensorflow-system --timeout 120s >/dev/null || ok=1
  return $ok
}
rbac_watch_list() {
  # A list of namespaces: a Role in each, nothing in the others.
  k create namespace sf-team-a >/dev/null && k create namespace sf-team-b >/dev/null || return 1
  h install sensorflow charts/sensorflow-operator -n sensorflow-system --create-namespace --timeout 120s \
      --set 'watch.namespaces={sf-team-a,sf-team-b}' >/dev/null || return 1
  local ok=0
  rbac_common_checks sf-team-a || ok=1
  rbac_common_checks sf-team-b || ok=1
  ! can get secrets -n sensorflow-system || { log "list mode: secrets in the release namespace"; ok=1; }
  ! can get secrets -n default || { log "list mode: can get secrets in default"; ok=1; }
  ! can get secrets -A || { log "list mode: can get secrets cluster-wide"; ok=1; }
  h uninstall sensorflow -n sensorflow-system --timeout 120s >/dev/null || ok=1
  return $ok
}
rbac_cluster_wide_opt_in() {
  h install sensorflow charts/sensorflow-operator -n sensorflow-system --create-namespace --timeout 120s \
      --set watch.clusterWide=true >/dev/null || return 1
  local ok=0
  rbac_common_checks any-namespace || ok=1
  can list sensorpipelines.sensorflow.io -A || { log "cluster-wide: cannot list pipelines everywhere"; ok=1; }
  can get secrets -A || { log "cluster-wide: cannot get secrets everywhere"; ok=1; }
  ! can list secrets -A || { log "cluster-wide: can list secrets"; ok=1; }
  [ -z "$(k -n sensorflow-system get deploy sensorflow-sensorflow-operator \
        -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="SF_OPERATOR_WATCH_NAMESPACES")].value}')" ] \
    || { log "cluster-wide: operator restricted to namespaces"; ok=1; }
  h uninstall sensorflow -n sensorflow-system --timeout 120s >/dev/null || ok=1
  return $ok
}

rbac_topics_ready() {
  [ "$(k -n sf-rbac get sp rbac -o jsonpath='{.status.conditions[?(@.type=="TopicsReady")].status}' 2>/dev/null)" = True ]
}
operator_with_chart_rbac() {
  # The operator binary, authenticated as the chart's ServiceAccount (a TokenRequest token:
  # Kubernetes >= 1.24 no longer creates token Secrets), watching the namespaces the chart
  # grants, reconciles and deletes a pipeline: proves the Roles are sufficient, not just present.
  # A pipeline in a namespace it does not watch is left alone.
  local ns=sensorflow-system sa=sensorflow-sensorflow-operator ok=0 token server
  k create namespace sf-rbac >/dev/null && k create namespace sf-unwatched >/dev/null || return 1
  h install sensorflow charts/sensorflow-operator -n $ns --create-namespace --timeout 120s \
      --set 'watch.namespaces={sf-rbac}' >/dev/null || return 1
  token="$(k -n $ns create token $sa --duration 1h)" || { log "kubectl create token failed"; return 1; }
  server="$(k config view -o jsonpath='{.clusters[0].cluster.server}')"
  printf '%s\n' "apiVersion: v1" "kind: Config" \
    "clusters: [{name: c, cluster: {server: \"$server\", insecure-skip-tls-verify: true}}]" \
    "users: [{name: sa, user: {token: \"$token\"}}]" \
    "contexts: [{name: c, context: {cluster: c, user: sa}}]" "current-context: c" > "$work/sa-kubeconfig"
  for n in sf-rbac sf-unwatched; do
    printf '%s\n' "apiVersion: sensorflow.io/v1alpha1" "kind: SensorPipeline" "metadata: {name: rbac}" \
      "spec: {kafka: {bootstrapServers: \"$SF_TEST_BOOTSTRAP\"}, topics: {partitions: 2, deletionPolicy: Delete}, processors: {window: {maxReplicas: 2}, join: {maxReplicas: 2}}}" \
      | k -n $n apply -f - >/dev/null || return 1
  done
  local bin="$SENSORFLOW_TARGET_BIN/sensorflow-operator"
  KUBECONFIG="$work/sa-kubeconfig" POD_NAMESPACE=$ns POD_NAME=rbac-check RUST_LOG=info SF_OPERATOR_WATCH_NAMESPACES=sf-rbac \
    "$bin" --metrics-addr "127.0.0.1:$((18190 + ${SF_TEST_PORT_OFFSET:-0}))" --lease-name $sa --resync-seconds 2 >"$logs/operator-rbac.log" 2>&1 &
  pids[operator]=$!
  wait_for 60 0.4 rbac_topics_ready || { log "pipeline not reconciled with the chart's RBAC"; ok=1; }
  k -n sf-rbac get deployment rbac-window rbac-join >/dev/null || ok=1
  [ "$(k -n sf-rbac get events.events.k8s.io -o name | wc -l)" -gt 0 ] || { log "no Events"; ok=1; }
  [ -z "$(k -n sf-unwatched get sp rbac -o jsonpath='{.metadata.finalizers}')" ] \
    || { log "pipeline in an unwatched namespace was touched"; ok=1; }
  k -n sf-unwatched delete sp rbac --timeout 30s >/dev/null || ok=1
  k -n sf-rbac delete sp rbac --timeout 60s >/dev/null || { log "finalizer not removed"; ok=1; }
  if grep -qi forbidden "$logs/operator-rbac.log"; then
    log "operator hit RBAC denials:"; grep -i forbidden "$logs/operator-rbac.log" | head -5 >&2; ok=1
  fi
  stop_pid operator TERM 30
  h uninstall sensorflow -n $ns --timeout 120s >/dev/null || ok=1
  return $ok
}

step "build operator and tests" build_tests
step "unit and property tests (validate, build, planner, conditions, topics, leader)" unit_tests
step "crds/ up to date with crdgen" crd_up_to_date
step "helm lint --strict (namespaced, list, cluster-wide)" helm_lint
step "helm template | kubernetes-validate --strict (three RBAC modes)" helm_validate
step "helm install against the API server (installs the CRD)" helm_install
step "CRD established on the API server (structural)" install_crd
step "example manifest accepted (kubectl apply --dry-run=server)" example_server_dry_run
step "CEL rules refuse each violating manifest with the rule's message" cel_rules_refuse
step "operator scenarios (real API server + Apache Kafka, PLAINTEXT and SASL_SSL listeners)" scenarios
step "status under the previous chart's CRD: written without the fields it lacks, with a Warning Event" older_crd
step "admission policy: the chart's ValidatingAdmissionPolicy refuses each escalation in the watched namespaces" admission_policy
step "RBAC default: release namespace only, no cluster-wide Secrets (kubectl auth can-i)" rbac_namespaced_default
step "RBAC watch.namespaces: a Role per listed namespace (kubectl auth can-i)" rbac_watch_list
step "RBAC watch.clusterWide opt-in (kubectl auth can-i)" rbac_cluster_wide_opt_in
step "operator runs with the chart's RBAC (TokenRequest token, watched namespaces only)" operator_with_chart_rbac

suite_summary operator
