#!/usr/bin/env bash
# Assembles a kind node image for the pinned Kubernetes release without a registry, from the
# pieces kind's own base image and `kind build node-image` use, and loads it into the Docker
# engine DOCKER_HOST points at. Prints the image reference on stdout (logs on stderr).
#
#   tests/cluster/kind-node-image.sh [--key | --inputs]
#
#   --key     print the cache key of the image this checkout would build, and exit
#   --inputs  only build what needs no Docker engine (kind itself, the debootstrap root
#             filesystem, CoreDNS) into the cache, and exit: .ci/run does this beside its other
#             prerequisites
#
# `kind build node-image` cannot run offline: it pulls etcd, coredns, pause, kindnetd and the
# storage provisioner. This script builds the same layout from:
#   root filesystem   `debootstrap --variant=minbase bookworm` with kind's base packages
#                     (systemd, iptables, nftables, iproute2, conntrack, ...) plus Debian's
#                     runc and CNI plugins (bridge, host-local, portmap, loopback: /opt/cni/bin)
#   kind's files      entrypoint, /kind/bin/*, systemd units (kubelet, containerd,
#                     undo-mount-hacks), containerd config, sysctl.d: copied from the kind
#                     module (sigs.k8s.io/kind vKIND in GOMODCACHE, installed by kind.sh), with
#                     the Dockerfile's steps (units enabled, wants pruned, journald ReadKMsg=no)
#   changes for this VM  containerd: restrict_oom_score_adj = true (no CAP_SYS_RESOURCE), pause
#                     sandbox image, no fuse-overlayfs; kubelet: --config-dir with
#                     `failCgroupV1: false` (Kubernetes >= 1.35 refuses cgroup v1 otherwise; kind
#                     does not set it); systemd's own sysctl.d defaults removed (a privileged
#                     node would apply them to the host's kernel)
#   Kubernetes        kubeadm, kubelet, kubectl in /usr/bin; containerd, its shim and ctr in
#                     /usr/local/bin (tests/cluster/build-k8s.sh --kind); /kind/version
#   preloaded images  (containerd's k8s.io namespace under /var/lib/containerd, pinned, not
#                     unpacked, as kind's build does) each packed by scripts/oci-image.sh:
#                     registry.k8s.io/{kube-apiserver,kube-controller-manager,kube-scheduler,
#                     kube-proxy}:vK8S from our binaries (kube-proxy with Debian's iptables and
#                     the nft/legacy choice of kubernetes-sigs/iptables-wrappers),
#                     etcd:<kubeadm's tag> from our etcd (the release's own etcd version),
#                     coredns/coredns:<kubeadm's tag> built from the Go module
#                     github.com/coredns/coredns at that tag, pause:<kubeadm's tag> = the
#                     release's pause.c built static
#   CNI               a bridge + host-local config for kind-config.yaml's podSubnet in
#                     /etc/cni/net.d (single node; replaces kindnetd); /kind/manifests/
#                     default-cni.yaml is a ConfigMap that records it (kind applies that file)
#   storage           /kind/manifests/default-storage.yaml: StorageClass `standard` (default),
#                     provisioner kubernetes.io/host-path (kind runs the controller-manager with
#                     --enable-hostpath-provisioner)
#
# Cache: the image itself, tagged sensorflow.test/kind-node:vK8S-KEY in the engine (our own
# engine keeps its data under $SENSORFLOW_CACHE/docker); KEY hashes every input above, so a
# change rebuilds it. $SENSORFLOW_CACHE/kind-node/ keeps the debootstrap root filesystem
# (rootfs-<packages hash>.tar) and coredns-vX.Y.Z/coredns.
# Measured on the 2-core VM (others' builds running): see docs/testing.md ("kind").
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
here="$REPO_ROOT/tests/cluster"
KIND_VERSION="${SENSORFLOW_KIND_VERSION:-v0.33.0}"
cache="$SENSORFLOW_CACHE/kind-node"
mkdir -p "$cache"

only_key=0 only_inputs=0
for a in "$@"; do
  case "$a" in
    --key) only_key=1 ;;
    --inputs) only_inputs=1 ;;
    -h|--help) usage_header "$0"; exit 0 ;;
    *) die "unknown argument $a" ;;
  esac
done

packages=(systemd systemd-sysv conntrack iptables nftables iproute2 ethtool util-linux mount kmod
  libseccomp2 pigz ca-certificates curl jq procps bash runc containernetworking-plugins socat)
pkg_key="$(printf '%s\n' bookworm "${packages[@]}" | sha256sum | cut -c1-12)"
base="$cache/rootfs-bookworm-$pkg_key.tar"
t0=$(date +%s)
tmp="$(mktemp -d "$cache/build.XXXXXX")"
ctr_pid=""
cleanup() {
  if [ -n "$ctr_pid" ]; then kill "$ctr_pid" 2>/dev/null; wait "$ctr_pid" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
build_rootfs() {  # the Debian root filesystem, cached by package list
  if [ ! -s "$base" ]; then
    t=$(date +%s)
    log "debootstrap --variant=minbase bookworm with ${#packages[@]} packages (cached as $base)"
    debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" bookworm "$tmp/deb" \
      http://deb.debian.org/debian >"$tmp/debootstrap.log" 2>&1 || die_tail "$tmp/debootstrap.log" 30 "debootstrap failed"
    rm -rf "$tmp/deb/var/cache/apt/archives/"*.deb "$tmp/deb/var/lib/apt/lists/"*
    tar -C "$tmp/deb" -cf "$base.partial" . && mv "$base.partial" "$base"
    rm -rf "$tmp/deb"
    log "root filesystem in $(( $(date +%s) - t )) s ($(du -h "$base" | cut -f1))"
  fi
}
build_coredns() {  # CoreDNS at the tag kubeadm asks for, from the Go module
  local t; t=$(date +%s)
  coredns_dir="$cache/coredns-$coredns_version"
  if [ ! -x "$coredns_dir/coredns" ]; then
    log "building CoreDNS $coredns_version from the Go module github.com/coredns/coredns (cold: several minutes)"
    mkdir -p "$coredns_dir"
    GOBIN="$tmp/gobin" GOCACHE="$tmp/gocache-coredns" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
      nice -n 10 go install -trimpath -ldflags='-s -w' "github.com/coredns/coredns@$coredns_version" >&2 \
      || die "building CoreDNS failed"
    install -m 0755 "$tmp/gobin/coredns" "$coredns_dir/coredns"
    rm -rf "$tmp/gocache-coredns" "$tmp/gobin"
    log "CoreDNS built in $(( $(date +%s) - t )) s"
  fi
}

if [ "$only_inputs" = 1 ]; then
  # (no Kubernetes build needed: CoreDNS's tag is kubeadm's constant in the release's source)
  k8s_src="$(cd "$here/modules/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  coredns_version="$(sed -n 's/^[[:space:]]*CoreDNSVersion = "\(v[0-9.]*\)"/\1/p' "$k8s_src/cmd/kubeadm/app/constants/constants.go")"
  [ -n "$coredns_version" ] || die "no CoreDNSVersion in $k8s_src/cmd/kubeadm/app/constants/constants.go"
  apt_install debootstrap
  SENSORFLOW_KIND_VERSION="$KIND_VERSION" "$here/tools.sh" kind >/dev/null
  build_rootfs
  build_coredns
  log "kind node image inputs ready in $(( $(date +%s) - t0 )) s (rootfs $base, CoreDNS $coredns_version)"
  exit 0
fi
bindir="$("$here/build-k8s.sh" --kind)"
k8s_version="$(cat "$bindir/.kubelet.built")"; k8s_version="${k8s_version##*@}"
kind_src="$(go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION"
# (building kind downloads its module, whose images/base/files are kind's base image files)
[ -d "$kind_src/images/base/files" ] || SENSORFLOW_KIND_VERSION="$KIND_VERSION" "$here/tools.sh" kind >/dev/null
[ -f "$kind_src/images/base/files/usr/local/bin/entrypoint" ] || die "$kind_src/images/base/files: no entrypoint"
# The images kubeadm of this release will ask for (its pinned etcd, CoreDNS and pause tags).
mapfile -t kubeadm_images < <("$bindir/kubeadm" config images list --kubernetes-version "$k8s_version" 2>/dev/null)
[ ${#kubeadm_images[@]} -ge 6 ] || die "kubeadm config images list gave: ${kubeadm_images[*]}"
image_of() { printf '%s\n' "${kubeadm_images[@]}" | grep -m1 "/$1:" || die "kubeadm lists no $1 image"; }
etcd_image="$(image_of etcd)" coredns_image="$(image_of coredns)" pause_image="$(image_of pause)"
coredns_version="${coredns_image##*:}"
pod_subnet="$(sed -n 's/^ *podSubnet: *"\{0,1\}\([0-9./]*\)"\{0,1\}.*/\1/p' "$REPO_ROOT/kind-config.yaml" | head -1)"
[ -n "$pod_subnet" ] || die "no networking.podSubnet in kind-config.yaml"

key="$( {
  cat "$0" "$REPO_ROOT/scripts/oci-image.sh"
  echo "$pkg_key $k8s_version $pod_subnet $KIND_VERSION ${kubeadm_images[*]}"
  cat "$bindir"/.*.built
  find "$kind_src/images/base/files" -type f | sort | xargs cat
} | sha256sum | cut -c1-12)"
tag="sensorflow.test/kind-node:$k8s_version-$key"
if [ "$only_key" = 1 ]; then echo "$key"; exit 0; fi
command -v docker >/dev/null || die "docker CLI not found"
if docker image inspect "$tag" >/dev/null 2>&1; then
  log "node image $tag is in the engine already"
  echo "$tag"; exit 0
fi
apt_install debootstrap umoci skopeo gcc libc6-dev python3 ca-certificates binutils
build_rootfs
build_coredns


rootfs="$tmp/rootfs"
mkdir -p "$rootfs"
tar -C "$rootfs" -xf "$base"

# --- 2. kind's base image files and steps ------------------------------------------------------
files="$kind_src/images/base/files"
install -D -m 0755 -t "$rootfs/usr/local/bin" "$files"/usr/local/bin/*
install -d -m 0755 "$rootfs/kind" "$rootfs/kind/bin" "$rootfs/LICENSES"
install -m 0644 "$files/kind/README.txt" "$rootfs/kind/"
install -m 0755 -t "$rootfs/kind/bin" "$files"/kind/bin/*
install -m 0644 -t "$rootfs/etc" "$files/etc/crictl.yaml"
install -D -m 0644 -t "$rootfs/etc/containerd" "$files/etc/containerd/config.toml"
install -D -m 0644 -t "$rootfs/etc/default" "$files/etc/default/kubelet"
install -D -m 0644 -t "$rootfs/etc/sysctl.d" "$files"/etc/sysctl.d/*
install -D -m 0644 -t "$rootfs/etc/systemd/system" "$files"/etc/systemd/system/*.service "$files/etc/systemd/system/kubelet.slice"
install -D -m 0644 -t "$rootfs/etc/systemd/system/kubelet.service.d" "$files"/etc/systemd/system/kubelet.service.d/*
find "$rootfs/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$rootfs"/lib/systemd/system/multi-user.target.wants/* "$rootfs"/etc/systemd/system/*.wants/* \
  "$rootfs"/lib/systemd/system/local-fs.target.wants/* "$rootfs"/lib/systemd/system/sockets.target.wants/*udev* \
  "$rootfs"/lib/systemd/system/sockets.target.wants/*initctl* "$rootfs"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >> "$rootfs/etc/systemd/journald.conf"
ln -sf /usr/lib/systemd/systemd "$rootfs/sbin/init"
# (systemctl --root edits the unit symlinks without a running systemd)
systemctl --root="$rootfs" enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1 \
  || die "systemctl --root enable failed"
systemctl --root="$rootfs" mask systemd-binfmt.service >/dev/null 2>&1
mkdir -p "$rootfs/etc/kubernetes/manifests"
# systemd's defaults (kernel.sysrq, fs.protected_*, kernel.pid_max, net.core.default_qdisc…) are
# global kernel settings: a privileged node would write them into the host's kernel.
rm -f "$rootfs"/usr/lib/sysctl.d/*.conf "$rootfs"/lib/sysctl.d/*.conf
# containerd and runc: our containerd build; Debian's runc (/usr/sbin/runc); CNI plugins from
# Debian where kind's containerd looks for them.
install -m 0755 -t "$rootfs/usr/local/bin" "$bindir/containerd" "$bindir/containerd-shim-runc-v2" "$bindir/ctr"
mkdir -p "$rootfs/opt/cni/bin"
for p in "$rootfs"/usr/lib/cni/*; do ln -sf "/usr/lib/cni/$(basename "$p")" "$rootfs/opt/cni/bin/"; done
# The CRI base spec as kind's Dockerfile makes it: `ctr oci spec`, plus the hook that mounts
# the node's product_uuid/product_name, without rlimits.
"$bindir/ctr" oci spec | python3 -c '
import json, sys
spec = json.load(sys.stdin)
spec.setdefault("hooks", {}).setdefault("createContainer", []).append({"path": "/kind/bin/mount-product-files.sh"})
spec["process"].pop("rlimits", None)
json.dump(spec, sys.stdout, indent=4)' > "$rootfs/etc/containerd/cri-base.json"
python3 - "$rootfs/etc/containerd/config.toml" "$pause_image" <<'EOF'
import re, sys
path, pause = sys.argv[1], sys.argv[2]
s = open(path).read()
# fuse-overlayfs: its snapshotter binary is not in this image (overlayfs works here).
s = re.sub(r'\[proxy_plugins\]\n(.*\n)*?(?=\[plugins)', "", s)
s, n1 = re.subn(r'sandbox_image = ".*"', f'sandbox_image = "{pause}"', s)
# This VM lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
s, n2 = re.subn(r"restrict_oom_score_adj = false", "restrict_oom_score_adj = true", s)
assert n1 == 1 and n2 == 1, (n1, n2)
open(path, "w").write(s)
EOF
grep -q proxy_plugins "$rootfs/etc/containerd/config.toml" && die "containerd config still has the fuse-overlayfs proxy plugin"
rm -f "$rootfs/etc/systemd/system/containerd-fuse-overlayfs.service"
# kubelet: a config drop-in directory (merged over kubeadm's /var/lib/kubelet/config.yaml).
sed -i 's|^KUBELET_EXTRA_ARGS=\(.*\)$|KUBELET_EXTRA_ARGS=\1 --config-dir=/etc/kubernetes/kubelet.conf.d|' "$rootfs/etc/default/kubelet"
grep -q -- '--config-dir=' "$rootfs/etc/default/kubelet" || die "could not add --config-dir to /etc/default/kubelet"
mkdir -p "$rootfs/etc/kubernetes/kubelet.conf.d"
cat > "$rootfs/etc/kubernetes/kubelet.conf.d/50-sensorflow-cgroup-v1.conf" <<'EOF'
# SensorFlow's kind node image (tests/cluster/kind-node-image.sh): Kubernetes >= 1.35 refuses
# cgroup v1 unless told otherwise (KEP-5573); the CI machines are cgroup v1. Ignored on v2.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
EOF

# --- 3. Kubernetes -----------------------------------------------------------------------------
install -m 0755 -t "$rootfs/usr/bin" "$bindir/kubeadm" "$bindir/kubelet" "$bindir/kubectl"
printf '%s' "$k8s_version" > "$rootfs/kind/version"
mkdir -p "$rootfs/kind/manifests" "$rootfs/etc/cni/net.d"
cat > "$rootfs/etc/cni/net.d/10-sensorflow-bridge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kind-bridge",
  "plugins": [
    {"type": "bridge", "bridge": "kind-br0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_subnet"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
{
  cat <<EOF
# The node's CNI is a bridge config in the image (/etc/cni/net.d/10-sensorflow-bridge.conflist,
# single node, podSubnet $pod_subnet from kind-config.yaml), not kindnetd: this ConfigMap only
# records it. Written by tests/cluster/kind-node-image.sh.
apiVersion: v1
kind: ConfigMap
metadata: {name: sensorflow-node-cni, namespace: kube-system}
data:
  10-sensorflow-bridge.conflist: |
EOF
  sed 's/^/    /' "$rootfs/etc/cni/net.d/10-sensorflow-bridge.conflist"
} > "$rootfs/kind/manifests/default-cni.yaml"
cat > "$rootfs/kind/manifests/default-storage.yaml" <<'EOF'
# Host-path volumes, provisioned by kube-controller-manager (kind runs it with
# --enable-hostpath-provisioner). Written by tests/cluster/kind-node-image.sh.
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF

# --- 4. the images kubeadm runs, packed and preloaded -------------------------------------------
t=$(date +%s)
pause_src="$(cd "$here/modules/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
[ -f "$pause_src" ] || die "$pause_src missing"

export SOURCE_DATE_EPOCH=0
mkdir -p "$tmp/images"
# small_rootfs DIR: /etc/passwd, /etc/group, /tmp, the CA bundle (the distroless static base).
small_rootfs() {
  install -d -m 0755 "$1/etc/ssl/certs" "$1/usr/local/bin"
  install -d -m 1777 "$1/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$1/etc/group"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"
}
pack() {  # NAME ROOTFS [oci-image.sh flags]
  local name="$1" dir="$2"; shift 2
  "$REPO_ROOT/scripts/oci-image.sh" --rootfs "$dir" --name "$name" --out "$tmp/images/$(echo "$name" | tr '/:' '__').tar" "$@"
}
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  small_rootfs "$tmp/img-$c"
  install -m 0755 "$bindir/$c" "$tmp/img-$c/usr/local/bin/"
  pack "registry.k8s.io/$c:$k8s_version" "$tmp/img-$c" --entrypoint "/usr/local/bin/$c"
done
small_rootfs "$tmp/img-etcd"
install -m 0755 "$bindir/etcd" "$tmp/img-etcd/usr/local/bin/"
pack "$etcd_image" "$tmp/img-etcd" --entrypoint /usr/local/bin/etcd
small_rootfs "$tmp/img-coredns"
install -m 0755 "$coredns_dir/coredns" "$tmp/img-coredns/coredns"
pack "$coredns_image" "$tmp/img-coredns" --entrypoint /coredns
mkdir -p "$tmp/img-pause"
gcc -Os -static -DVERSION="${pause_image##*:}-sensorflow" -o "$tmp/img-pause/pause" "$pause_src"
strip "$tmp/img-pause/pause"
pack "$pause_image" "$tmp/img-pause" --entrypoint /pause --user 65535:65535
# kube-proxy: the iptables and conntrack tools with their libraries and xtables modules, from
# the node's own Debian packages, and a wrapper that picks nft or legacy as the node does.
kp="$tmp/img-kube-proxy"
small_rootfs "$kp"
# (usrmerge: /bin, /sbin, /lib, /lib64 are links into /usr on bookworm; made first, so that the
# packages' /lib/... paths land in /usr/lib/...)
for d in bin sbin lib lib64; do [ -L "$rootfs/$d" ] && cp -a "$rootfs/$d" "$kp/$d"; done
mkdir -p "$kp/usr/bin" "$kp/usr/sbin" "$kp/usr/lib" "$kp/usr/lib64"
for pkg in libc6 libgcc-s1 dash grep libpcre2-8-0 iptables libxtables12 libip4tc2 libip6tc2 libnftnl11 \
    libmnl0 libnetfilter-conntrack3 libnfnetlink0 conntrack; do
  list=""
  for l in "$rootfs/var/lib/dpkg/info/$pkg.list" "$rootfs/var/lib/dpkg/info/$pkg:"*.list; do
    if [ -f "$l" ]; then list="$l"; break; fi
  done
  [ -n "$list" ] || die "package $pkg is not in the node's root filesystem"
  grep -Ev '^/usr/share/(doc|man|lintian|locale)|^/\.$' "$list" | while read -r f; do
    if [ -d "$rootfs$f" ] && [ ! -L "$rootfs$f" ]; then mkdir -p "$kp$f"
    elif [ -e "$rootfs$f" ] || [ -L "$rootfs$f" ]; then mkdir -p "$kp$(dirname "$f")"; cp -a "$rootfs$f" "$kp$f"; fi
  done
done
ln -sf dash "$kp/usr/bin/sh"
cat > "$kp/usr/sbin/iptables-wrapper" <<'EOF'
#!/bin/sh
# As kubernetes-sigs/iptables-wrappers: use the iptables mode (nft or legacy) the node already
# uses, judged once by kubelet's canary chains, else by which has more rules; the choice is
# kept in /tmp/iptables-mode.
mode="$(cat /tmp/iptables-mode 2>/dev/null)"
if [ -z "$mode" ]; then
  count() { n=0; while read -r l; do case "$l" in -*) n=$((n + 1)) ;; esac; done; echo "$n"; }
  if { xtables-nft-multi iptables-save -t mangle; xtables-nft-multi ip6tables-save -t mangle; } 2>/dev/null | grep -qE 'KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY'; then
    mode=nft
  elif { xtables-legacy-multi iptables-save -t mangle; xtables-legacy-multi ip6tables-save -t mangle; } 2>/dev/null | grep -qE 'KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY'; then
    mode=legacy
  else
    legacy=$({ xtables-legacy-multi iptables-save; xtables-legacy-multi ip6tables-save; } 2>/dev/null | count)
    nft=$({ xtables-nft-multi iptables-save; xtables-nft-multi ip6tables-save; } 2>/dev/null | count)
    if [ "$legacy" -ge "$nft" ]; then mode=legacy; else mode=nft; fi
  fi
  echo "$mode" > /tmp/iptables-mode 2>/dev/null || true
fi
exec "xtables-$mode-multi" "${0##*/}" "$@"
EOF
chmod 0755 "$kp/usr/sbin/iptables-wrapper"
for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf iptables-wrapper "$kp/usr/sbin/$c"
done
install -m 0755 "$bindir/kube-proxy" "$kp/usr/local/bin/"
chroot "$kp" /usr/sbin/xtables-nft-multi iptables --version >/dev/null || die "iptables does not run inside the kube-proxy image"
chroot "$kp" /usr/sbin/xtables-legacy-multi iptables --version >/dev/null || die "iptables-legacy does not run inside the kube-proxy image"
pack "registry.k8s.io/kube-proxy:$k8s_version" "$kp" --entrypoint /usr/local/bin/kube-proxy
log "images packed in $(( $(date +%s) - t )) s: $(cd "$tmp/images" && echo *.tar)"

# Preload: a containerd of the same build, run on this host over the node's /var/lib/containerd,
# imports them into the k8s.io namespace pinned and not unpacked (the CRI unpacks on first use),
# as `kind build node-image` does inside its build container.
t=$(date +%s)
run="$tmp/run"; mkdir -p "$run"
sock="$run/c.sock"
cat > "$tmp/containerd.toml" <<EOF
version = 3
root = "$rootfs/var/lib/containerd"
state = "$run/state"
imports = []
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images",
  "io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
EOF
"$bindir/containerd" --config "$tmp/containerd.toml" >"$tmp/containerd.log" 2>&1 & ctr_pid=$!
wait_for 30 0.2 "$bindir/ctr" --address "$sock" version >/dev/null 2>&1 \
  || die_tail "$tmp/containerd.log" 20 "the preload containerd did not answer"
for a in "$tmp"/images/*.tar; do
  "$bindir/ctr" --address "$sock" --namespace k8s.io images import --label=io.cri-containerd.pinned=pinned \
    --all-platforms --no-unpack "$a" >/dev/null 2>"$tmp/ctr-import.log" || die_tail "$tmp/ctr-import.log" 10 "ctr import $a failed"
done
log "preloaded: $("$bindir/ctr" --address "$sock" --namespace k8s.io images ls -q 2>/dev/null | grep -v "^sha256:" | tr "\n" " ")"
kill "$ctr_pid"; wait "$ctr_pid" 2>/dev/null || true; ctr_pid=""
rm -rf "$rootfs/var/lib/containerd/tmpmounts"
log "images preloaded in $(( $(date +%s) - t )) s"

# --- 5. into the engine ----------------------------------------------------------------------------
t=$(date +%s)
# (docker 20.10's `import --change` takes no STOPSIGNAL: the image config goes on in a build
# step over the imported layer, which adds no layer)
tar -C "$rootfs" --numeric-owner -cf - . | docker import - "$tag-rootfs" >/dev/null || die "docker import of the node image failed"
printf '%s\n' "FROM $tag-rootfs" 'ENV container=docker' 'STOPSIGNAL SIGRTMIN+3' \
  'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
  "LABEL io.sensorflow.kind-node.key=$key io.sensorflow.kind-node.kubernetes=$k8s_version" \
  | DOCKER_BUILDKIT=0 docker build -q -t "$tag" - >/dev/null 2>"$tmp/docker-build.log" || die_tail "$tmp/docker-build.log" 20 "docker build of the node image config failed"
docker rmi "$tag-rootfs" >/dev/null
log "node image $tag imported in $(( $(date +%s) - t )) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')); assembled in $(( $(date +%s) - t0 )) s"
# Older node images of this script: replaced by this one.
for old in $(docker images sensorflow.test/kind-node --format "{{.Repository}}:{{.Tag}}" | grep -vx "$tag"); do
  docker rmi "$old" >/dev/null 2>&1 && log "removed the older node image $old"
done
echo "$tag"
