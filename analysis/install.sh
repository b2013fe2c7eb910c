#!/usr/bin/env bash
# Installs what the analysis job needs, once, under $SENSORFLOW_CACHE (keyed by version), and
# prints two lines on stdout:
#   PYTHON=<venv python with pyspark, matplotlib, PyYAML, pyarrow, pandas, fake-gcs-server>
#   GCS_CONNECTOR_JAR=<the Hadoop GCS connector, shaded jar from Maven Central>
#
#   analysis/install.sh            both
#   analysis/install.sh --no-jar   the venv only (local-directory archives need no connector)
#
# The connector is com.google.cloud.bigdataoss:gcs-connector:$GCS_CONNECTOR_VERSION, classifier
# `shaded` (its Guava/gRPC/protobuf relocated, so it sits beside Spark's own jars), the 3.0 line
# that Dataproc 2.2/2.3 ship. Fetched with Maven (`dependency:copy`), Java 17 runs Spark.
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
. "$(dirname "$0")/../scripts/lib.sh"
GCS_CONNECTOR_VERSION="${GCS_CONNECTOR_VERSION:-3.0.4}"
want_jar=1
[ "${1:-}" = --no-jar ] && want_jar=0

req="$REPO_ROOT/analysis/requirements.txt"
key="$(sha256sum "$req" | cut -c1-12)"
venv="$SENSORFLOW_CACHE/venv-analysis-$key"
if [ ! -f "$venv/.installed" ]; then
  command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
  python3 -m venv "$venv" >/dev/null 2>&1 || { apt_install python3-venv; rm -rf "$venv"; python3 -m venv "$venv"; }
  log "pip install -r analysis/requirements.txt into $venv (pyspark is ~320 MB)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$venv/.installed"
fi
echo "PYTHON=$venv/bin/python"

if [ "$want_jar" = 1 ]; then
  jars="$SENSORFLOW_CACHE/jars"
  jar="$jars/gcs-connector-$GCS_CONNECTOR_VERSION-shaded.jar"
  if [ ! -s "$jar" ]; then
    command -v mvn >/dev/null 2>&1 || apt_install maven
    mkdir -p "$jars"
    log "mvn dependency:copy com.google.cloud.bigdataoss:gcs-connector:$GCS_CONNECTOR_VERSION:jar:shaded"
    # A scratch directory: the plugin needs no project, and nothing is written to the repo.
    ( cd "$(mktemp -d)" && mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
        -Dartifact="com.google.cloud.bigdataoss:gcs-connector:$GCS_CONNECTOR_VERSION:jar:shaded" \
        -DoutputDirectory="$jars" >&2 )
    [ -s "$jar" ] || die "gcs-connector jar not found at $jar after mvn dependency:copy"
  fi
  echo "GCS_CONNECTOR_JAR=$jar"
fi
