#!/usr/bin/env bash
# Builds the pinned Kubernetes release, its etcd and (--node, --kind) containerd from Go modules, only
# what is missing, and prints the directory holding the binaries on stdout.
#
#   tests/cluster/build-k8s.sh [--node | --kind | --dir] [COMPONENT...]
#
# Default: kube-apiserver kube-controller-manager kubectl etcd (the control plane of the operator
# tests). `--node` adds kube-scheduler kubelet kube-proxy containerd containerd-shim-runc-v2 ctr
# (tests/cluster/node.sh). `--kind` adds kube-scheduler kubelet kube-proxy kubeadm containerd
# containerd-shim-runc-v2 ctr (the kind node image, tests/cluster/kind-node-image.sh). Runc and the CNI
# plugins come from Debian (node.sh installs them; the node image has them from debootstrap).
# `--dir` prints the directory and builds nothing (node.sh down: whatever is there).
#
# Versions are the checked-in wrapper modules' (see tests/cluster/README.md):
#   modules/kubernetes/go.mod   k8s.io/kubernetes vX.Y.Z, every staging module replaced by its
#                               published v0.Y.Z; etcd (./etcd) at the server version the release
#                               itself requires
#   modules/containerd/go.mod   github.com/containerd/containerd/v2
# Built with CGO_ENABLED=0, -trimpath, -ldflags '-s -w' and the version stamped in (kubectl
# version, the Node's kubeletVersion and Helm's kubeVersion check read it).
#
# Cache (kept between runs): $SENSORFLOW_CACHE/k8s-vX.Y.Z/
#   bin/        the binaries; bin/.NAME.built names the module version each was built from, so a
#               version change rebuilds exactly the binaries it affects
#   gocache/    Go's build cache (GOCACHE). Modules download to Go's usual GOMODCACHE.
# Measured on the 2-core machine: see tests/cluster/README.md ("Timings").
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
. "$(dirname "$0")/../../scripts/lib.sh"

mods="$REPO_ROOT/tests/cluster/modules"
modver() { awk -v m="$1" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ {print $2; exit}' "$2"; }
K8S_VERSION="$(modver k8s.io/kubernetes "$mods/kubernetes/go.mod")"
ETCD_VERSION="$(modver go.etcd.io/etcd/server/v3 "$mods/kubernetes/go.mod")"
CONTAINERD_VERSION="$(modver github.com/containerd/containerd/v2 "$mods/containerd/go.mod")"
if [ -z "$K8S_VERSION" ] || [ -z "$ETCD_VERSION" ] || [ -z "$CONTAINERD_VERSION" ]; then
  die "cannot read the pinned versions from $mods/*/go.mod"
fi
root="$SENSORFLOW_CACHE/k8s-$K8S_VERSION"
bindir="$root/bin"

components=(kube-apiserver kube-controller-manager kubectl etcd)
explicit=()
for a in "$@"; do
  case "$a" in
    --node) components+=(kube-scheduler kubelet kube-proxy containerd containerd-shim-runc-v2 ctr) ;;
    --kind) components+=(kube-scheduler kubelet kube-proxy kubeadm containerd containerd-shim-runc-v2 ctr) ;;
    --dir) echo "$bindir"; exit 0 ;;
    -h|--help) usage_header "$0"; exit 0 ;;
    -*) die "unknown flag $a" ;;
    *) explicit+=("$a") ;;
  esac
done
[ ${#explicit[@]} -eq 0 ] || components=("${explicit[@]}")

# component → module directory, package, and the version its stamp records
declare -A module pkg stamp
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm; do
  module[$c]=kubernetes pkg[$c]="k8s.io/kubernetes/cmd/$c" stamp[$c]="k8s.io/kubernetes@$K8S_VERSION"
done
module[etcd]=kubernetes pkg[etcd]=./etcd stamp[etcd]="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
for c in containerd containerd-shim-runc-v2 ctr; do
  module[$c]=containerd pkg[$c]="github.com/containerd/containerd/v2/cmd/$c"
  stamp[$c]="github.com/containerd/containerd/v2@$CONTAINERD_VERSION"
done

missing=()
for c in "${components[@]}"; do
  [ -n "${pkg[$c]:-}" ] || die "unknown component $c"
  [ -x "$bindir/$c" ] && [ "$(cat "$bindir/.$c.built" 2>/dev/null)" = "${stamp[$c]}" ] || missing+=("$c")
done
if [ ${#missing[@]} -eq 0 ]; then echo "$bindir"; exit 0; fi

command -v go >/dev/null || die "Go is not installed (the machines have Go 1.26; see tests/cluster/README.md)"
mkdir -p "$bindir"
# One build at a time per cache (CI builds the node's binaries while a test may want kubectl).
exec 9>"$root/.build.lock"
flock 9
start=$(date +%s)
export CGO_ENABLED=0 GOCACHE="$root/gocache" GOFLAGS="-buildvcs=false -mod=readonly" GOTOOLCHAIN=local

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
k8s_ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  k8s_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
declare -A ldflags=(
  [kubernetes]="$k8s_ldflags"
  [containerd]="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
)

# One `go build` per module for everything it lacks: the packages compile in one job graph,
# sharing the dependencies between binaries.
for m in kubernetes containerd; do
  pkgs=() names=()
  for c in "${missing[@]}"; do
    # (re-checked under the lock: a concurrent run may have built it meanwhile)
    [ -x "$bindir/$c" ] && [ "$(cat "$bindir/.$c.built" 2>/dev/null)" = "${stamp[$c]}" ] && continue
    [ "${module[$c]}" = "$m" ] && { pkgs+=("${pkg[$c]}"); names+=("$c"); }
  done
  [ ${#pkgs[@]} -gt 0 ] || continue
  t0=$(date +%s)
  log "building ${names[*]} from modules/$m (GOCACHE $GOCACHE)"
  out="$root/out-$m"; rm -rf "$out"; mkdir -p "$out"
  ( cd "$mods/$m" && nice -n 10 go build -trimpath -ldflags "${ldflags[$m]}" -o "$out/" "${pkgs[@]}" >&2 )
  for c in "${names[@]}"; do
    src="$out/$c"; [ "${pkg[$c]}" = ./etcd ] && src="$out/etcd"
    [ -x "$src" ] || die "go build produced no $c"
    mv -f "$src" "$bindir/$c"
    echo "${stamp[$c]}" > "$bindir/.$c.built"
  done
  rm -rf "$out"
  log "built ${names[*]} in $(( $(date +%s) - t0 )) s"
done
log "Kubernetes $K8S_VERSION (etcd $ETCD_VERSION, containerd $CONTAINERD_VERSION) binaries ready in $(( $(date +%s) - start )) s: $bindir"
echo "$bindir"
