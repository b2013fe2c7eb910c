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
