#!/usr/bin/env bash
# GCS sink tests against REAL components: an Apache Kafka broker and fake-gcs-server (GCS JSON API,
# filesystem backend so objects survive its restart), both on loopback. Nothing is mocked.
#
#   tests/sink/run.sh        everything below, then tear down; exit 1 on any failure
#
# Steps: install what is missing (Python venv with fake-gcs-server, pyarrow, DuckDB, kafka-python;
# Kafka jars via scripts/install-kafka.sh) → fresh broker + GCS server → sink unit/property tests →
# Rust integration tests (processors/sink/tests/gcs.rs) → pipeline scenario: replay a slice of
# the household dataset through window-processor and join-predict while gcs-sink archives every
# pipeline topic (its default: SX, SY, SZ, FA, FI, FD, predictions, dead-letter, late); kill -9
# the sink mid-file and restart it at once; stop the GCS server for
# a while and restart it; drain; SIGTERM → exit 0 → independent reader check (pyarrow, DuckDB,
# kafka-python + a hand-written protobuf decoder): same records, same values, no duplicates,
# no gaps per partition. Prints "sink: N passed, M failed".
#
# Env: SENSORFLOW_SINK_BROKER_PORT (19492), SENSORFLOW_SINK_GCS_PORT (19443),
#      SENSORFLOW_SINK_METRICS_PORT (19409), KEEP=1 leaves broker and GCS server running.
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
. "$REPO_ROOT/scripts/rust-env.sh"
cd "$REPO_ROOT"
work="$REPO_ROOT/.sensorflow/sink-test"
broker_dir="$work/broker"
gcs_root="$work/gcs"
logs="$work/logs"
export SENSORFLOW_BROKER_PORT="${SENSORFLOW_SINK_BROKER_PORT:-19492}"
gcs_port="${SENSORFLOW_SINK_GCS_PORT:-19443}"
metrics_port="${SENSORFLOW_SINK_METRICS_PORT:-19409}"
endpoint="http://127.0.0.1:$gcs_port"
bucket="sensorflow-test"
venv="$SENSORFLOW_CACHE/venv-sink"
target="$SENSORFLOW_TARGET_BIN"

# Every process this script starts is recorded in pids (tests/lib/suite.sh) and stopped by PID
# on exit.
teardown() {
  if [ "${KEEP:-0}" = 1 ]; then
    stop_pids gcs
    log "KEEP=1: broker ($broker_dir) and GCS server ($endpoint, root $gcs_root) left running"
  else
    stop_pids
    "$REPO_ROOT/scripts/broker.sh" stop "$broker_dir" >/dev/null 2>&1 || true
  fi
}
trap teardown EXIT

# --- prerequisites (cached after the first run) ---
mkdir -p "$work"
apt_install curl python3-venv
"$REPO_ROOT/scripts/fetch-data.sh" >/dev/null
venv_install "$venv" tests/sink/requirements.txt
fake_gcs="$(fake_gcs_bin "$venv")"
"$REPO_ROOT/scripts/install-kafka.sh" >/dev/null
log "building gcs-sink, its tests and the processors"
cargo build --profile "$SENSORFLOW_CARGO_PROFILE" -q -p sensorflow-sink --bins --tests
cargo build --profile "$SENSORFLOW_CARGO_PROFILE" -q -p sensorflow-apps -p sensorflow-tools --bin replay --bin window-processor --bin join-predict --bin sensorflow

# --- fresh broker and GCS server ---
"$REPO_ROOT/scripts/broker.sh" stop "$broker_dir" >/dev/null 2>&1 || true
rm -rf "$broker_dir" "$gcs_root" "$logs"
mkdir -p "$logs" "$gcs_root"
bootstrap="$("$REPO_ROOT/scripts/broker.sh" start "$broker_dir")"

start_gcs() {
  start_fake_gcs "$fake_gcs" 127.0.0.1 "$gcs_port" "127.0.0.1:$gcs_port" "$logs/fake-gcs.log" \
    -backend filesystem -filesystem-root "$gcs_root" || die "no GCS server on $endpoint"
}
start_gcs
create_bucket "$endpoint" "$bucket" || die "creating bucket $bucket failed"
export SENSORFLOW_TEST_BOOTSTRAP="$bootstrap" SF_TEST_GCS_ENDPOINT="$endpoint" SF_TEST_GCS_BUCKET="$bucket"
log "broker $bootstrap, GCS $endpoint (bucket $bucket, root $gcs_root), logs $logs"

# count_cargo FILE: adds cargo's "test result" lines of FILE to the totals.
count_cargo() {
  local p f
  p=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$1" | awk '{s+=$4} END {print s+0}')
  f=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$1" | awk '{s+=$6} END {print s+0}')
  passed=$((passed + p)); failed=$((failed + f))
  [ "$f" = 0 ] || failures+=("cargo tests in $1")
}

# --- 1. unit + property tests, 2. integration tests (real broker + GCS) ---
set +e
cargo test --profile "$SENSORFLOW_CARGO_PROFILE" -q -p sensorflow-sink --lib --bins 2>&1 | tee "$logs/unit.log"; st_unit=${PIPESTATUS[0]}
cargo test --profile "$SENSORFLOW_CARGO_PROFILE" -q -p sensorflow-sink --test gcs -- --include-ignored --test-threads=1 2>&1 | tee "$logs/integration.log"
st_int=${PIPESTATUS[0]}
set -e
count_cargo "$logs/unit.log"; count_cargo "$logs/integration.log"
if [ "$st_unit" != 0 ] && ! grep -q 'test result' "$logs/unit.log"; then failed=$((failed + 1)); failures+=("unit tests did not run"); fi
if [ "$st_int" != 0 ] && ! grep -q 'test result' "$logs/integration.log"; then failed=$((failed + 1)); failures+=("integration tests did not run"); fi

# --- 3. the pipeline scenario ---
pfx="e2e-"
prefix="pipeline/"
group="${pfx}sink"
# Every pipeline topic, as the sink archives by default (SF_SINK_TOPICS unset).
sink_topics="${pfx}SX,${pfx}SY,${pfx}SZ,${pfx}FA,${pfx}FI,${pfx}FD,${pfx}predictions,${pfx}dead-letter,${pfx}late"
kinds="${pfx}SX=reading,${pfx}SY=reading,${pfx}SZ=reading,${pfx}FA=feature,${pfx}FI=feature,${pfx}FD=feature,${pfx}predictions=prediction"
topic_env=(SF_TOPIC_SX="${pfx}SX" SF_TOPIC_SY="${pfx}SY" SF_TOPIC_SZ="${pfx}SZ" SF_TOPIC_FA="${pfx}FA"
  SF_TOPIC_FI="${pfx}FI" SF_TOPIC_FD="${pfx}FD" SF_TOPIC_PREDICTIONS="${pfx}predictions"
  SF_TOPIC_DLQ="${pfx}dead-letter" SF_TOPIC_LATE="${pfx}late")
common_env=(KAFKA_BOOTSTRAP_SERVERS="$bootstrap" RUST_LOG=info "${topic_env[@]}")
metrics_url="http://127.0.0.1:$metrics_port/metrics"

start_sink() { # start_sink RUN
  env "${common_env[@]}" SF_GROUP_ID="$group" SF_METRICS_ADDR="127.0.0.1:$metrics_port" \
    SF_SINK_BUCKET="$bucket" SF_SINK_ENDPOINT="$endpoint" SF_SINK_PREFIX="$prefix" \
    SF_SINK_MAX_RECORDS=4000 SF_SINK_MAX_BYTES=1048576 \
    SF_SINK_MAX_AGE_SECONDS=3 SF_SINK_ROW_GROUP_ROWS=1000 SF_SINK_SUMMARY_JSON="$work/sink-summary-$1.json" \
    "$target/gcs-sink" >>"$logs/gcs-sink-$1.log" 2>&1 &
  pids[sink]=$!
}
metric() { # metric NAME: sum of a sink metric's samples (0 when absent)
  curl -sf "$metrics_url" 2>/dev/null | awk -v n="$1" 'index($0, n) == 1 {s += $NF} END {print s + 0}'
}
metric_at_least() { [ "$(metric "$1")" -ge "$2" ] 2>/dev/null; } # metric_at_least NAME MIN
wait_metric() { wait_for "$3" 0.2 metric_at_least "$1" "$2"; } # wait_metric NAME MIN TIMEOUT_S

produce_pipeline() {
  env "${common_env[@]}" "$target/sensorflow" create-topics --partitions 6 >>"$logs/topics.log" 2>&1 \
    || { log "creating topics failed"; return 1; }
  env "${common_env[@]}" SF_GROUP_ID="${pfx}window" SF_METRICS_ADDR=127.0.0.1:0 \
    "$target/window-processor" >>"$logs/window.log" 2>&1 &
  pids[window]=$!
  sleep 1
  env "${common_env[@]}" SF_GROUP_ID="${pfx}join" SF_METRICS_ADDR=127.0.0.1:0 \
    "$target/join-predict" >>"$logs/join.log" 2>&1 &
  pids[join]=$!
  env "${common_env[@]}" "$target/replay" --create-topics --partitions 6 --clients 12 \
    --rows-per-client 1440 --speed 2400 --input data/household_power.csv.xz \
    --summary-json "$work/replay.json" >>"$logs/replay.log" 2>&1 &
  pids[replay]=$!
  sleep 2
  start_sink 1
  # The first objects are finalised, then the sink dies mid-file (kill -9) and restarts.
  wait_metric sensorflow_sink_files_total 3 120 || { log "sink wrote no object"; return 1; }
  wait_metric sensorflow_records_in_total "$(( $(metric sensorflow_records_in_total) + 3000 ))" 60 || true
  log "kill -9 gcs-sink with $(metric sensorflow_sink_open_files) files open"
  stop_pid sink KILL
  # Restart at once, while the dead member is still in the group (its session expires 10 s
  # later): the broker rebalances when it expires, as for a crashed pod.
  start_sink 2
  wait_metric sensorflow_sink_files_total 2 120 || { log "restarted sink wrote no object"; return 1; }
  # The GCS server goes away for 15 s while data keeps flowing, then comes back.
  log "stopping fake-gcs-server for 15 s"
  stop_pid gcs KILL
  sleep 15
  local retries; retries=$(metric sensorflow_sink_upload_retries_total)
  start_gcs
  log "fake-gcs-server back; the sink had retried $retries times"
  [ "$retries" -gt 0 ] || { log "no upload was retried during the outage"; return 1; }
  wait "${pids[replay]}" || { log "replay failed"; return 1; }
  unset "pids[replay]"
  log "replay done: $(tr -d '\n ' < "$work/replay.json" | head -c 300)"
}
drain() {
  "$venv/bin/python" tests/sink/check.py wait --bootstrap "$bootstrap" --topics "$sink_topics" \
    --group "$group" --timeout 300 --stable 8
}
sigterm_exits_cleanly() {
  local retries; retries=$(metric sensorflow_sink_upload_retries_total)
  local pid="${pids[sink]}"
  kill -TERM "$pid"
  local st=0; wait "$pid" || st=$?
  unset "pids[sink]"
  log "gcs-sink exit status $st after SIGTERM; $(tail -1 "$logs/gcs-sink-2.log")"
  [ "$st" = 0 ] && [ "$retries" -gt 0 ]
}
reader_check() {
  rm -rf "$work/download"
  "$venv/bin/python" tests/sink/check.py verify --bootstrap "$bootstrap" --topics "$sink_topics" \
    --kinds "$kinds" --endpoint "$endpoint" --bucket "$bucket" --prefix "$prefix" \
    --download "$work/download" 2>&1 | tee "$logs/check.log"
  [ "${PIPESTATUS[0]}" = 0 ]
}
restart_found_uncommitted_objects() {
  # The restarted run finds objects only if the killed one had uploaded some it never
  # committed (a narrow window): it makes the same ranges again and its create-only uploads
  # are refused; either way the reader check above proves one copy.
  local found; found=$(grep -o '"already_stored": [0-9]*' "$work/sink-summary-2.json" | awk '{print $2}')
  log "the restarted sink found ${found:-?} objects already stored by the killed one"
  return 0
}

step "pipeline: replay → window → join, sink killed -9 mid-file and restarted, GCS down 15 s" produce_pipeline
step "sink catches up: every record of $sink_topics committed" drain
step "SIGTERM flushes, uploads, commits and exits 0 (after retrying uploads)" sigterm_exits_cleanly
step "independent reader check (pyarrow + DuckDB + kafka-python): exactly once, equal values" reader_check
restart_found_uncommitted_objects

teardown
trap - EXIT
suite_summary sink
