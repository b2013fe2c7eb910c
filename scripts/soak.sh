#!/usr/bin/env bash
# The long version of the one-outcome-per-input test (processors/apps/tests/jitter.rs), sized
# for an afternoon instead of CI: jittered SX/SY clocks, kill -9 rounds and refused deliveries
# in both delivery modes, every input record traced to its outcomes.
#
#   scripts/soak.sh [MINUTES]   event-minutes of stream per scenario (default 720: 12 h of
#                               readings from 48 clients, 34,560 records per input topic)
#
# Sending is paced at 250 ms per event-minute: 600 minutes (the issue-24 scenario, 28,800 SZ
# readings) took 629 s for the four scenarios on the 2-core development machine.
#
# Starts its own broker in .sensorflow/soak/broker (port SENSORFLOW_SOAK_BROKER_PORT, default
# 19392) and stops it on exit. Every wait inside the test has a timeout.
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
. "$REPO_ROOT/scripts/rust-env.sh"
case "${1:-}" in -h|--help) usage_header "$0"; exit 0 ;; esac
minutes="${1:-720}"
[[ "$minutes" =~ ^[0-9]+$ ]] || die "MINUTES must be a whole number, got '$minutes'"
cd "$REPO_ROOT"
dir="$REPO_ROOT/.sensorflow/soak/broker"
stop() { "$REPO_ROOT/scripts/broker.sh" stop "$dir" >/dev/null 2>&1 || true; }
trap stop EXIT
cargo build --profile "$SENSORFLOW_CARGO_PROFILE" --quiet -p sensorflow-apps -p sensorflow-tools --bins
stop; rm -rf "$dir"
export SENSORFLOW_BROKER_PORT="${SENSORFLOW_SOAK_BROKER_PORT:-19392}"
SENSORFLOW_TEST_BOOTSTRAP="$("$REPO_ROOT/scripts/broker.sh" start "$dir")"
export SENSORFLOW_TEST_BOOTSTRAP SENSORFLOW_JITTER_MINUTES="$minutes"
log "soak: $minutes event-minutes per scenario, four scenarios (AtLeastOnce/ExactlyOnce, with and without faults)"
cargo test --profile "$SENSORFLOW_CARGO_PROFILE" -p sensorflow-apps --test jitter -- --ignored --test-threads=1 --nocapture
