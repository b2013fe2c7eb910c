#!/usr/bin/env bash
# A Docker engine for kind: the caller's when one answers, else one of our own on a private
# socket, started here and stopped by `down`.
#
#   tests/cluster/docker.sh up DIR     prints the DOCKER_HOST to use on stdout (logs on stderr)
#   tests/cluster/docker.sh down DIR   stops the engine `up` started (by its PID; nothing when
#                                      `up` found the caller's engine), restores the sysctls
#   tests/cluster/docker.sh status DIR "own running", "own stopped" or "external DOCKER_HOST"
#
# `up` first asks the engine the caller's environment points at (DOCKER_HOST, else
# /var/run/docker.sock): when it answers, that engine is used and never stopped or changed
# (a developer's Docker Desktop or dockerd). Otherwise, as root, it apt-installs docker.io
# (Docker 20.10, containerd 1.6, runc 1.1 on bookworm) and starts dockerd with:
#   - everything private: socket /run/sensorflow-docker/docker.sock, exec root and PID file under
#     /run/sensorflow-docker, data root $SENSORFLOW_CACHE/docker (kept between runs: it caches
#     the kind node image), its own managed containerd under the exec root, no
#     /etc/docker/daemon.json; the host's other engines and containerds are not touched
#   - no default bridge (docker0) and no iptables, ip_forward or masquerade changes on the host
#     (`--bridge none --iptables=false --ip-forward=false`): kind's nodes sit on their own bridge
#     network, reach the host at its gateway and publish the API server through docker-proxy
#   - as default runtime a runc wrapper (DIR/bin/sf-runc) that removes CAP_SYS_RESOURCE from the
#     OCI spec of every container and exec before calling Debian's runc: this VM's root lacks
#     that capability, so every --privileged container (kind's nodes) otherwise fails with
#     "unable to apply caps: operation not permitted"
# Kernel settings: a privileged container (a kind node: systemd, kubelet) can change the host's
# global sysctls (kernel.*, vm.*, fs.*). `up` records them (DIR/sysctl.before, all of
# kernel/vm/fs that are writable), `down` writes back each one that differs from the record,
# unless someone else changed it again since (DIR/sysctl.ours: the values seen when the engine
# was last used, written by `mark`).
#   tests/cluster/docker.sh mark DIR   records the sysctls as the cluster left them (call it
#                                      after the cluster is up; `down` restores only those still
#                                      at these values)
#
# Env: SENSORFLOW_DOCKER_OWN=1 never uses the caller's engine (a private one even when one
# answers). Measured on the 2-core VM: apt-get install docker.io 13 s; dockerd answers after 2-4 s;
# `down` 2-12 s.
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
cmd="${1:-}"; dir="${2:-}"
if [ -z "$cmd" ] || [ -z "$dir" ]; then usage_header "$0" >&2; exit 2; fi
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
run=/run/sensorflow-docker
sock="unix://$run/docker.sock"
data_root="$SENSORFLOW_CACHE/docker"
pid_dir="$dir/pids"

# The global kernel settings a privileged container may write: kernel.*, vm.*, fs.* that are
# writable and not counters or random values.
global_sysctls() {
  local f k
  for f in $(find /proc/sys/kernel /proc/sys/vm /proc/sys/fs -type f -perm -u+w -perm -u+r 2>/dev/null | sort); do
    k="${f#/proc/sys/}"; k="${k//\//.}"
    case "$k" in
      kernel.random.*|kernel.ns_last_pid|kernel.sched_domain.*|fs.binfmt_misc.*|kernel.usermodehelper.*|vm.drop_caches|vm.compact_memory|kernel.sysrq_trigger|fs.dentry-state|kernel.hung_task_*|vm.stat_refresh) continue ;;
    esac
    printf '%s=%s\n' "$k" "$(tr '\t\n' '  ' < "$f" 2>/dev/null | sed 's/ *$//')"
  done 2>/dev/null
}

# The engine the caller's environment points at answers (and is not our own from a previous run).
external_engine() {
  [ "${SENSORFLOW_DOCKER_OWN:-0}" = 1 ] && return 1
  command -v docker >/dev/null || return 1
  [ "${DOCKER_HOST:-}" = "$sock" ] && return 1
  timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

write_runtime_wrapper() {
  mkdir -p "$dir/bin"
  cat > "$dir/bin/sf-runc.partial" <<'EOF'
#!/usr/bin/env python3
# dockerd's default runtime on this VM (tests/cluster/docker.sh): removes CAP_SYS_RESOURCE, which
# the VM's root lacks, from the OCI spec (create/run: BUNDLE/config.json) or process file
# (exec --process FILE) docker hands to runc, then runs Debian's runc with the same arguments.
import json, os, sys
CAP = "CAP_SYS_RESOURCE"
RUNC = "/usr/sbin/runc"

def strip(process):
    caps = process.get("capabilities") or {}
    for k, v in caps.items():
        if isinstance(v, list):
            caps[k] = [c for c in v if c != CAP]

def rewrite(path, in_spec):
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return
    strip(doc.get("process", {}) if in_spec else doc)
    tmp = path + ".sf-runc"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)

args = sys.argv[1:]
sub, i = None, 0
while i < len(args):
    a = args[i]
    if a in ("create", "run", "exec"):
        sub = a
        break
    # global flags with a value (runc --root R --log L --log-format F ...)
    if a in ("--root", "--log", "--log-format", "--criu", "--rootless") and "=" not in a:
        i += 2
        continue
    i += 1
if sub in ("create", "run"):
    bundle = "."
    rest = args[i + 1:]
    for j, a in enumerate(rest):
        if a in ("--bundle", "-b") and j + 1 < len(rest):
            bundle = rest[j + 1]
        elif a.startswith("--bundle="):
            bundle = a.split("=", 1)[1]
    rewrite(os.path.join(bundle, "config.json"), True)
elif sub == "exec":
    rest = args[i + 1:]
    for j, a in enumerate(rest):
        if a in ("--process", "-p") and j + 1 < len(rest):
            rewrite(rest[j + 1], False)
        elif a.startswith("--process="):
            rewrite(a.split("=", 1)[1], False)
os.execv(RUNC, [RUNC] + args)
EOF
  chmod 0755 "$dir/bin/sf-runc.partial"
  mv "$dir/bin/sf-runc.partial" "$dir/bin/sf-runc"
}

up() {
  local t0; t0=$(date +%s)
  if external_engine; then
    log "using the Docker engine at ${DOCKER_HOST:-unix:///var/run/docker.sock} ($(docker version --format '{{.Server.Version}}'))"
    echo "external ${DOCKER_HOST:-unix:///var/run/docker.sock}" > "$dir/engine"
    echo "${DOCKER_HOST:-unix:///var/run/docker.sock}"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "no Docker engine answers and starting one needs root"
  echo "own $sock" > "$dir/engine"
  mkdir -p "$run" "$pid_dir" "$data_root" "$dir/logs"
  if running dockerd && DOCKER_HOST="$sock" timeout 10 docker info >/dev/null 2>&1; then
    log "dockerd already running (PID $(cat "$pid_dir/dockerd.pid"), $sock)"
    echo "$sock"; return 0
  fi
  [ -f "$run/dockerd.pid" ] && alive "$(cat "$run/dockerd.pid")" \
    && die "a dockerd started from another DIR runs on $sock (PID $(cat "$run/dockerd.pid")): tests/cluster/docker.sh down that DIR first"
  apt_install docker.io python3 iproute2
  command -v docker >/dev/null || die "no docker CLI after installing docker.io"
  write_runtime_wrapper
  # Only before the first `up` after a `down`: a crashed run's record holds the true originals.
  if [ ! -f "$dir/sysctl.before" ]; then
    global_sysctls > "$dir/sysctl.before.partial" && mv "$dir/sysctl.before.partial" "$dir/sysctl.before"
    # Host paths that `docker run -v` creates when missing (kind mounts /lib/modules; this VM
    # has none): removed by `down` when empty.
    if [ -e /lib/modules ]; then : > "$dir/created-dirs"; else echo /lib/modules > "$dir/created-dirs"; fi
  fi
  echo '{}' > "$dir/daemon.json"
  log "starting dockerd (socket $sock, data root $data_root, log $dir/logs/dockerd.log)"
  dockerd --config-file "$dir/daemon.json" -H "$sock" --data-root "$data_root" \
    --exec-root "$run/exec" --pidfile "$run/dockerd.pid" \
    --bridge none --iptables=false --ip-forward=false --ip-masq=false \
    --storage-driver overlay2 --exec-opt native.cgroupdriver=cgroupfs \
    --add-runtime "sf-runc=$dir/bin/sf-runc" --default-runtime sf-runc \
    </dev/null >>"$dir/logs/dockerd.log" 2>&1 &
  echo $! > "$pid_dir/dockerd.pid"
  local ok=""
  for _ in $(seq 1 120); do
    running dockerd || die_tail "$dir/logs/dockerd.log" 30 "dockerd exited (log: $dir/logs/dockerd.log)"
    if DOCKER_HOST="$sock" timeout 5 docker info >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
  done
  [ -n "$ok" ] || die_tail "$dir/logs/dockerd.log" 30 "dockerd did not answer on $sock within 60 s"
  log "dockerd $(DOCKER_HOST="$sock" docker version --format '{{.Server.Version}}') ready in $(( $(date +%s) - t0 )) s ($(DOCKER_HOST="$sock" docker info --format '{{.Driver}}, cgroup {{.CgroupVersion}} {{.CgroupDriver}}'))"
  echo "$sock"
}

mark() {
  grep -q '^own ' "$dir/engine" 2>/dev/null || return 0
  global_sysctls > "$dir/sysctl.ours"
}

restore_sysctls() {
  [ -f "$dir/sysctl.before" ] || return 0
  local k v now ours n=0
  while IFS='=' read -r k v; do
    now="$(tr '\t\n' '  ' < "/proc/sys/${k//.//}" 2>/dev/null | sed 's/ *$//')" || continue
    [ "$now" = "$v" ] && continue
    if [ -f "$dir/sysctl.ours" ]; then
      ours="$(grep -m1 "^$k=" "$dir/sysctl.ours" | cut -d= -f2-)"
      # changed after the cluster came up, by someone else: theirs to keep
      [ "$now" = "$ours" ] || { log "leaving $k=$now (changed by someone else since; was $v)"; continue; }
    fi
    if printf '%s' "$v" > "/proc/sys/${k//.//}" 2>/dev/null; then
      log "restored $k=$v (was $now)"; n=$((n + 1))
    else
      log "could not restore $k=$v (now $now)"
    fi
  done < "$dir/sysctl.before"
  log "kernel settings: $n restored"
  rm -f "$dir/sysctl.before" "$dir/sysctl.ours"
}

down() {
  local t0; t0=$(date +%s)
  set +e
  if grep -q '^external ' "$dir/engine" 2>/dev/null; then
    log "the Docker engine was the caller's: left running"; rm -f "$dir/engine"; return 0
  fi
  if running dockerd; then
    local pid; pid="$(cat "$pid_dir/dockerd.pid")"
    # Containers left on our own engine are ours (kind deletes its nodes first); the kind
    # network's bridge goes with it, so no interface stays behind.
    local left; mapfile -t left < <(DOCKER_HOST="$sock" timeout 20 docker ps -aq 2>/dev/null)
    if [ ${#left[@]} -gt 0 ]; then
      log "removing containers left on our engine: ${left[*]}"
      DOCKER_HOST="$sock" timeout 120 docker rm -f -v "${left[@]}" >/dev/null 2>&1
    fi
    for n in $(DOCKER_HOST="$sock" timeout 20 docker network ls --filter type=custom -q 2>/dev/null); do
      DOCKER_HOST="$sock" timeout 20 docker network rm "$n" >/dev/null 2>&1
    done
    log "stopping dockerd (PID $pid)"
    stop_one dockerd 30
    # Its managed containerd and shims exit with it; any left (killed dockerd) are ours: found by
    # their socket path under our exec root.
    for p in $(pgrep -f -- "$run/exec/containerd" || true); do kill -9 "$p" 2>/dev/null; done
  fi
  awk '{print $2}' /proc/self/mounts | grep -E "^($run|$data_root)/" | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
  restore_sysctls
  if [ -f "$dir/created-dirs" ]; then
    while read -r d; do [ -n "$d" ] && rmdir "$d" 2>/dev/null; done < "$dir/created-dirs"
    rm -f "$dir/created-dirs"
  fi
  rm -rf "$run" "$dir/engine"
  log "Docker engine stopped in $(( $(date +%s) - t0 )) s"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  mark) mark ;;
  status)
    if grep -q '^external ' "$dir/engine" 2>/dev/null; then cut -d' ' -f1- "$dir/engine"
    elif running dockerd; then echo "own running"; else echo "own stopped"; fi ;;
  *) usage_header "$0" >&2; exit 2 ;;
esac
