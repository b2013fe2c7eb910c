# Sourced: makes sure the Rust toolchain and the C build dependencies of the workspace are
# present (rdkafka builds its bundled librdkafka: needs a C compiler, make, perl, zlib, SSL).
if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) first"
apt_install build-essential pkg-config libssl-dev zlib1g-dev perl python3 python3-venv

# One cargo profile for everything the scripts build (tests, demo, bench, images): a cold CI
# machine then compiles the workspace once, not once per profile. `release` by default (what
# the images ship); SENSORFLOW_CARGO_PROFILE=dev gives debug assertions and quicker rebuilds
# while developing.
export SENSORFLOW_CARGO_PROFILE="${SENSORFLOW_CARGO_PROFILE:-release}"
if [ "$SENSORFLOW_CARGO_PROFILE" = dev ]; then _sf_profile_dir=debug; else _sf_profile_dir="$SENSORFLOW_CARGO_PROFILE"; fi
# Where the built binaries land.
export SENSORFLOW_TARGET_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/$_sf_profile_dir"
unset _sf_profile_dir

# The workspace's binaries in SENSORFLOW_TARGET_BIN are copies ("uplifts") of the last build of
# each, and cargo does not copy its build again when that build is fresh. In a target dir shared
# by two checkouts (CI's clean clone and a working tree share $SENSORFLOW_CACHE/target), the copy
# can be the *other* checkout's build: a test then runs another branch's window-processor (seen:
# an exactly-once test failing on code that had the fix). Deleting the copies once per top-level
# script makes cargo put this checkout's builds back on its next build.
if [ -z "${SENSORFLOW_BINS_REFRESHED:-}" ] && [ -d "$SENSORFLOW_TARGET_BIN" ]; then
  for _sf_bin in $(cd "$REPO_ROOT" && cargo metadata --no-deps --format-version 1 --offline 2>/dev/null |
      python3 -c 'import json, sys; print(" ".join(t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "bin" in t["kind"]))'); do
    rm -f "$SENSORFLOW_TARGET_BIN/$_sf_bin"
  done
  unset _sf_bin
  export SENSORFLOW_BINS_REFRESHED=1
fi
