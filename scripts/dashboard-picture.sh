#!/usr/bin/env bash
# Renders the chart's Grafana dashboard (charts/sensorflow-operator/dashboards/sensorflow.json)
# as docs/dashboard.png from a real run. Run by hand, not by CI:
#
#   scripts/dashboard-picture.sh [--out FILE] [--samples SCRAPES.json]
#
# It builds the release binaries, starts Apache Kafka (scripts/broker.sh) on
# SENSORFLOW_PICTURE_BROKER_PORT (default 19502, and the three ports after it), runs two
# window-processor members, join-predict and gcs-sink (local directory) with ExactlyOnce on the
# host, replays a day of 24 household clients paced at 720x (~2 min), sends malformed records to
# SZ, kill -9s one window member and restarts it, and scrapes each process's /metrics every 2 s
# (ports SENSORFLOW_PICTURE_METRICS_PORT, default 19510, and the three after it).
# scripts/dashboard_picture.py then evaluates every panel's PromQL over those scrapes and draws
# the panels where the dashboard puts them. The scrapes are kept in .sensorflow/picture/
# scrapes.json; --samples redraws from such a file without running anything.
# The run that made docs/dashboard.png (2026-12-07) took 396 s: cargo and the broker's start
# 3.5 min (cargo rebuilt shared crates for another feature set, which the build line below now
# avoids), the run and the drawing 157 s. Python: matplotlib and kafka-python in a venv
# ($SENSORFLOW_CACHE/venv-picture).
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=scripts/rust-env.sh
. "$REPO_ROOT/scripts/rust-env.sh"
cd "$REPO_ROOT"
out="$REPO_ROOT/docs/dashboard.png" samples=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --samples) samples="$2"; shift 2 ;;
    -h|--help) usage_header "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
work="$REPO_ROOT/.sensorflow/picture"
venv="$SENSORFLOW_CACHE/venv-picture"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib, kafka' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet matplotlib==3.11.2 kafka-python==3.0.12
fi
py=("$venv/bin/python" scripts/dashboard_picture.py --dashboard charts/sensorflow-operator/dashboards/sensorflow.json
    --out "$out" --work "$work" --bin "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
    --input data/household_power.csv.xz --metrics-port "${SENSORFLOW_PICTURE_METRICS_PORT:-19510}")
if [ -n "$samples" ]; then
  mkdir -p "$work"
  exec "${py[@]}" --bootstrap unused --samples "$samples"
fi
scripts/fetch-data.sh >/dev/null
# The package and binary set of scripts/build-images.sh: cargo resolves the same features, so this
# is a no-op after an image build (another set rebuilds the shared crates, ~3 min here).
cargo build --release --quiet -p sensorflow-operator -p sensorflow-apps -p sensorflow-tools -p sensorflow-sink \
  --bin sensorflow-operator --bin window-processor --bin join-predict --bin gcs-sink --bin replay --bin sensorflow
scripts/install-kafka.sh >/dev/null
scripts/broker.sh stop "$work/broker" 2>/dev/null || true
rm -rf "$work" && mkdir -p "$work"
trap 'scripts/broker.sh stop "$work/broker" >/dev/null 2>&1 || true' EXIT
bootstrap="$(SENSORFLOW_BROKER_PORT="${SENSORFLOW_PICTURE_BROKER_PORT:-19502}" scripts/broker.sh start "$work/broker")"
"${py[@]}" --bootstrap "$bootstrap"
