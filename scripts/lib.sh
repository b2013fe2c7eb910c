# Shared helpers for SensorFlow scripts. Source it: `. scripts/lib.sh`.
# Everything heavy is cached under $SENSORFLOW_CACHE (default ~/.cache/sensorflow),
# keyed by version, so warm runs skip the builds.
set -euo pipefail
SENSORFLOW_CACHE="${SENSORFLOW_CACHE:-$HOME/.cache/sensorflow}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$SENSORFLOW_CACHE"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# Prints a script's --help: its header comment (after the shebang, up to the first line that is
# not a comment; shellcheck directives left out).
usage_header() { awk 'NR == 1 { next } !/^#/ { exit } /^# shellcheck/ { next } { sub(/^# ?/, ""); print }' "$1"; }

# wait_crd_established SECONDS KUBECTL...: waits until the SensorPipeline CRD is Established,
# asking with the kubectl command line given (a command or function and its flags). `kubectl
# wait --for condition=Established` fails at once, instead of waiting, while a CRD just
# applied has no status.conditions yet ("accessor error: <nil>"), which a large CRD makes
# likely.
wait_crd_established() {
  local timeout="$1"; shift
  local deadline=$(( $(date +%s) + timeout ))
  until [ "$("$@" get crd sensorpipelines.sensorflow.io \
      -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { log "the SensorPipeline CRD is not Established after $timeout s"; return 1; }
    sleep 0.5
  done
}

# apt_install PKG...: installs the Debian packages that are missing (runs `apt-get update` once).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  mkdir -p "$SENSORFLOW_CACHE"
  # Scripts run side by side (CI builds images while a node starts): one apt-get at a time.
  (
    flock 9
    if [ ! -f "$SENSORFLOW_CACHE/.apt-updated" ] || [ -n "$(find "$SENSORFLOW_CACHE/.apt-updated" -mmin +720)" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq && touch "$SENSORFLOW_CACHE/.apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ) 9>"$SENSORFLOW_CACHE/.apt.lock"
}
