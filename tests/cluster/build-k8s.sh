#!/usr/bin/env bash
# Builds Kubernetes v1.20.2 binaries from Debian's `kubernetes` source package, only when missing.
#
#   tests/cluster/build-k8s.sh [--node] [COMPONENT...]
#
# Default components: kube-apiserver kube-controller-manager kubectl (the control plane used by the
# operator tests). `--node` adds kubelet kube-scheduler kube-proxy (a later issue's single node).
# Prints the directory holding the binaries on stdout.
#
# Cache (kept between runs): $SENSORFLOW_CACHE/k8s-v1.20.2/
#   bin/      the built binaries        gocache/  Go's build cache
#   src/      the unpacked source tree  gopath/   GOPATH with the tree linked at k8s.io/kubernetes
#
# Cold build on 2 cores: apiserver + controller-manager ~10 min, kubectl ~1.5 min, kubelet ~12 min.
# Recipe (see shared ENVIRONMENT.md): GOPATH mode with Debian's Go 1.19, the vendored reflect2
# swapped for Debian's (1.0.1 breaks on Go >= 1.18), and the OpenAPI definitions the tarball lacks
# generated with the vendored openapi-gen.
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
. "$(dirname "$0")/../../scripts/lib.sh"

K8S_VERSION=v1.20.2
root="$SENSORFLOW_CACHE/k8s-$K8S_VERSION"
bindir="$root/bin"
components=(kube-apiserver kube-controller-manager kubectl)
explicit=()
for a in "$@"; do
  case "$a" in
    --node) components+=(kubelet kube-scheduler kube-proxy) ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) die "unknown flag $a" ;;
    *) explicit+=("$a") ;;
  esac
done
[ ${#explicit[@]} -eq 0 ] || components=("${explicit[@]}")

missing=()
for c in "${components[@]}"; do [ -x "$bindir/$c" ] || missing+=("$c"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$bindir"; exit 0; fi

start=$(date +%s)
apt_install golang-go dpkg-dev golang-github-modern-go-reflect2-dev ca-certificates rsync
mkdir -p "$root" "$bindir"

# 1. Source: Debian's package (full upstream tree with vendor/), via a private deb-src list so
#    /etc/apt stays untouched.
src="$root/src"
if [ ! -f "$src/.unpacked" ]; then
  log "fetching Debian's kubernetes source package"
  aptdir="$root/apt"; mkdir -p "$aptdir/lists/partial" "$root/dl"
  cat >"$aptdir/sources.list" <<'EOF'
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian-security bookworm-security main
EOF
  aptopts=(-o "Dir::Etc::SourceList=$aptdir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
           -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
  apt-get "${aptopts[@]}" update -qq
  rm -rf "$root/dl" && mkdir -p "$root/dl"
  ( cd "$root/dl" && apt-get "${aptopts[@]}" source --download-only kubernetes >&2 )
  dsc="$(find "$root/dl" -name 'kubernetes_*.dsc' | sort -V | tail -1)"
  rm -rf "$src" && dpkg-source --no-check -x "$dsc" "$src" >&2
  touch "$src/.unpacked"
fi

# 2. GOPATH layout and the reflect2 swap.
gopath="$root/gopath"
mkdir -p "$gopath/src/k8s.io"
ln -sfn "$src" "$gopath/src/k8s.io/kubernetes"
reflect2_deb=/usr/share/gocode/src/github.com/modern-go/reflect2
if [ ! -f "$src/.reflect2-swapped" ]; then
  [ -d "$reflect2_deb" ] || die "Debian's reflect2 source not found at $reflect2_deb"
  rsync -a --delete --exclude='.git' "$reflect2_deb/" "$src/vendor/github.com/modern-go/reflect2/"
  touch "$src/.reflect2-swapped"
fi

export GOPATH="$gopath" GO111MODULE=off CGO_ENABLED=0 GOCACHE="$root/gocache"
pkg=k8s.io/kubernetes
ldflags="-s -w -X $pkg/vendor/k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
-X $pkg/vendor/k8s.io/component-base/version.gitVersion=$K8S_VERSION \
-X $pkg/vendor/k8s.io/component-base/version.gitMajor=1 \
-X $pkg/vendor/k8s.io/component-base/version.gitMinor=20 \
-X $pkg/vendor/k8s.io/component-base/version.gitTreeState=clean \
-X $pkg/vendor/k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z \
-X $pkg/vendor/k8s.io/client-go/pkg/version.gitMajor=1 \
-X $pkg/vendor/k8s.io/client-go/pkg/version.gitMinor=20"

# 3. OpenAPI definitions (kube-apiserver only): the tarball lacks zz_generated.openapi.go.
openapi_out="$src/pkg/generated/openapi/zz_generated.openapi.go"
if [ ! -s "$openapi_out" ]; then
  log "generating $openapi_out with the vendored openapi-gen"
  ( cd "$gopath/src/$pkg" && go build -o "$root/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen )
  # Same input set as build/root/Makefile.generated_files: every package whose Go files carry the
  # `+k8s:openapi-gen=` tag, from the tree and staging (seen through vendor/).
  inputs="$(cd "$gopath/src/$pkg" && grep -rl --include='*.go' -e '+k8s:openapi-gen=' \
      pkg staging/src cmd plugin 2>/dev/null | xargs -n1 dirname | sort -u \
      | sed -e 's#^staging/src/#'"$pkg"'/vendor/#' -e 't' -e 's#^#'"$pkg"'/#' \
      | grep -v '/testdata\|/test/\|/fixtures' | paste -sd, -)"
  ( cd "$gopath/src/$pkg" && "$root/openapi-gen" \
      --input-dirs "$inputs" \
      --output-package "$pkg/pkg/generated/openapi" \
      --output-file-base zz_generated.openapi \
      --go-header-file hack/boilerplate/boilerplate.generatego.txt \
      --report-filename "$root/openapi-violations.txt" \
      -o "$gopath/src" >&2 )
  [ -s "$openapi_out" ] || die "openapi-gen produced nothing"
fi

# 4. Build what is missing.
declare -A cmdpath=(
  [kube-apiserver]=cmd/kube-apiserver [kube-controller-manager]=cmd/kube-controller-manager
  [kubectl]=cmd/kubectl [kubelet]=cmd/kubelet [kube-scheduler]=cmd/kube-scheduler
  [kube-proxy]=cmd/kube-proxy
)
for c in "${missing[@]}"; do
  [ -n "${cmdpath[$c]:-}" ] || die "unknown component $c"
  t0=$(date +%s)
  log "building $c $K8S_VERSION (GOCACHE $GOCACHE)"
  ( cd "$gopath/src/$pkg" && go build -trimpath -ldflags "$ldflags" -o "$bindir/$c.partial" "./${cmdpath[$c]}" >&2 )
  mv "$bindir/$c.partial" "$bindir/$c"
  log "built $c in $(( $(date +%s) - t0 )) s"
done
log "k8s $K8S_VERSION binaries ready in $(( $(date +%s) - start )) s: $bindir"
echo "$bindir"
