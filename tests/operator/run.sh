#!/usr/bin/env bash
# Operator tests against a REAL kube-apiserver and a real Apache Kafka broker (scripts/broker.sh).
#
#   tests/operator/run.sh            everything below, then tear down; exit 1 on any failure
#
# Steps: build/install what is missing (k8s binaries, Kafka jars, helm, kubernetes-validate) →
# start the broker and the control plane (fresh state) → unit tests → CRD up to date → install
# the CRD → scenario tests (operator/tests/scenarios.rs) → helm lint / template |
# kubernetes-validate / install → RBAC spot checks → teardown. Prints one summary line
# "operator: N passed, M failed".
#
# Env: SENSORFLOW_OPERATOR_BROKER_PORT (default 19192), SENSORFLOW_K8S_PORT (default 16443),
# SENSORFLOW_ETCD_PORT (12379), KEEP=1 to leave broker and control plane running afterwards.
. "$(dirname "$0")/../../scripts/lib.sh"
. "$REPO_ROOT/scripts/rust-env.sh"
cd "$REPO_ROOT"
work="$REPO_ROOT/.sensorflow/operator-tests"
broker_dir="$work/broker"
k8s_dir="$work/k8s"
logs="$work/logs"
export SENSORFLOW_BROKER_PORT="${SENSORFLOW_OPERATOR_BROKER_PORT:-19192}"
t_start=$(date +%s)

passed=0; failed=0; failures=()
step() {
  local name="$1"; shift
  local t0; t0=$(date +%s)
  log "▶ $name"
  if "$@"; then
    passed=$((passed + 1)); log "✔ $name ($(( $(date +%s) - t0 )) s)"
  else
    failed=$((failed + 1)); failures+=("$name"); log "✘ $name ($(( $(date +%s) - t0 )) s)"
  fi
}

teardown() {
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
log "broker $bootstrap, kubeconfig $KUBECONFIG, logs $logs"

# --- steps ---
build_tests() {
  cargo build --profile "$SENSORFLOW_CARGO_PROFILE" -q -p sensorflow-operator --bins --tests
}
unit_tests() {
  cargo test --profile "$SENSORFLOW_CARGO_PROFILE" -q -p sensorflow-operator --lib --bins
}
crd_up_to_date() {
  cargo run -q -p sensorflow-operator --bin crdgen > crds/sensorpipelines.yaml \
    && git diff --exit-code -- crds/ \
    && cmp crds/sensorpipelines.yaml charts/sensorflow-operator/crds/sensorpipelines.yaml \
    || { log "crds/ is stale: regenerate with 'cargo run -p sensorflow-operator --bin crdgen > crds/sensorpipelines.yaml' and copy it to charts/sensorflow-operator/crds/"; return 1; }
}
install_crd() {
  "$kubectl" apply --server-side -f crds/sensorpipelines.yaml >/dev/null \
    && "$kubectl" wait --for condition=Established --timeout 30s crd/sensorpipelines.sensorflow.io >/dev/null \
    && ! "$kubectl" get crd sensorpipelines.sensorflow.io -o jsonpath='{.status.conditions[*].type}' | grep -q NonStructuralSchema
}
example_server_dry_run() {
  "$kubectl" apply --dry-run=server -f examples/sensorpipeline.yaml
}
scenarios() {
  cargo test --profile "$SENSORFLOW_CARGO_PROFILE" -p sensorflow-operator --test scenarios -- --include-ignored --test-threads=1 2>&1 \
    | tee "$logs/scenarios.log"
  return "${PIPESTATUS[0]}"
}
helm_lint() {
  "$helm" lint --strict charts/sensorflow-operator
}
helm_validate() {
  "$helm" template sensorflow charts/sensorflow-operator --include-crds -n sensorflow-system > "$logs/rendered.yaml" \
    && "$kvalidate" --strict -k 1.25.0 --quiet "$logs/rendered.yaml" \
    && "$helm" template sensorflow charts/sensorflow-operator -n sensorflow-system \
         --set replicaCount=2 --set leaderElection.enabled=false --set metrics.service.enabled=false \
       > "$logs/rendered-ha.yaml" && "$kvalidate" --strict -k 1.25.0 --quiet "$logs/rendered-ha.yaml" \
    && grep -q 'readOnlyRootFilesystem: true' "$logs/rendered.yaml" \
    && grep -q 'runAsNonRoot: true' "$logs/rendered.yaml"
}
helm_install() {
  # Fresh API server: Helm installs the CRD from the chart's crds/ (and keeps it on uninstall).
  "$helm" install sensorflow charts/sensorflow-operator -n sensorflow-system --create-namespace \
      --set replicaCount=2 >/dev/null \
    && "$helm" status sensorflow -n sensorflow-system >/dev/null \
    && "$kubectl" -n sensorflow-system get deployment sensorflow-sensorflow-operator >/dev/null \
    && "$kubectl" -n sensorflow-system get serviceaccount/sensorflow-sensorflow-operator \
         service/sensorflow-sensorflow-operator-metrics role/sensorflow-sensorflow-operator-leader \
         rolebinding/sensorflow-sensorflow-operator-leader >/dev/null \
    && "$kubectl" get clusterrole/sensorflow-sensorflow-operator clusterrolebinding/sensorflow-sensorflow-operator >/dev/null \
    && "$kubectl" get crd/sensorpipelines.sensorflow.io >/dev/null \
    && "$helm" uninstall sensorflow -n sensorflow-system >/dev/null
}
rbac_least_privilege() {
  "$helm" install sensorflow charts/sensorflow-operator -n sensorflow-system --create-namespace >/dev/null || return 1
  local sa=system:serviceaccount:sensorflow-system:sensorflow-sensorflow-operator ok=0
  can() { [ "$("$kubectl" auth can-i "$@" --as "$sa" 2>/dev/null)" = yes ]; }
  can patch sensorpipelines.sensorflow.io -A || { log "cannot patch sensorpipelines"; ok=1; }
  can patch sensorpipelines.sensorflow.io --subresource=status -A || { log "cannot patch status"; ok=1; }
  can create deployments.apps -n any || { log "cannot create deployments"; ok=1; }
  can create events.events.k8s.io -n any || { log "cannot create events"; ok=1; }
  can update leases.coordination.k8s.io -n sensorflow-system || { log "cannot update leases"; ok=1; }
  ! can update leases.coordination.k8s.io -n default || { log "leases beyond its namespace"; ok=1; }
  ! can list secrets -A || { log "can list secrets"; ok=1; }
  ! can delete secrets -n any || { log "can delete secrets"; ok=1; }
  ! can create pods -n any || { log "can create pods"; ok=1; }
  ! can delete sensorpipelines.sensorflow.io -A || { log "can delete pipelines"; ok=1; }
  ! can '*' '*' || { log "has wildcard access"; ok=1; }
  "$helm" uninstall sensorflow -n sensorflow-system >/dev/null || ok=1
  return $ok
}

operator_with_chart_rbac() {
  # The operator binary, authenticated as the chart's ServiceAccount, reconciles and deletes a
  # pipeline: proves the ClusterRole/Role are sufficient, not just present.
  local ns=sensorflow-system sa=sensorflow-sensorflow-operator ok=0 secret="" token server pid ready=""
  "$helm" install sensorflow charts/sensorflow-operator -n $ns --create-namespace >/dev/null || return 1
  for _ in $(seq 1 50); do
    secret="$("$kubectl" -n $ns get sa $sa -o jsonpath='{.secrets[0].name}' 2>/dev/null)"
    [ -n "$secret" ] && break; sleep 0.2
  done
  token="$("$kubectl" -n $ns get secret "$secret" -o jsonpath='{.data.token}' | base64 -d)" || return 1
  server="$("$kubectl" config view -o jsonpath='{.clusters[0].cluster.server}')"
  printf '%s\n' "apiVersion: v1" "kind: Config" \
    "clusters: [{name: c, cluster: {server: \"$server\", insecure-skip-tls-verify: true}}]" \
    "users: [{name: sa, user: {token: \"$token\"}}]" \
    "contexts: [{name: c, context: {cluster: c, user: sa}}]" "current-context: c" > "$work/sa-kubeconfig"
  "$kubectl" create namespace sf-rbac >/dev/null
  printf '%s\n' "apiVersion: sensorflow.io/v1alpha1" "kind: SensorPipeline" "metadata: {name: rbac}" \
    "spec: {kafka: {bootstrapServers: \"$SF_TEST_BOOTSTRAP\"}, topics: {deletionPolicy: Delete}}" \
    | "$kubectl" -n sf-rbac apply -f - >/dev/null || return 1
  local bin="$SENSORFLOW_TARGET_BIN/sensorflow-operator"
  KUBECONFIG="$work/sa-kubeconfig" POD_NAMESPACE=$ns POD_NAME=rbac-check RUST_LOG=info \
    "$bin" --metrics-addr 127.0.0.1:18190 --lease-name $sa --resync-seconds 2 >"$logs/operator-rbac.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 150); do
    ready="$("$kubectl" -n sf-rbac get sp rbac -o jsonpath='{.status.conditions[?(@.type=="TopicsReady")].status}' 2>/dev/null)"
    [ "$ready" = True ] && break; sleep 0.4
  done
  [ "$ready" = True ] || { log "pipeline not reconciled with the chart's RBAC"; ok=1; }
  "$kubectl" -n sf-rbac get deployment rbac-window rbac-join >/dev/null || ok=1
  [ "$("$kubectl" -n sf-rbac get events.events.k8s.io -o name | wc -l)" -gt 0 ] || { log "no Events"; ok=1; }
  "$kubectl" -n sf-rbac delete sp rbac --timeout 60s >/dev/null || { log "finalizer not removed"; ok=1; }
  if grep -qi forbidden "$logs/operator-rbac.log"; then
    log "operator hit RBAC denials:"; grep -i forbidden "$logs/operator-rbac.log" | head -5 >&2; ok=1
  fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  "$helm" uninstall sensorflow -n $ns >/dev/null || ok=1
  return $ok
}

step "build operator and tests" build_tests
step "unit and property tests (validate, build, planner, conditions, topics)" unit_tests
step "crds/ up to date with crdgen" crd_up_to_date
step "helm lint --strict" helm_lint
step "helm template | kubernetes-validate --strict" helm_validate
step "helm install against the API server (installs the CRD)" helm_install
step "CRD established on kube-apiserver v1.20.2 (structural, no CEL)" install_crd
step "example manifest accepted (kubectl apply --dry-run=server)" example_server_dry_run
step "operator scenarios (real API server + broker)" scenarios
step "RBAC least privilege (kubectl auth can-i)" rbac_least_privilege
step "operator runs with the chart's RBAC (ServiceAccount token)" operator_with_chart_rbac

log "operator tests finished in $(( $(date +%s) - t_start )) s"
for f in "${failures[@]}"; do log "FAILED: $f"; done
echo "operator: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
