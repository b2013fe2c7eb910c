#!/usr/bin/env bash
# A kind-equivalent single-node Kubernetes cluster without Docker (the release pinned in
# tests/cluster/modules/kubernetes/go.mod): real Pods in real runc containers, on this machine,
# as root.
#
#   tests/cluster/node.sh up DIR        start everything (if not running), wait until the node is
#                                      Ready and cluster DNS answers, print DIR/kubeconfig's path
#                                      on stdout (logs on stderr; "node ready in N s")
#   tests/cluster/node.sh down DIR      stop what `up` started (by recorded PID): containers get
#                                      SIGTERM, SIGKILL after $SENSORFLOW_NODE_STOP_GRACE s (5);
#                                      unmount, remove the bridge, the KUBE-*/CNI-* iptables
#                                      chains and kubelet's cgroups, restore the sysctls, delete
#                                      the cluster state (next `up` = a fresh cluster, like kind
#                                      delete + create); DIR/logs stays
#   tests/cluster/node.sh status DIR    one line per component: running/stopped
#   tests/cluster/node.sh addr DIR      the node IP: pods reach services bound on the host at it
#                                      (e.g. a Kafka broker listening on 0.0.0.0)
#   tests/cluster/node.sh load DIR ARCHIVE...   import docker-archive tarballs into containerd's
#                                      k8s.io namespace (pods: imagePullPolicy IfNotPresent/Never)
#
# Exit 3 from `up`: this machine cannot run a kubelet (not root, no memory cgroup, no overlayfs,
# no network admin rights); callers print a skip message.
#
# cgroups: this recipe runs on cgroup v1 (the development and CI machines) with the cgroupfs
# driver (no systemd). Kubernetes 1.35+ refuses cgroup v1 unless the kubelet config says
# `failCgroupV1: false`, which this script writes (see tests/cluster/README.md).
#
# What runs (all state in DIR, sockets and runtime state in /run/sensorflow-node):
#   etcd, kube-apiserver, kube-controller-manager   tests/cluster/control-plane.sh, same DIR,
#        apiserver on 0.0.0.0:26443 advertising the node IP (the `kubernetes` Service 10.96.0.1:443
#        → NODE_IP:26443), serving certificate and the pods' ca.crt from DIR/pki/ca.crt
#   kube-scheduler (127.0.0.1:20259)
#   containerd v2 (build-k8s.sh --node; config version 4 in DIR/containerd; CRI: cgroupfs,
#        restrict_oom_score_adj, netns under its state dir, no NRI, CDI specs under DIR; sandbox
#        image sensorflow.test/pause:<k8s version> = the release's build/pause/linux/pause.c
#        built with gcc -static), runc from Debian
#   kubelet (NODE_IP:20250, healthz 127.0.0.1:20248; client certificate system:node:NAME; root
#        dir DIR/kubelet; cgroupfs, failCgroupV1 false, failSwapOn false, clusterDNS 10.96.0.10,
#        image GC off)
#   CNI: bridge sfbr0 + host-local 10.244.0.0/24 + portmap (+ loopback), masquerade, hairpin
#   kube-proxy (iptables mode, healthz 127.0.0.1:20256, metrics 127.0.0.1:20249, leaves
#        conntrack sysctls alone)
#   cluster DNS: Service kube-system/kube-dns 10.96.0.10:53 whose EndpointSlice points at dnsmasq on
#        NODE_IP:10053; dnsmasq answers cluster.local from a hosts file that dns-sync.py keeps in
#        step with Services/Endpoints (A records for ClusterIP and headless Services, no SRV) and
#        forwards other names to the host's resolvers
# One node per machine (the bridge, iptables and kubelet's cgroups are global): `up` refuses
# while another DIR's node runs.
#
# Env: SENSORFLOW_NODE_IP (default: the source address of the default route),
#      SENSORFLOW_NODE_NAME (default sensorflow-node),
#      SENSORFLOW_NODE_API_PORT (26443), SENSORFLOW_NODE_ETCD_PORT (22379, peer +1),
#      SENSORFLOW_NODE_KCM_PORT (20257): distinct from control-plane.sh's defaults, so the
#      operator tests' control plane can run at the same time;
#      SENSORFLOW_NODE_STOP_GRACE (5 s, `down`).
# Cache ($SENSORFLOW_CACHE): k8s-vX.Y.Z/bin (build-k8s.sh --node), images/pause-vX.Y.Z.tar.
#
# Pods reach the host at NODE_IP (the bridge routes to it): a service bound to 0.0.0.0 there
# is reachable unless a host firewall drops INPUT from 10.244.0.0/24.
#
# Measured on the 2-core machine (others' cargo builds running): warm `up` 10-14 s ("node ready
# in N s": apiserver ready ~6 s, controller-manager's first ServiceAccount ~2 s, kubelet Ready a
# few s later; containerd, kubelet & co. start while the control plane does), `down` 10-12 s.
# Cold adds build-k8s.sh --node (see tests/cluster/README.md, "Timings") and the pause image
# (1 s). RSS of the whole node ~760 MB (apiserver 285 MB).
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
cmd="${1:-}"; dir="${2:-}"
if [ -z "$cmd" ] || [ -z "$dir" ]; then sed -n '4,19p' "$0" >&2; exit 2; fi
cannot() { log "node.sh: this machine cannot run a kubelet: $*"; exit 3; }
preflight() {
  [ "$(id -u)" = 0 ] || cannot "not root (kubelet, containerd and the CNI bridge need root)"
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    cannot "cgroup v2 only (this recipe is tested on cgroup v1 with the cgroupfs driver)"
  fi
  for c in memory cpu pids; do
    [ -d "/sys/fs/cgroup/$c" ] || cannot "the cgroup v1 $c controller is not mounted under /sys/fs/cgroup"
  done
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null \
    || cannot "no overlay filesystem (containerd's overlayfs snapshotter)"
  command -v ip >/dev/null || apt_install iproute2
  ip link add sfprobe0 type bridge 2>/dev/null || cannot "cannot create a network bridge (CAP_NET_ADMIN)"
  ip link del sfprobe0
}
[ "$cmd" != up ] || preflight
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
here="$REPO_ROOT/tests/cluster"

node_name="${SENSORFLOW_NODE_NAME:-sensorflow-node}"
export SENSORFLOW_K8S_PORT="${SENSORFLOW_NODE_API_PORT:-26443}"
export SENSORFLOW_ETCD_PORT="${SENSORFLOW_NODE_ETCD_PORT:-22379}"
export SENSORFLOW_KCM_PORT="${SENSORFLOW_NODE_KCM_PORT:-20257}"
export SENSORFLOW_K8S_BIND_ADDRESS=0.0.0.0
pod_cidr=10.244.0.0/24
kubelet_port=20250 kubelet_healthz=20248 sched_port=20259 proxy_healthz=20256 proxy_metrics=20249
dns_ip=10.96.0.10 dns_port=10053
bridge=sfbr0
run=/run/sensorflow-node           # short: unix socket paths are limited to 108 bytes
sock="$run/containerd.sock"
# (pid_dir: where running / stop_one of tests/lib/suite.sh read the PID files)
pid_dir="$dir/pids" logs="$dir/logs" pki="$dir/pki"
k8s_version="$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/modules/kubernetes/go.mod")"
pause_image="sensorflow.test/pause:$k8s_version"
pause_archive="$SENSORFLOW_CACHE/images/pause-$k8s_version.tar"
# Every kernel setting that kubelet (setupKernelTunables), kube-proxy, the CNI plugins or this
# script may change; recorded before the first `up`, written back by `down`. ip_forward first:
# writing it resets every interface's forwarding flag.
sysctls=(net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv4.conf.default.forwarding
  net.ipv6.conf.all.forwarding net.ipv6.conf.default.forwarding
  kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.ipv4.conf.all.route_localnet net.ipv4.conf.default.route_localnet
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.bridge.bridge-nf-call-arptables
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait net.netfilter.nf_conntrack_tcp_be_liberal)

any_alive() {  # DIR: is any process recorded in DIR/pids alive?
  local f
  for f in "$1"/pids/*.pid; do [ -f "$f" ] && alive "$(cat "$f")" && return 0; done
  return 1
}

start() {  # NAME CMD...: runs CMD in the background, output to DIR/logs/NAME.log, PID recorded
  local name="$1"; shift
  running "$name" && return 0
  log "starting $name (log: $logs/$name.log)"
  "$@" </dev/null >>"$logs/$name.log" 2>&1 &
  echo $! > "$pid_dir/$name.pid"
}

node_ip() {
  if [ -f "$dir/node-ip" ]; then cat "$dir/node-ip"; return; fi
  local ip="${SENSORFLOW_NODE_IP:-}"
  [ -n "$ip" ] || ip="$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1)"
  [ -n "$ip" ] || die "no default route to take the node IP from; set SENSORFLOW_NODE_IP"
  echo "$ip"
}

kubectl() { "$bindir/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
ctr_() { "$bindir/ctr" --address "$sock" --namespace k8s.io "$@"; }

# ---------------------------------------------------------------------------------------------
record_host_state() {
  # Only before the first `up` after a `down`: a crashed run's record holds the true originals.
  [ -f "$dir/sysctl.before" ] && return 0
  local k v
  for k in "${sysctls[@]}"; do
    v="$(sysctl -n "$k" 2>/dev/null)" || continue
    printf '%s=%s\n' "$k" "$v"
  done > "$dir/sysctl.before.partial"
  mv "$dir/sysctl.before.partial" "$dir/sysctl.before"
  # Paths outside DIR that kubelet and containerd hard-code: kubelet's pod logs and device-plugin
  # socket, the CNI result cache (libcni), containerd's shim socket dir. Removed by `down` when up
  # created them.
  for d in /var/log/pods /var/log/containers /var/lib/kubelet /var/lib/cni /run/containerd; do
    [ -e "$d" ] || echo "$d"
  done > "$dir/created-dirs"
}

pause_image_archive() {
  [ -s "$pause_archive" ] && return 0
  local tmp src
  # The release's own pause.c, from the k8s.io/kubernetes module build-k8s.sh built from.
  src="$(cd "$here/modules/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  [ -f "$src" ] || die "$src missing (the k8s.io/kubernetes module that build-k8s.sh downloads)"
  tmp="$(mktemp -d)"
  log "building the static pause image ($pause_image)"
  gcc -Os -static -DVERSION="$k8s_version-sensorflow" -o "$tmp/pause" "$src"
  strip "$tmp/pause"
  mkdir -p "$tmp/rootfs" "$(dirname "$pause_archive")"
  install -m 0755 "$tmp/pause" "$tmp/rootfs/pause"
  "$REPO_ROOT/scripts/oci-image.sh" --rootfs "$tmp/rootfs" --name "$pause_image" \
    --out "$pause_archive.partial" --entrypoint /pause --user 65535:65535
  mv "$pause_archive.partial" "$pause_archive"
  rm -rf "$tmp"
}

# put FILE < CONTENT: replaces FILE only when CONTENT differs (kube-proxy exits when its
# config file changes, so an idempotent `up` must leave unchanged files alone).
put() {
  local new; new="$(cat)"
  [ -f "$1" ] && [ "$(cat "$1")" = "$new" ] && return 0
  printf '%s\n' "$new" > "$1"
}

write_configs() {
  local ip="$1"
  mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/cni/ipam" "$dir/kubelet" "$dir/dns/hosts.d"
  put "$dir/containerd/config.toml" <<EOF
version = 4
root = "$dir/containerd/root"
state = "$run/containerd"
# (the default would also read /etc/containerd/conf.d/*.toml of the host)
imports = []
# NRI would listen on /var/run/nri; tracing exports nowhere here; no btrfs/zfs/devmapper.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs"]
[plugins.'io.containerd.server.v1.grpc']
  address = "$sock"
[plugins.'io.containerd.server.v1.ttrpc']
  address = "$run/containerd.sock.ttrpc"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$pause_image"
[plugins.'io.containerd.cri.v1.runtime']
  # This VM lacks CAP_SYS_RESOURCE: without it every sandbox fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  cdi_spec_dirs = ["$dir/containerd/cdi"]
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
        Root = "$run/runc"
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
EOF
  put "$dir/cni/net.d/10-sensorflow.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "sensorflow",
  "plugins": [
    {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$dir/cni/ipam",
              "ranges": [[{"subnet": "$pod_cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  put "$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$sock
runtimeRequestTimeout: 5m
cgroupDriver: cgroupfs
# 1.35+ refuses to start on cgroup v1 unless told otherwise (KEP-5573: v1 is in maintenance mode
# and will be removed); this machine is cgroup v1. Ignored on a cgroup v2 host.
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$dns_ip]
volumePluginDir: $dir/kubelet/volume-plugins
# Images come from archives (node.sh load), never from a registry: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
serializeImagePulls: false
# Status computed every 2 s (posted only on change; the default 10 s delays the first Ready).
nodeStatusUpdateFrequency: 2s
rotateCertificates: false
EOF
  put "$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
# The node IP as bind address: kube-proxy then skips looking its node up (which gives up and
# assumes 127.0.0.1 when the apiserver is slow to start).
bindAddress: $ip
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
hostnameOverride: $node_name
clusterCIDR: 10.244.0.0/16
healthzBindAddress: 127.0.0.1:$proxy_healthz
metricsBindAddress: 127.0.0.1:$proxy_metrics
# 0 = leave the conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

dns_manifest() {
  local ip="$1"
  cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $dns_ip
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: $dns_port}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: $dns_port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/service-name: kube-dns}
addressType: IPv4
endpoints:
- addresses: [$ip]
  conditions: {ready: true}
ports:
- {name: dns, port: $dns_port, protocol: UDP}
- {name: dns-tcp, port: $dns_port, protocol: TCP}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "sensorflow:dns-sync"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kube-dns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "sensorflow:dns-sync"}
EOF
}

dns_lookup() {  # through kube-proxy's rules for 10.96.0.10, as a pod would
  busybox nslookup kubernetes.default.svc.cluster.local "$dns_ip" 2>/dev/null | grep 'Address: 10.96.0.1$' >/dev/null
}

up() {
  local t0 ip owner since
  t0=$(date +%s); since="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  apt_install runc containernetworking-plugins conntrack iptables socat ethtool \
    busybox-static umoci skopeo dnsmasq-base gcc libc6-dev python3 iproute2 curl openssl kmod
  bindir="$("$here/build-k8s.sh" --node)"
  ip="$(node_ip)"
  mkdir -p "$run" "$pid_dir" "$logs"
  owner="$(cat "$run/owner" 2>/dev/null || true)"
  if [ -n "$owner" ] && [ "$owner" != "$dir" ] && any_alive "$owner"; then
    die "another node is up from $owner (one per machine): node.sh down $owner"
  fi
  echo "$dir" > "$run/owner"
  echo "$ip" > "$dir/node-ip"
  # (br_netfilter first, so that its sysctls are recorded too)
  [ -d /proc/sys/net/bridge ] || modprobe br_netfilter || die "br_netfilter is not available"
  record_host_state
  log "node $node_name at $ip (DIR $dir)"
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  pause_image_archive

  # Client certificates first (this also makes the CA, before anything else could race for it);
  # then the control plane starts in the background while containerd, kubelet & co. come up:
  # they retry until the apiserver answers.
  local cp="$here/control-plane.sh" cp_pid
  "$cp" kubeconfig "$dir" kubelet "system:node:$node_name" system:nodes >/dev/null
  "$cp" kubeconfig "$dir" kube-scheduler system:kube-scheduler >/dev/null
  "$cp" kubeconfig "$dir" kube-proxy system:kube-proxy >/dev/null
  "$cp" kubeconfig "$dir" dns-sync sensorflow:dns-sync >/dev/null
  if [ "$(cat "$pki/kubelet-serving.ip" 2>/dev/null)" != "$ip" ]; then
    "$cp" servercert "$dir" kubelet-serving "$node_name" "IP:$ip,DNS:$node_name" >/dev/null
    echo "$ip" > "$pki/kubelet-serving.ip"
  fi
  write_configs "$ip"
  SENSORFLOW_K8S_ADVERTISE_ADDRESS="$ip" "$cp" up "$dir" >/dev/null & cp_pid=$!

  # (PATH: containerd starts containerd-shim-runc-v2 from it)
  PATH="$bindir:$PATH" start containerd "$bindir/containerd" --config "$dir/containerd/config.toml"
  for _ in $(seq 1 100); do
    ctr_ version >/dev/null 2>&1 && break
    running containerd || die_tail "$logs/containerd.log" 20 "containerd exited"
    sleep 0.1
  done
  ctr_ version >/dev/null 2>&1 || die "containerd not answering on $sock"
  # (grep without -q: an early exit would SIGPIPE ctr and, with pipefail, fail the test)
  ctr_ images ls -q | grep -x "$pause_image" >/dev/null || ctr_ images import "$pause_archive" >/dev/null

  running kubelet && since=""  # already up: its last heartbeat may be minutes old (node leases)
  start kubelet "$bindir/kubelet" --config "$dir/kubelet/config.yaml" \
    --kubeconfig "$dir/kubelet.kubeconfig" --root-dir "$dir/kubelet" \
    --hostname-override "$node_name" --node-ip "$ip" --v 1
  start kube-proxy "$bindir/kube-proxy" --config "$dir/kube-proxy.yaml" --v 1
  start kube-scheduler "$bindir/kube-scheduler" --kubeconfig "$dir/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false --v 1
  start dnsmasq dnsmasq --keep-in-foreground --log-facility=- --conf-file=/dev/null --user=root \
    --listen-address="$ip" --bind-interfaces --port="$dns_port" --no-hosts \
    --hostsdir="$dir/dns/hosts.d" --local=/cluster.local/ --domain-needed \
    --local-ttl=1 --cache-size=0 --pid-file=
  start dns-sync python3 -u "$here/dns-sync.py" --server "https://127.0.0.1:$SENSORFLOW_K8S_PORT" \
    --ca "$pki/ca.crt" --cert "$pki/dns-sync.crt" --key "$pki/dns-sync.key" \
    --out "$dir/dns/hosts.d/cluster.hosts"
  wait "$cp_pid" || die "the control plane did not come up (logs: $logs)"
  dns_manifest "$ip" | kubectl apply -f - >/dev/null

  local ready=""
  for _ in $(seq 1 240); do
    for c in kube-scheduler containerd kubelet kube-proxy dnsmasq dns-sync; do
      running "$c" || die_tail "$logs/$c.log" 30 "$c exited (log: $logs/$c.log)"
    done
    # Ready as reported by this kubelet: a heartbeat newer than this `up` (a Node object can
    # outlive a crashed run's kubelet with Ready=True).
    if [ -z "$ready" ] && [ "$(kubectl get node "$node_name" -o jsonpath='{range .status.conditions[?(@.type=="Ready")]}{.status} {.lastHeartbeatTime}{end}' 2>/dev/null \
        | awk -v since="$since" '$1 == "True" && $2 >= since {print "yes"}')" = yes ]; then
      ready=1; log "node $node_name Ready after $(( $(date +%s) - t0 )) s"
    fi
    [ -n "$ready" ] && dns_lookup && break
    sleep 0.5
  done
  [ -n "$ready" ] || die "node $node_name not Ready after 120 s (logs: $logs)"
  dns_lookup || die "cluster DNS ($dns_ip) does not answer kubernetes.default.svc.cluster.local"
  log "node ready in $(( $(date +%s) - t0 )) s (kubeconfig: $dir/kubeconfig, node IP $ip)"
  echo "$dir/kubeconfig"
}

# ---------------------------------------------------------------------------------------------
ipt_cleanup() {  # IPTABLES: delete rules jumping to KUBE-*/CNI-* chains, then those chains
  local ipt="$1" t rule chains
  command -v "$ipt" >/dev/null || return 0
  for t in filter nat mangle raw; do
    # (2>/dev/null: iptables-nft warns on every call when legacy tables exist too)
    "$ipt" -t "$t" -S >/dev/null 2>&1 || continue
    { "$ipt" -t "$t" -S 2>/dev/null | grep -E '^-A ' | grep -Ev '^-A (KUBE-|CNI-)' \
        | grep -E ' -[jg] (KUBE-|CNI-)' || true; } \
      | while read -r rule; do eval "\"$ipt\" -t $t -D ${rule#-A } 2>/dev/null" || true; done
    chains="$("$ipt" -t "$t" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\|CNI-[^ ]*\)$/\1/p')"
    for c in $chains; do "$ipt" -t "$t" -F "$c" 2>/dev/null || true; done
    for c in $chains; do "$ipt" -t "$t" -X "$c" 2>/dev/null || true; done
  done
}

down() {
  local t0 c m pid root grace="${SENSORFLOW_NODE_STOP_GRACE:-5}"
  t0=$(date +%s)
  set +e  # best effort: every step runs even when an earlier one failed
  bindir="$("$here/build-k8s.sh" --dir)"
  # The runtime dir, bridge, iptables chains and cgroups are the machine's: when another DIR's
  # node owns them, stop only what this DIR recorded.
  local owner; owner="$(cat "$run/owner" 2>/dev/null)"
  if [ -n "$owner" ] && [ "$owner" != "$dir" ] && any_alive "$owner"; then
    log "the node's runtime state belongs to $owner (up); stopping only the processes recorded in $dir"
    for c in dns-sync dnsmasq kube-scheduler kubelet kube-proxy containerd; do stop_one "$c" 20; done
    "$here/control-plane.sh" down "$dir" >/dev/null
    return 0
  fi
  # 1. Nothing may restart or reschedule containers: controllers and kubelet stop first.
  for c in dns-sync dnsmasq kube-scheduler kube-controller-manager kubelet kube-proxy; do stop_one "$c" 20; done
  # 2. Containers: SIGTERM to every task, up to $grace s to exit (like a node shutdown), then
  #    SIGKILL; tasks and containers deleted so that their shims exit.
  if running containerd; then
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGTERM "$c" >/dev/null 2>&1; done
    for _ in $(seq 1 $(( grace * 5 ))); do
      ctr_ tasks ls 2>/dev/null | grep ' RUNNING' >/dev/null || break
      sleep 0.2
    done
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1; done
    for c in $(ctr_ containers ls -q 2>/dev/null); do
      for _ in $(seq 1 20); do
        ctr_ tasks delete -f "$c" >/dev/null 2>&1 && break
        ctr_ tasks ls -q 2>/dev/null | grep -x "$c" >/dev/null || break
        sleep 0.1
      done
      ctr_ containers delete "$c" >/dev/null 2>&1
    done
  fi
  stop_one containerd 20
  # 3. Shims and runc containers of this containerd only (its socket path is in their command line).
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true); do kill -9 "$pid" 2>/dev/null || true; done
  if [ -d "$run/runc" ]; then
    for root in "$run/runc"/*/; do
      [ -d "$root" ] || continue
      for c in $(runc --root "$root" list -q 2>/dev/null); do
        runc --root "$root" kill "$c" KILL 2>/dev/null || true
        runc --root "$root" delete --force "$c" 2>/dev/null || true
      done
    done
  fi
  # Containers whose shim or runtime is already gone: their processes are still in kubelet's
  # cgroups (created by this node's kubelet, so nothing else lives there).
  find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null \
    | while read -r pid; do kill -9 "$pid" 2>/dev/null; done
  # 4. Mounts under DIR and the runtime dir (pod volumes, rootfs overlays, shm, netns), deepest first.
  awk '{print $2}' /proc/self/mounts | grep -E "^($dir|$run)/" | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
  # 5. Network: veths left on the bridge, the bridge, iptables chains.
  if ip link show "$bridge" >/dev/null 2>&1; then
    for c in $(ip -o link show master "$bridge" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$c" 2>/dev/null || true
    done
    ip link del "$bridge" 2>/dev/null || true
  fi
  if [ -x "$bindir/kube-proxy" ]; then "$bindir/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  ipt_cleanup iptables
  ipt_cleanup ip6tables
  # 6. kubelet's cgroups (empty once the containers are gone).
  for m in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    if [ -d "$m" ]; then find "$m" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
  # 7. Paths outside DIR that kubelet, libcni and the shims create, when they did not exist before.
  if [ -f "$dir/created-dirs" ]; then
    while read -r m; do [ -n "$m" ] && rm -rf "$m"; done < "$dir/created-dirs"
    rm -f "$dir/created-dirs"
  fi
  # 8. Kernel settings as they were before `up`.
  if [ -f "$dir/sysctl.before" ]; then
    while IFS='=' read -r k v; do
      [ "$(sysctl -n "$k" 2>/dev/null)" = "$v" ] || sysctl -qw "$k=$v" 2>/dev/null || log "could not restore $k=$v"
    done < "$dir/sysctl.before"
    rm -f "$dir/sysctl.before"
  fi
  "$here/control-plane.sh" down "$dir" >/dev/null
  [ "$(cat "$run/owner" 2>/dev/null)" = "$dir" ] && rm -rf "$run"
  # 9. The cluster's state, so that the next `up` is a fresh cluster (like kind delete + create);
  #    only the names this script and control-plane.sh write, whatever DIR is. Logs stay.
  ( cd "$dir" && rm -rf etcd containerd kubelet cni dns pki flexvolume token kubeconfig ./*.kubeconfig \
      kube-proxy.yaml node-ip )
  log "node stopped in $(( $(date +%s) - t0 )) s ($dir)"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  status)
    "$here/control-plane.sh" status "$dir"
    for c in kube-scheduler containerd kubelet kube-proxy dnsmasq dns-sync; do
      if running "$c"; then echo "$c: running"; else echo "$c: stopped"; fi
    done
    ;;
  addr) node_ip ;;
  load)
    shift 2
    bindir="$("$here/build-k8s.sh" --dir)"
    [ $# -gt 0 ] || die "usage: node.sh load DIR ARCHIVE..."
    running containerd || die "containerd is not running (node.sh up $dir first)"
    for a in "$@"; do
      t=$(date +%s)
      ctr_ images import "$a" >&2
      log "loaded $a in $(( $(date +%s) - t )) s"
    done
    ;;
  *) sed -n '4,19p' "$0" >&2; exit 2 ;;
esac
