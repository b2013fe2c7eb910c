#!/usr/bin/env bash
# Analysis tests against REAL components: an archive written by the real pipeline (Apache Kafka
# broker → window-processor → join-predict → gcs-sink → fake-gcs-server), read by the PySpark job
# through the Hadoop GCS connector, checked by an independent reader; the exported spec.model
# patch applied (dry run and for real) to a real kube-apiserver. Nothing is mocked.
#
#   tests/analysis/run.sh      everything below, then tear down; exit 1 on any failure
#
# Steps: install what is missing (analysis/install.sh: Python venv with pyspark, matplotlib,
# pyarrow, pandas, fake-gcs-server; the gcs-connector jar from Maven Central) →
#  1. unit tests of the job's pure helpers (ROC/AUC vs. a brute-force pair count, thresholds,
#     model parsing, patch YAML);
#  2. the local route (what `./run.sh analyze` runs): a small archive in the sink's schema
#     written with pyarrow into a directory, the job on it, row counts / label / AUC / pictures
#     checked independently;
#  3. the real pipeline: a slice of the household dataset (8 days × 1440 minutes) replayed
#     through the processors while gcs-sink archives SZ, FA, FI, FD, predictions, dead-letter
#     and late into fake-gcs-server; a few bad readings (a late one, a NaN, a non-integer SX)
#     on top; drained; SIGTERM → the sink uploads and exits 0;
#  4. the job on gs:// through the GCS connector (endpoint override, unauthenticated), report
#     written back to gs://; then, read independently with pyarrow: row counts per topic equal
#     the objects' and the sink's summary, the label recomputed by another method equals the
#     job's, AUC/precision/recall recomputed, the trained AUC ≥ the current model's, PNGs of
#     1000×600 px;
#  5. the exported patch against a real kube-apiserver (tests/cluster/control-plane.sh, the CRD
#     from crds/): `kubectl apply --server-side --dry-run=server`, `kubectl patch --dry-run=server`,
#     then applied for real and read back.
# Prints "analysis: N passed, M failed".
#
# Env: SENSORFLOW_ANALYSIS_BROKER_PORT (19692; +1 controller, +2 SASL),
#      SENSORFLOW_ANALYSIS_GCS_PORT (19643), SENSORFLOW_ANALYSIS_K8S_PORT (16643; etcd 12679,
#      controller-manager 10657), KEEP=1 leaves the broker and GCS server running,
#      SENSORFLOW_ANALYSIS_NO_BUILD=1 skips `cargo build` (binaries already in the target dir).
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
# shellcheck source=SCRIPTDIR/../../scripts/rust-env.sh
. "$REPO_ROOT/scripts/rust-env.sh"
cd "$REPO_ROOT"
work="$REPO_ROOT/.sensorflow/analysis-test"
logs="$work/logs"
broker_dir="$work/broker"
k8s_dir="$work/k8s"
export SENSORFLOW_BROKER_PORT="${SENSORFLOW_ANALYSIS_BROKER_PORT:-19692}"
gcs_port="${SENSORFLOW_ANALYSIS_GCS_PORT:-19643}"
endpoint="http://127.0.0.1:$gcs_port"
bucket="sensorflow-analysis"
prefix="archive"
target="$SENSORFLOW_TARGET_BIN"
# The label of the tests: an SZ reading above 3 kW within the next 10 minutes. The household
# replay's split is by client (day) order, its real chronological order (analysis/README.md).
exceed=3.0

# Every process this script starts is recorded in pids (tests/lib/suite.sh) and stopped by PID
# on exit.
k8s_up=0
teardown() {
  if [ "${KEEP:-0}" = 1 ]; then
    stop_pids gcs
  else
    stop_pids
    "$REPO_ROOT/scripts/broker.sh" stop "$broker_dir" >/dev/null 2>&1 || true
  fi
  if [ "$k8s_up" = 1 ]; then
    SENSORFLOW_K8S_PORT="$k8s_port" SENSORFLOW_ETCD_PORT="$etcd_port" SENSORFLOW_KCM_PORT="$kcm_port" \
      "$REPO_ROOT/tests/cluster/control-plane.sh" down "$k8s_dir" >/dev/null 2>&1 || true
  fi
}
trap teardown EXIT

# --- prerequisites (cached after the first run) ---
rm -rf "$work"; mkdir -p "$logs"
apt_install curl
"$REPO_ROOT/scripts/fetch-data.sh" >/dev/null
eval "$("$REPO_ROOT/analysis/install.sh")"   # PYTHON, GCS_CONNECTOR_JAR
fake_gcs="$(fake_gcs_bin "$(dirname "$(dirname "$PYTHON")")")"
if [ "${SENSORFLOW_ANALYSIS_NO_BUILD:-0}" = 1 ]; then
  log "SENSORFLOW_ANALYSIS_NO_BUILD=1: using the binaries in $target as they are"
else
  log "building the processors and gcs-sink ($SENSORFLOW_CARGO_PROFILE)"
  cargo build --profile "$SENSORFLOW_CARGO_PROFILE" -q -p sensorflow-apps -p sensorflow-tools -p sensorflow-sink --bins
fi
job=(env SF_GCS_CONNECTOR_JAR="$GCS_CONNECTOR_JAR" "$PYTHON" analysis/sensorflow_analysis.py)
check=("$PYTHON" tests/analysis/check.py)

# --- 1. unit tests (each pytest test counts) ---
log "▶ unit: ROC/AUC, thresholds, model parsing, patch YAML (pytest)"
set +e
"$PYTHON" -m pytest -q -p no:cacheprovider tests/analysis/test_unit.py >"$logs/unit.log" 2>&1; st_unit=$?
set -e
tail -3 "$logs/unit.log"
pytest_counts "$logs/unit.log"
p=$pytest_passed f=$pytest_failed
passed=$((passed + p)); failed=$((failed + f))
if [ "$f" != 0 ] || { [ "$st_unit" != 0 ] && [ "$p" = 0 ]; }; then
  [ "$f" != 0 ] || failed=$((failed + 1))
  failures+=("unit tests (log: $logs/unit.log)")
fi

# --- 2. the local route: a directory archive in, a directory report out ---
local_route() {
  "$PYTHON" tests/analysis/make_archive.py "$work/local-archive" --clients 4 --minutes 480 >"$logs/make-archive.log" || return 1
  "${job[@]}" --archive "$work/local-archive" --output "$work/local-report" --exceed "$exceed" \
    >"$logs/job-local.out" 2>"$logs/job-local.err" || { tail -30 "$logs/job-local.err"; return 1; }
  cat "$logs/job-local.out"
  "${check[@]}" counts --archive "$work/local-archive" --report "$work/local-report" &&
    "${check[@]}" label --archive "$work/local-archive" --report "$work/local-report" &&
    "${check[@]}" auc --report "$work/local-report" &&
    "${check[@]}" pictures --report "$work/local-report" &&
    grep -q 'late (SZ) ' "$work/local-report/summary.txt" &&
    grep -q 'missing-key (SZ) 1' "$work/local-report/summary.txt"
}
step "local archive (pyarrow, sink schema) → job → counts, label, AUC, pictures, dead letters by reason" local_route

# --- 3. the real pipeline into fake-gcs-server ---
start_gcs() {
  if curl -s -o /dev/null "$endpoint/storage/v1/b" 2>/dev/null; then
    log "something already listens on 127.0.0.1:$gcs_port (SENSORFLOW_ANALYSIS_GCS_PORT)"; return 1
  fi
  start_fake_gcs "$fake_gcs" 127.0.0.1 "$gcs_port" "127.0.0.1:$gcs_port" "$logs/fake-gcs.log" \
    -backend memory || return 1
}
sink_topics="SZ,FA,FI,FD,predictions,dead-letter,late"
pipeline() {
  start_gcs || return 1
  create_bucket "$endpoint" "$bucket" || { log "creating bucket $bucket failed"; return 1; }
  local bootstrap
  bootstrap="$("$REPO_ROOT/scripts/broker.sh" start "$broker_dir")" || return 1
  export KAFKA_BOOTSTRAP_SERVERS="$bootstrap" RUST_LOG=info
  "$target/sensorflow" create-topics --partitions 4 >"$logs/topics.log" 2>&1 || return 1
  SF_METRICS_ADDR=127.0.0.1:0 "$target/window-processor" >"$logs/window.log" 2>&1 & pids[window]=$!
  SF_METRICS_ADDR=127.0.0.1:0 "$target/join-predict" >"$logs/join.log" 2>&1 & pids[join]=$!
  SF_METRICS_ADDR=127.0.0.1:0 "$target/gcs-sink" --bucket "$bucket" --endpoint "$endpoint" --prefix "$prefix" \
    --sink-topics "$sink_topics" --max-age-seconds 5 --summary-json "$work/sink.json" \
    >"$logs/gcs-sink.log" 2>&1 & pids[sink]=$!
  "$target/replay" --input data/household_power.csv.xz --clients 8 --rows-per-client 1440 \
    --summary-json "$work/replay.json" >"$logs/replay.log" 2>&1 || { log "replay failed"; return 1; }
  log "replay: $(tr -d '\n ' <"$work/replay.json" | head -c 400)"
  "$target/sensorflow" wait --group sensorflow-window=SZ --timeout-s 180 >>"$logs/wait.log" 2>&1 || return 1
  # Bad input on top, for the dead-letter and late counts: client 2006-12-16 (the first day,
  # always among the replayed ones) gets a reading long before its partition's watermark
  # (late), a NaN SZ reading (window-processor: non-finite) and a non-integer SX reading
  # (join-predict: non-integer).
  local first last
  first=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["first_event_ms"])' "$work/replay.json")
  last=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["last_event_ms"])' "$work/replay.json")
  printf 'client,ts_ms,sensor,value\n2006-12-16,%s,SZ,1.0\n2006-12-16,%s,SZ,NaN\n2006-12-16,%s,SX,1.5\n' \
    "$first" "$last" "$last" >"$work/bad.csv"
  "$target/replay" --input "$work/bad.csv" --summary-json "$work/replay-bad.json" >>"$logs/replay.log" 2>&1 || return 1
  "$target/sensorflow" wait --group sensorflow-window=SZ --group sensorflow-join=SX,SY,FA,FI,FD \
    --timeout-s 300 >>"$logs/wait.log" 2>&1 || { log "the processors did not drain"; return 1; }
  "$target/sensorflow" wait --group "sensorflow-sink=$sink_topics" --timeout-s 300 >>"$logs/wait.log" 2>&1 \
    || { log "the sink did not drain"; return 1; }
  local pid="${pids[sink]}" st=0
  kill -TERM "$pid"; wait "$pid" || st=$?
  unset "pids[sink]"
  log "gcs-sink exit status $st: $(grep 'gcs-sink:' "$logs/gcs-sink.log" | tail -1)"
  stop_pid window; stop_pid join
  [ "$st" = 0 ] && pipeline_ok=1
}
pipeline_ok=0
step "pipeline: 8 days of household data + bad readings → processors → gcs-sink → fake-gcs-server" pipeline

# --- 4. the job on gs:// and the independent checks ---
report="$work/report"
gcs_job() {
  [ "$pipeline_ok" = 1 ] || { log "no archive: the pipeline step failed"; return 1; }
  local t0; t0=$(date +%s)
  "${job[@]}" --archive "gs://$bucket/$prefix" --gcs-endpoint "$endpoint" \
    --output "gs://$bucket/reports/test" --exceed "$exceed" --split-by client \
    >"$logs/job-gcs.out" 2>"$logs/job-gcs.err" || { tail -40 "$logs/job-gcs.err"; return 1; }
  cat "$logs/job-gcs.out"
  log "job on gs:// took $(( $(date +%s) - t0 )) s (phases: $(grep -c '^\[analysis\]' "$logs/job-gcs.err"), log $logs/job-gcs.err)"
  "${check[@]}" download --endpoint "$endpoint" --src "$bucket/reports/test" --dst "$report"
}
step "job reads gs:// through the GCS connector, writes its report to gs://" gcs_job
step "row counts per topic = the objects' (pyarrow) = the sink's summary" \
  "${check[@]}" counts --archive "gs://$bucket/$prefix" --endpoint "$endpoint" --report "$report" --sink-summary "$work/sink.json"
step "label = an independent computation (binary search per client, pandas) on the same rows" \
  "${check[@]}" label --archive "gs://$bucket/$prefix" --endpoint "$endpoint" --report "$report"
step "test AUC/precision/recall recomputed; trained AUC ≥ the current model's" "${check[@]}" auc --report "$report"
step "report pictures: non-empty 1000×600 PNGs" "${check[@]}" pictures --report "$report"
dead_letters() {
  grep -E '^(dead-letter|late) by reason' "$report/summary.txt"
  grep -q 'non-finite (SZ) 1' "$report/summary.txt" && grep -q 'non-integer (SX) 1' "$report/summary.txt" &&
    grep -q 'late (SZ) 1' "$report/summary.txt"
}
step "dead letters and late readings counted by reason (non-finite, non-integer, late)" dead_letters

# --- 5. the patch against a real kube-apiserver ---
k8s_port="${SENSORFLOW_ANALYSIS_K8S_PORT:-16643}"; etcd_port=12679; kcm_port=10657
patch_applies() {
  local kubectl kubeconfig name
  kubectl="$("$REPO_ROOT/tests/cluster/tools.sh" kubectl)" || return 1
  k8s_up=1
  kubeconfig="$(SENSORFLOW_K8S_PORT="$k8s_port" SENSORFLOW_ETCD_PORT="$etcd_port" SENSORFLOW_KCM_PORT="$kcm_port" \
    "$REPO_ROOT/tests/cluster/control-plane.sh" up "$k8s_dir")" || return 1
  local k=("$kubectl" --kubeconfig "$kubeconfig")
  "${k[@]}" apply --server-side -f crds/sensorpipelines.yaml >/dev/null || return 1
  wait_crd_established 60 "${k[@]}" || return 1
  name=$(awk '/^  name:/ {print $2; exit}' "$report/model-patch.yaml")
  sed "s/^  name: demo$/  name: $name/" examples/sensorpipeline.yaml | "${k[@]}" create -f - >/dev/null || return 1
  "${k[@]}" apply --server-side --field-manager sensorflow-analysis --force-conflicts --dry-run=server \
    -f "$report/model-patch.yaml" || return 1
  "${k[@]}" patch sensorpipeline "$name" --type merge --patch-file "$report/model-patch.yaml" --dry-run=server || return 1
  # The schema is enforced: a threshold outside [0, 1] is refused.
  if sed 's/^    threshold: .*/    threshold: 1.5/' "$report/model-patch.yaml" |
    "${k[@]}" apply --server-side --field-manager sensorflow-analysis --force-conflicts --dry-run=server -f - 2>"$logs/refused.log"; then
    log "a threshold of 1.5 was accepted"; return 1
  fi
  log "refused as expected: $(head -c 300 "$logs/refused.log")"
  "${k[@]}" apply --server-side --field-manager sensorflow-analysis --force-conflicts -f "$report/model-patch.yaml" || return 1
  "${k[@]}" get sensorpipeline "$name" -o jsonpath='{.spec.model}' >"$work/live-model.json" || return 1
  echo "live spec.model: $(cat "$work/live-model.json")"
  "$PYTHON" - "$report/model-patch.yaml" "$work/live-model.json" <<'EOF'
import json, sys, yaml
want = yaml.safe_load(open(sys.argv[1]))["spec"]["model"]
live = json.load(open(sys.argv[2]))
assert live["kind"] == "logistic" and live["weights"] == want["weights"], (live, want)
assert live["bias"] == want["bias"] and live["threshold"] == want["threshold"], (live, want)
EOF
}
step "model-patch.yaml: kubectl apply --server-side / patch --dry-run=server, then applied and read back" patch_applies

teardown
trap - EXIT
suite_summary analysis
