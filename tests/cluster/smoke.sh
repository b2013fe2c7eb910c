#!/usr/bin/env bash
# Proves tests/cluster/node.sh: up, real pods, down, and that down leaves the host as it was.
#
#   tests/cluster/smoke.sh [--cycles N] DIR    N × (up → checks → down → host checks), default 1
#   tests/cluster/smoke.sh --checks-only DIR   the pod checks against a node that is already up
#
# Pod checks (namespace sensorflow-smoke, image sensorflow/smoke:busybox-1.35-kubectl-vX.Y.Z =
# Debian's static busybox and our static kubectl, packed by scripts/oci-image.sh, cached in
# $SENSORFLOW_CACHE/images, loaded with `node.sh load`):
#   a pod becomes Running (and a second one Ready through an HTTP readiness probe);
#   it resolves kubernetes.default.svc.cluster.local (→ 10.96.0.1) via cluster DNS;
#   it reaches the apiserver at 10.96.0.1:443 with its ServiceAccount token and verifies it
#   with its ca.crt (kubectl's in-cluster config, as kube-rs's), and the host verifies the same
#   path with the pod's ca.crt (curl --cacert, no -k);
#   it reaches a TCP port on the host at the node IP (python3 -m http.server on 0.0.0.0);
#   it reaches the other pod through a Service ClusterIP by DNS name (kube-proxy DNAT), as does
#   the host; `kubectl logs` works (apiserver → kubelet, TLS verified with the CA).
# Host checks after `down`: no process that up started (control plane, containerd, shims,
# container processes) is alive, no mount under DIR or /run/sensorflow-node, no sfbr0,
# iptables/ip6tables rules and chains as before `up`, no kubepods cgroups, and `sysctl -a` equal
# to the snapshot taken before `up` (except counters that move on their own).
# Prints "smoke: N passed, M failed"; exit 1 on any failure, 3 when node.sh cannot run here.
# Uses host port 28080 for the HTTP server. Measured (2 cores, busy): --cycles 2 in ~61 s
# (each: up 10-11 s, pods Ready 1-2 s after creation, checks ~3 s, down 10-12 s).
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
here="$REPO_ROOT/tests/cluster"
kbin="$("$here/build-k8s.sh" --dir)"
cycles=1 checks_only=0
while [ $# -gt 1 ]; do
  case "$1" in
    --cycles) cycles="$2"; shift 2 ;;
    --checks-only) checks_only=1; shift ;;
    *) die "unknown flag $1" ;;
  esac
done
dir="${1:?usage: smoke.sh [--cycles N|--checks-only] DIR}"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
run=/run/sensorflow-node
ns=sensorflow-smoke
k8s_version="$(basename "$(dirname "$kbin")")"; k8s_version="${k8s_version#k8s-}"
image="sensorflow/smoke:busybox-1.35-kubectl-$k8s_version"
archive="$SENSORFLOW_CACHE/images/smoke-busybox-1.35-kubectl-$k8s_version.tar"
work="$(mktemp -d)"
# The HTTP server on the host is recorded in pids (tests/lib/suite.sh) and stopped by PID.
cleanup() { stop_pids; rm -rf "$work"; }
trap cleanup EXIT

# check NAME CMD...: one check counted in tests/lib/suite.sh's passed/failed, its output kept
# quiet unless it fails (step logs more: the node's checks are many and quick).
check() {
  local name="$1"; shift
  if "$@" >"$work/out" 2>&1; then
    passed=$((passed + 1)); log "✔ $name"
  else
    failed=$((failed + 1)); log "✘ $name"; sed 's/^/    /' "$work/out" | tail -15 >&2
  fi
}

busybox_image() {
  [ -s "$archive" ] && return 0
  apt_install busybox-static
  mkdir -p "$work/bb/bin" "$work/bb/tmp" "$(dirname "$archive")"
  chmod 1777 "$work/bb/tmp"
  cp /bin/busybox "$work/bb/bin/busybox"
  chroot "$work/bb" /bin/busybox --install -s /bin
  # busybox's own TLS client offers no signature_algorithms, i.e. SHA-1 only, which Go >= 1.25
  # servers refuse (RFC 9155): kubectl talks to the apiserver from the pod instead.
  "$here/build-k8s.sh" kubectl >/dev/null
  cp "$kbin/kubectl" "$work/bb/bin/kubectl"
  "$REPO_ROOT/scripts/oci-image.sh" --rootfs "$work/bb" --name "$image" --out "$archive.partial" \
    --entrypoint /bin/sh
  mv "$archive.partial" "$archive"
}

manifest() {
  cat <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $ns}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: $ns, labels: {app: web}}
spec:
  securityContext: {runAsUser: 65534, runAsGroup: 65534}
  containers:
  - name: httpd
    image: $image
    imagePullPolicy: Never
    command: [sh, -c, 'mkdir -p /tmp/www && echo smoke-web-ok > /tmp/www/index.html && echo serving && exec httpd -f -p 8080 -h /tmp/www']
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: $ns}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: $ns}
spec:
  securityContext: {runAsUser: 65534, runAsGroup: 65534}
  terminationGracePeriodSeconds: 1
  containers:
  - name: sh
    image: $image
    imagePullPolicy: Never
    command: [sleep, "3600"]
    env:
    - name: NODE_IP
      valueFrom: {fieldRef: {fieldPath: status.hostIP}}
EOF
}

# shellcheck disable=SC2016 # the single-quoted commands run in the pod's shell
pod_checks() {
  local kubeconfig="$1" node_ip port
  kc() { "$kbin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
  in_pod() { kc -n "$ns" exec client -- sh -c "$1"; }
  node_ip="$("$here/node.sh" addr "$dir")"
  busybox_image
  "$here/node.sh" load "$dir" "$archive" 2>/dev/null

  # A server on the host, as the e2e's Kafka broker will be: bound to 0.0.0.0.
  mkdir -p "$work/www"; echo host-ok > "$work/www/marker"
  port=28080
  python3 -m http.server "$port" --bind 0.0.0.0 --directory "$work/www" >/dev/null 2>&1 &
  pids[http]=$!

  kc delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
  # Pods are refused until the namespace's default ServiceAccount exists.
  kc create namespace "$ns" >/dev/null
  wait_for 20 0.2 kc -n "$ns" get serviceaccount default >/dev/null 2>&1 || true
  manifest | kc apply -f - >/dev/null
  local t0; t0=$(date +%s)
  check "pods Running and Ready" kc -n "$ns" wait --for=condition=Ready pod/client pod/web --timeout=120s
  log "pods ready $(( $(date +%s) - t0 )) s after creation"
  check "pod phase is Running" sh -c "[ \"\$(\"$kbin/kubectl\" --kubeconfig '$kubeconfig' -n $ns get pod client -o jsonpath='{.status.phase}')\" = Running ]"
  check "pod resolves kubernetes.default.svc.cluster.local via cluster DNS" \
    in_pod 'grep -q "nameserver 10.96.0.10" /etc/resolv.conf && nslookup kubernetes.default.svc.cluster.local | grep "Address: 10.96.0.1$"'
  check "pod reaches the apiserver at 10.96.0.1:443 with its ServiceAccount token, TLS verified with its ca.crt" \
    in_pod '[ "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT" = 10.96.0.1:443 ] && HOME=/tmp kubectl get --raw /api | grep -q APIVersions'
  in_pod 'cat /var/run/secrets/kubernetes.io/serviceaccount/ca.crt' > "$work/pod-ca.crt" 2>/dev/null || true
  in_pod 'cat /var/run/secrets/kubernetes.io/serviceaccount/token' > "$work/pod-token" 2>/dev/null || true
  # As kube-rs's in-cluster config connects: https://10.96.0.1:443 (IP SAN) or the DNS name.
  check "the pod's ca.crt and token verify https://10.96.0.1 and https://kubernetes.default.svc (from the host)" \
    sh -c "curl -fsS --max-time 5 --cacert '$work/pod-ca.crt' -H \"Authorization: Bearer \$(cat '$work/pod-token')\" https://10.96.0.1/api \
      && curl -fsS --max-time 5 --cacert '$work/pod-ca.crt' --resolve kubernetes.default.svc:443:10.96.0.1 \
           -H \"Authorization: Bearer \$(cat '$work/pod-token')\" https://kubernetes.default.svc/api"
  check "pod reaches a TCP port on the host at the node IP ($node_ip:$port)" \
    in_pod "[ \"\$NODE_IP\" = $node_ip ] && wget -q -O- http://\$NODE_IP:$port/marker | grep -qx host-ok"
  check "pod reaches another pod through a Service ClusterIP (web.$ns.svc.cluster.local:80)" \
    in_pod "wget -q -O- http://web.$ns.svc.cluster.local/ | grep -qx smoke-web-ok"
  check "host reaches the Service ClusterIP (kube-proxy OUTPUT rules)" \
    sh -c "curl -fsS --max-time 5 http://\$(\"$kbin/kubectl\" --kubeconfig '$kubeconfig' -n $ns get svc web -o jsonpath='{.spec.clusterIP}')/ | grep -qx smoke-web-ok"
  check "kubectl logs (apiserver → kubelet, TLS verified)" sh -c "\"$kbin/kubectl\" --kubeconfig '$kubeconfig' -n $ns logs web | grep -qx serving"
  stop_pid http
  kc delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
}

# Host state that `down` must give back; counters and per-boot randomness excluded.
sysctl_snapshot() {
  sysctl -a 2>/dev/null | awk '!/^(fs\.(dentry-state|file-nr|inode-nr|inode-state|aio-nr|quota\.)|kernel\.(random\.|ns_last_pid|pty\.nr)|net\.ipv4\.tcp_fastopen_key|net\.netfilter\.nf_conntrack_count|net\.ipv4\.route\.)/' | sort
}
# Rules and chains only: an empty table and a table never touched are the same host state.
ipt_snapshot() {
  local ipt
  for ipt in iptables ip6tables; do
    "$ipt-save" 2>/dev/null | awk '
      /^\*/ { t = $0; next }
      /^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT/ { next }
      /^(:|-A)/ { sub(/ \[[0-9]+:[0-9]+\]$/, ""); print t, $0 }' || true
  done
}

host_checks() {
  local before="$1" pids_file="$2"
  # (zombies count as gone: this VM's init reaps orphans only every ~2 s)
  check "no process started by up is alive" sh -c "for p in \$(cat '$pids_file'); do
      [ -e /proc/\$p ] && [ \"\$(sed 's/^.*) //; s/ .*//' /proc/\$p/stat)\" != Z ] && { ps -o pid,args -p \$p; exit 1; }; done; true"
  check "no process refers to DIR or $run" sh -c "! pgrep -af '$dir/|$run' | grep -v pgrep"
  check "no mounts left" sh -c "! grep -E ' ($dir|$run)/' /proc/self/mounts"
  check "bridge sfbr0 removed" sh -c "! ip link show sfbr0"
  check "iptables as before up" diff "$before/iptables" <(ipt_snapshot)
  check "no kubepods cgroups" sh -c "! ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null | grep ."
  check "sysctl -a as before up" diff "$before/sysctl" <(sysctl_snapshot)
}

if [ "$checks_only" = 1 ]; then
  pod_checks "$dir/kubeconfig"
else
  for i in $(seq 1 "$cycles"); do
    log "=== cycle $i/$cycles"
    mkdir -p "$work/before"
    sysctl_snapshot > "$work/before/sysctl"
    ipt_snapshot > "$work/before/iptables"
    t0=$(date +%s)
    set +e; kubeconfig="$("$here/node.sh" up "$dir")"; st=$?; set -e
    [ "$st" = 3 ] && { echo "smoke: skipped (this machine cannot run a kubelet)"; exit 3; }
    [ "$st" = 0 ] || { failed=$((failed + 1)); log "✘ node.sh up failed (exit $st)"; "$here/node.sh" down "$dir" || true; break; }
    log "cycle $i: up in $(( $(date +%s) - t0 )) s"
    pod_checks "$kubeconfig"
    # Everything that must be gone after down: recorded daemons, shims, container processes.
    { cat "$dir"/pids/*.pid 2>/dev/null
      pgrep -f "containerd-shim-runc-v2 .*-address $run/containerd.sock" || true
      cat /sys/fs/cgroup/pids/kubepods/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/cgroup.procs \
          /sys/fs/cgroup/pids/kubepods/*/*/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/*/*/cgroup.procs 2>/dev/null || true
    } | sort -u > "$work/pids"
    log "cycle $i: $(wc -l < "$work/pids") processes to be stopped by down"
    t0=$(date +%s)
    "$here/node.sh" down "$dir"
    log "cycle $i: down in $(( $(date +%s) - t0 )) s"
    host_checks "$work/before" "$work/pids"
  done
fi
suite_summary smoke
