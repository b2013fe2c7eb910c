# Sourced: makes sure the Rust toolchain and the C build dependencies of the workspace are
# present (rdkafka builds its bundled librdkafka: needs a C compiler, make, perl, zlib, SSL).
if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) first"
apt_install build-essential pkg-config libssl-dev zlib1g-dev perl python3 python3-venv
