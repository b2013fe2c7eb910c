#!/usr/bin/env bash
# SensorFlow entry point. Everything it needs is installed by the scripts it calls.
#
#   ./run.sh demo [--clients N | --full] [--speed S] [--keep]
#        Runs the pipeline on the real household dataset through a local Apache Kafka broker:
#        builds, starts the broker, creates the topics (100 partitions), starts
#        window-processor and join-predict, replays the data and prints a summary.
#   ./run.sh test     Runs every test against real components: unit + property, integration
#                     against a real Apache Kafka broker, an independent (non-librdkafka)
#                     client, the GCS sink, operator scenarios against a real kube-apiserver,
#                     end to end on a real Kubernetes node, the analysis (see --help).
#   ./run.sh bench    Prints the benchmark figures of docs/benchmarks.md.
#   ./run.sh analyze [--archive DIR|gs://…] [--output DIR]
#                     After `demo`: the PySpark analysis of its Parquet archive, a model trained
#                     from it and a report (analysis/README.md).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/lib.sh

usage() { usage_header "$0"; }

case "${1:-}" in
  demo) shift; exec scripts/demo.sh "$@" ;;
  test) shift; exec scripts/test.sh "$@" ;;
  bench) shift; exec scripts/bench.sh "$@" ;;
  analyze) shift; exec scripts/analyze.sh "$@" ;;
  -h|--help|help|"") usage ;;
  *) usage >&2; exit 2 ;;
esac
