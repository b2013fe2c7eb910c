#!/usr/bin/env bash
# Prints the benchmark figures quoted in the README, on this machine:
#   1. the pure window engine (readings/s on one core, state bytes per buffered reading)
#   2. through a real Apache Kafka broker: raw rdkafka consume rate vs window-processor rate on the same
#      topic, and SZ -> prediction latency at half of the maximum rate.
# Usage: scripts/bench.sh [--engine-only] [--readings N]
. "$(dirname "$0")/lib.sh"
. "$REPO_ROOT/scripts/rust-env.sh"
cd "$REPO_ROOT"
engine_only=0; readings=200000
while [ $# -gt 0 ]; do
  case "$1" in
    --engine-only) engine_only=1; shift ;;
    --readings) readings="$2"; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
cargo build --release --quiet -p sensorflow-runtime --bins
bin="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
echo "== sensorflow-bench on $(nproc) cores, $(date -u +%Y-%m-%d) =="
"$bin/sensorflow-bench" engine
[ "$engine_only" = 1 ] && exit 0
work="$REPO_ROOT/.sensorflow/bench"
"$REPO_ROOT/scripts/broker.sh" stop "$work/broker" >/dev/null 2>&1 || true
rm -rf "$work"; mkdir -p "$work"
export SENSORFLOW_BROKER_PORT="${SENSORFLOW_BENCH_BROKER_PORT:-19392}"
bootstrap="$("$REPO_ROOT/scripts/broker.sh" start "$work/broker")"
trap '"$REPO_ROOT/scripts/broker.sh" stop "$work/broker"' EXIT
"$bin/sensorflow-bench" broker --bootstrap-servers "$bootstrap" --bin-dir "$bin" --readings "$readings"
