#!/usr/bin/env bash
# The analysis step: the PySpark job (analysis/sensorflow_analysis.py) over a gcs-sink archive,
# by default the one `./run.sh demo` wrote. Prints the summary; the report (PNGs, summary.json,
# model-patch.yaml, CSVs, labelled predictions) goes to the output directory.
# Usage: scripts/analyze.sh [--archive DIR|gs://BUCKET/PREFIX] [--output DIR] [JOB OPTIONS…]
#   --archive A   the archive (default .sensorflow/demo/parquet, the demo's)
#   --output D    the report directory (default .sensorflow/analysis)
#   other options go to the job (python analysis/sensorflow_analysis.py --help), e.g.
#   --exceed 4 --horizon-min 15, --manifest examples/sensorpipeline.yaml, --gcs-endpoint URL
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
archive=".sensorflow/demo/parquet"; output=".sensorflow/analysis"; rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --archive) archive="$2"; shift 2 ;;
    --output) output="$2"; shift 2 ;;
    -h|--help) usage_header "$0"; exit 0 ;;
    *) rest+=("$1"); shift ;;
  esac
done
case "$archive" in
  gs://*) eval "$("$REPO_ROOT/analysis/install.sh")" ;;          # PYTHON, GCS_CONNECTOR_JAR
  *)
    [ -d "$archive" ] || die "no archive at $archive: run ./run.sh demo first (or pass --archive)"
    eval "$("$REPO_ROOT/analysis/install.sh" --no-jar)" ;;       # PYTHON
esac
log "analysing $archive (Spark local[2]; report in $output)"
# The demo replays the household dataset: every client is a calendar day on one common clock,
# so the time-based split is by client (day) order; later options override it.
SF_GCS_CONNECTOR_JAR="${GCS_CONNECTOR_JAR:-}" "$PYTHON" analysis/sensorflow_analysis.py \
  --archive "$archive" --output "$output" --split-by client "${rest[@]}"
log "report: $output/{summary.txt,summary.json,model-patch.yaml,alert_rate_by_hour.png,roc.png,feature_bins.png,latency.png}"
