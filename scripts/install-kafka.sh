#!/usr/bin/env bash
# Installs the Apache Kafka broker's jars from Maven Central, only when missing, and prints the
# directory that holds them (the broker's classpath is DIR/*).
#
#   scripts/install-kafka.sh
#
# What is fetched is scripts/kafka/pom.xml (one pinned Kafka version, its dependencies, the tools,
# log4j2 with the SLF4J binding): `mvn dependency:copy-dependencies` into
# $SENSORFLOW_CACHE/kafka-<version>/libs, with Maven's local repository under
# $SENSORFLOW_CACHE/m2 so a warm machine downloads nothing. ~10 s on a cold machine (54 MB).
# Needs Java >= 17 (Kafka 4) and Maven: installed from Debian when missing.
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
pom="$REPO_ROOT/scripts/kafka/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
[ -n "$version" ] || die "no <kafka.version> in $pom"
dest="$SENSORFLOW_CACHE/kafka-$version"
stamp="$dest/.pom-$(sha256sum "$pom" | cut -c1-16)"
if [ -f "$stamp" ] && [ -f "$dest/libs/kafka_2.13-$version.jar" ]; then echo "$dest/libs"; exit 0; fi

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  apt_install openjdk-17-jre-headless
fi
command -v mvn >/dev/null 2>&1 || apt_install maven
t0=$(date +%s)
log "fetching Apache Kafka $version from Maven Central (scripts/kafka/pom.xml)"
rm -rf "$dest"; mkdir -p "$dest"
mvn -B -q -Dstyle.color=never -f "$pom" -Dmaven.repo.local="$SENSORFLOW_CACHE/m2" \
  dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dest/libs" >&2 \
  || die "mvn could not fetch Apache Kafka $version (see the output above)"
[ -f "$dest/libs/kafka_2.13-$version.jar" ] || die "kafka_2.13-$version.jar missing after mvn"
touch "$stamp"
log "Apache Kafka $version: $(find "$dest/libs" -name '*.jar' | wc -l) jars in $(( $(date +%s) - t0 )) s"
echo "$dest/libs"
