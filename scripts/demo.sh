#!/usr/bin/env bash
# The main job: the whole pipeline on the real household dataset through a real broker.
# Usage: scripts/demo.sh [--clients N | --full] [--speed S] [--keep] [--bootstrap HOST:PORT]
#   --clients N   days (clients) to replay, evenly spaced over the dataset (default 40)
#   --full        replay the whole dataset: 1,433 days with data, 6.1 M readings (docs/benchmarks.md, Scale)
#   --speed S     time compression (0 = full speed, default; 60 = one event-minute per second)
#   --keep        leave the broker running afterwards (data in .sensorflow/demo)
#   --bootstrap B use an existing Kafka cluster at B instead of starting the local broker; the
#                 KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_CA_LOCATION variables
#                 pass through to every binary; the nine topics are created if missing
#                 (SENSORFLOW_DEMO_REPLICATION, default 1) and are NOT deleted afterwards.
# Prints the wall time of each phase (Rust build, broker fetch, broker ready, pipeline) and the
# peak RSS of each process (VmHWM, read once the groups have drained) at the end.
. "$(dirname "$0")/lib.sh"
. "$REPO_ROOT/scripts/rust-env.sh"
clients=40; speed=0; keep=0; external=""
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients="$2"; shift 2 ;;
    --full) clients=0; shift ;;
    --speed) speed="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --bootstrap) external="$2"; shift 2 ;;
    -h|--help) usage_header "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
cd "$REPO_ROOT"
work="$REPO_ROOT/.sensorflow/demo"
"$REPO_ROOT/scripts/fetch-data.sh"
t_build=$(date +%s)
log "building the processors (release)"
cargo build --release --quiet -p sensorflow-apps -p sensorflow-tools -p sensorflow-sink --bins
bin="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
t_fetch=$(date +%s)
"$REPO_ROOT/scripts/broker.sh" stop "$work/broker" 2>/dev/null || true
rm -rf "$work"; mkdir -p "$work"
export KAFKA_BOOTSTRAP_SERVERS
if [ -n "$external" ]; then
  KAFKA_BOOTSTRAP_SERVERS="$external"
  log "using the Kafka cluster at $external (topics are kept)"
  t_ready=$(date +%s)
else
  export SENSORFLOW_BROKER_PORT="${SENSORFLOW_BROKER_PORT:-19092}"
  "$REPO_ROOT/scripts/install-kafka.sh" >/dev/null
  t_ready=$(date +%s)
  KAFKA_BOOTSTRAP_SERVERS="$("$REPO_ROOT/scripts/broker.sh" start "$work/broker")"
fi
t_pipeline=$(date +%s)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ "$keep" = 1 ] || [ -n "$external" ] || "$REPO_ROOT/scripts/broker.sh" stop "$work/broker"
}
trap cleanup EXIT
"$bin/sensorflow" create-topics --partitions 100 --replication "${SENSORFLOW_DEMO_REPLICATION:-1}"
# Days replayed together share one event-time clock, so the per-partition watermark applies.
SF_METRICS_ADDR=127.0.0.1:9101 "$bin/window-processor" >"$work/window-processor.log" 2>&1 & pids+=($!)
window_pid=$!
SF_METRICS_ADDR=127.0.0.1:9102 "$bin/join-predict" >"$work/join-predict.log" 2>&1 & pids+=($!)
join_pid=$!
# The sink archives SZ, FA, FI, FD and predictions as Parquet in a local directory.
# Files close after 5 s so the sink's group drains with the others.
SF_METRICS_ADDR=127.0.0.1:9103 "$bin/gcs-sink" --local-dir "$work/parquet" --max-age-seconds 5 \
  --summary-json "$work/sink.json" >"$work/gcs-sink.log" 2>&1 &
sink_pid=$!; pids+=($sink_pid)
log "processors started (logs: $work/*.log; metrics: http://127.0.0.1:9101/metrics, :9102/metrics)"
log "replaying $([ "$clients" = 0 ] && echo all || echo "$clients") days of the household dataset"
"$bin/replay" --input data/household_power.csv.xz --clients "$clients" --speed "$speed" \
  --summary-json "$work/replay.json"
"$bin/sensorflow" wait --group sensorflow-window=SZ --group sensorflow-join=SX,SY,FA,FI,FD --timeout-s 3600
started_ms=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["started_at_ms"])' "$work/replay.json")
drained_s=$(python3 -c "import time; print((time.time()*1000 - $started_ms)/1000)")
"$bin/sensorflow" wait --group sensorflow-sink=SZ,FA,FI,FD,predictions --timeout-s 3600
# Peak resident set of each process so far (VmHWM), MiB.
peak_rss() { awk '/^VmHWM:/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
rss="window-processor $(peak_rss "$window_pid"), join-predict $(peak_rss "$join_pid"), gcs-sink $(peak_rss "$sink_pid")"
# SIGTERM makes the sink finalise its open files, upload and commit.
kill -TERM "$sink_pid"; wait "$sink_pid" || die "gcs-sink failed (log: $work/gcs-sink.log)"
"$bin/sensorflow" summary --replay-summary "$work/replay.json" --drained-s "$drained_s" --json "$work/summary.json"
grep -h 'gcs-sink:' "$work/gcs-sink.log" | tail -1 | sed 's/^.*gcs-sink:/parquet (gcs-sink):       /'
echo "peak RSS (drained)         $rss"
log "summary also in $work/summary.json; Parquet files under $work/parquet (query them with DuckDB: processors/sink/README.md)"
t_end=$(date +%s)
log "wall time: Rust build $((t_fetch - t_build)) s, broker fetch $((t_ready - t_fetch)) s, broker ready $((t_pipeline - t_ready)) s, pipeline $((t_end - t_pipeline)) s"
