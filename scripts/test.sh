#!/usr/bin/env bash
# Every test of the project, against real components (nothing mocked):
#   1. unit + property tests (cargo test --workspace)
#   2. integration tests of the processors against a real Apache Kafka broker (processors/apps/tests)
#   3. an independent, non-librdkafka client (kafka-python) driving the real binaries
#   4. the GCS sink against a real broker and fake-gcs-server, read back with pyarrow/DuckDB
#      (tests/sink/run.sh)
#   5. operator scenarios against a real kube-apiserver v1.37.2 + broker (tests/operator/run.sh)
#   6. end to end on a kind cluster (kind-config.yaml) running Kubernetes v1.37.2: helm install,
#      kubectl apply, scaling, chaos, deletion, real Pods from the SensorFlow image
#      (tests/e2e/kind.sh; its node image is assembled here without a registry, and Docker is
#      installed and started when none answers; the hand-made node route, tests/e2e/node.sh,
#      runs the same scenarios without Docker)
#   7. the analysis step: PySpark over an archive the real pipeline wrote to fake-gcs-server
#      (tests/analysis/run.sh; runs with the operator suites, it needs a kube-apiserver)
#   8. the Helm chart without a cluster: values schema, ServiceMonitor/PrometheusRule/dashboard
#      switches, alert rules checked and unit-tested with promtool, the dashboard's metrics
#      against the code's (tests/chart/run.sh; runs with the operator suites)
# Prints per-suite results and a final line "tests: N passed, M failed".
# Options: --skip-operator (suites 1-4 only), --only-operator (5, 7, 8), --skip-e2e, --only-e2e (6).
. "$(dirname "$0")/lib.sh"
. "$REPO_ROOT/scripts/rust-env.sh"
cd "$REPO_ROOT"
run_core=1; run_operator=1; run_e2e=1
for a in "$@"; do
  case "$a" in
    --skip-operator) run_operator=0; run_e2e=0 ;;
    --only-operator) run_core=0; run_e2e=0 ;;
    --skip-e2e) run_e2e=0 ;;
    --only-e2e) run_core=0; run_operator=0 ;;
    -h|--help) usage_header "$0"; exit 0 ;;
    *) die "unknown option $a" ;;
  esac
done
work="$REPO_ROOT/.sensorflow/test"
mkdir -p "$work"
passed=0; failed=0; suites=()
# count_cargo FILE: adds cargo's "test result" lines of FILE to the totals.
count_cargo() {
  local p f
  p=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$1" | awk '{s+=$4} END {print s+0}' || true)
  f=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$1" | awk '{s+=$6} END {print s+0}' || true)
  passed=$((passed + p)); failed=$((failed + f))
}
# count_summary PREFIX FILE: adds a suite script's last "PREFIX: N passed, M failed" line to the totals.
count_summary() {
  local line
  line=$(grep -Eo "$1: [0-9]+ passed, [0-9]+ failed" "$2" | tail -1 || true)
  passed=$((passed + $(awk '{print $2+0}' <<<"${line:-x 0 x 0}")))
  failed=$((failed + $(awk '{print $4+0}' <<<"${line:-x 0 x 0}")))
}
suite() { # suite NAME STATUS
  if [ "$2" = 0 ]; then suites+=("ok      $1"); else suites+=("FAILED  $1"); failed=$((failed + 1)); fi
}
# script_suite HEADING PREFIX SCRIPT NAME: runs a suite script (log in $work/PREFIX.log),
# counts its last "PREFIX: N passed, M failed" line and records it as suite NAME.
script_suite() {
  local st
  log "$1"
  set +e
  "$3" 2>&1 | tee "$work/$2.log"; st=${PIPESTATUS[0]}
  set -e
  count_summary "$2" "$work/$2.log"
  suite "$4" "$st"
}

broker_dir="$work/broker"
cleanup() { "$REPO_ROOT/scripts/broker.sh" stop "$broker_dir" >/dev/null 2>&1 || true; }
trap cleanup EXIT

if [ "$run_core" = 1 ]; then
  "$REPO_ROOT/scripts/fetch-data.sh"
  log "1/8 unit and property tests"
  set +e
  cargo test --profile "$SENSORFLOW_CARGO_PROFILE" --workspace 2>&1 | tee "$work/unit.log"; st=${PIPESTATUS[0]}
  set -e
  count_cargo "$work/unit.log"; suite "unit + property tests" "$st"

  log "2/8 integration tests against a real broker"
  # The integration tests run replay (sensorflow-tools) and, in the secured-listener test,
  # gcs-sink: other crates' binaries, built beside the apps'.
  cargo build --profile "$SENSORFLOW_CARGO_PROFILE" --quiet -p sensorflow-sink -p sensorflow-tools --bins
  cleanup; rm -rf "$broker_dir"
  export SENSORFLOW_BROKER_PORT="${SENSORFLOW_TEST_BROKER_PORT:-19292}"
  SENSORFLOW_TEST_BOOTSTRAP="$("$REPO_ROOT/scripts/broker.sh" start "$broker_dir")"
  export SENSORFLOW_TEST_BOOTSTRAP SENSORFLOW_TEST_SASL_ENV="$broker_dir/sasl.env"
  set +e
  cargo test --profile "$SENSORFLOW_CARGO_PROFILE" --no-fail-fast -p sensorflow-apps --test broker --test exactly_once --test secured --test determinism --test poison --test rebalance --test rebuild --test liveness --test jitter --test field --test acls --test window_kinds \
    -- --ignored --test-threads=2 2>&1 | tee "$work/broker.log"
  st=${PIPESTATUS[0]}
  set -e
  count_cargo "$work/broker.log"; suite "integration (real broker)" "$st"

  log "3/8 independent client (kafka-python) against the real binaries"
  venv="$SENSORFLOW_CACHE/venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/independent/requirements.txt
  cargo build --profile "$SENSORFLOW_CARGO_PROFILE" --quiet -p sensorflow-apps -p sensorflow-tools --bins
  set +e
  SENSORFLOW_BIN_DIR="$SENSORFLOW_TARGET_BIN" \
    "$venv/bin/python" -m pytest -q tests/independent 2>&1 | tee "$work/independent.log"
  st=${PIPESTATUS[0]}
  set -e
  p=$(grep -Eo '[0-9]+ passed' "$work/independent.log" | tail -1 | awk '{print $1}' || true)
  f=$(grep -Eo '[0-9]+ failed' "$work/independent.log" | tail -1 | awk '{print $1}' || true)
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  suite "independent client (kafka-python)" "$st"
  cleanup

  script_suite "4/8 GCS sink against a real broker and fake-gcs-server" \
    sink tests/sink/run.sh "GCS sink (fake-gcs-server, pyarrow/DuckDB)"
fi

if [ "$run_operator" = 1 ]; then
  script_suite "5/8 operator scenarios against a real kube-apiserver" \
    operator tests/operator/run.sh "operator (real kube-apiserver)"
  script_suite "8/8 the Helm chart: values schema, alert rules (promtool), dashboard" \
    chart tests/chart/run.sh "chart (helm lint/template, promtool)"
  # Needs the Kubernetes binaries (the model patch is dry-run against a real kube-apiserver).
  script_suite "7/8 analysis: PySpark over a real pipeline's archive, model training, patch against a real kube-apiserver" \
    analysis tests/analysis/run.sh "analysis (PySpark + GCS connector, kube-apiserver)"
fi

if [ "$run_e2e" = 1 ]; then
  log "6/8 end to end on kind (helm, kubectl, Pods)"
  set +e
  tests/e2e/kind.sh 2>&1 | tee "$work/e2e.log"; st=${PIPESTATUS[0]}
  set -e
  # A suite that did not run (no Docker engine and not root, a cluster that did not come up)
  # prints no "e2e: N passed" line: it counts as a failure, never as a pass.
  count_summary e2e "$work/e2e.log"
  suite "end to end (kind)" "$st"
fi

echo
echo "==== test suites ===="
printf '%s\n' "${suites[@]}"
echo "tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
