#!/usr/bin/env bash
# Installs the tansu Kafka-protocol broker (0.6.0) into the cache, only when missing.
# Cold: ~25-30 min on 2 cores. Prints the binary's path on stdout.
. "$(dirname "$0")/lib.sh"
TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
root="$SENSORFLOW_CACHE/tansu-$TANSU_VERSION"
bin="$root/bin/tansu"
if [ ! -x "$bin" ]; then
  log "building tansu $TANSU_VERSION (cold build takes ~25-30 min; cached in $root)"
  apt_install pkg-config libssl-dev
  cargo install "tansu@$TANSU_VERSION" --locked --features libsql,dynostore --root "$root.partial" >&2
  strip "$root.partial/bin/tansu" || true
  rm -rf "$root" && mv "$root.partial" "$root"
fi
echo "$bin"
