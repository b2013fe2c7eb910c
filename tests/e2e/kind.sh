#!/usr/bin/env bash
# The e2e suite on kind, for machines with Docker:
#
#   tests/e2e/kind.sh [PYTEST-ARGS…]
#
# Creates the cluster from kind-config.yaml (unless it exists), builds the image with the
# Dockerfile, `kind load`s it, and runs tests/e2e/run.sh against it. The broker and the GCS
# server run on this host, bound to 0.0.0.0; pods reach them at the gateway of Docker's `kind`
# network (e.g. 172.18.0.1), so a host firewall must let the kind network in on the e2e ports
# (SENSORFLOW_E2E_BROKER_PORT 29092, SENSORFLOW_E2E_GCS_PORT 29443).
#
# Needs: docker, kind (≥ 0.20), kubectl and helm (v3.8+ or v4) on PATH, Python 3, Rust (the
# host-side replay). Env: SENSORFLOW_KIND_CLUSTER (default sensorflow-e2e),
# SENSORFLOW_KIND_NODE_IMAGE (a kindest/node image, default kind's own), KEEP_CLUSTER=1 keeps
# the cluster afterwards (it is deleted otherwise, if this script created it).
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
cd "$REPO_ROOT"
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || die "$tool not found on PATH (kind e2e needs docker, kind, kubectl, helm)"
done
cluster="${SENSORFLOW_KIND_CLUSTER:-sensorflow-e2e}"
image="sensorflow/sensorflow:$(workspace_version)"
created=0
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "creating kind cluster $cluster from kind-config.yaml"
  kind create cluster --name "$cluster" --config kind-config.yaml \
    ${SENSORFLOW_KIND_NODE_IMAGE:+--image "$SENSORFLOW_KIND_NODE_IMAGE"} --wait 120s
  created=1
fi
cleanup() {
  if [ "$created" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then kind delete cluster --name "$cluster"; fi
}
trap cleanup EXIT
kubeconfig="$REPO_ROOT/.sensorflow/kind-$cluster.kubeconfig"
mkdir -p "$(dirname "$kubeconfig")"
kind get kubeconfig --name "$cluster" >"$kubeconfig"

log "building $image with the Dockerfile and loading it into kind"
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

# The IPv4 gateway of the `kind` network is this host as the kind nodes (and their pods) see it.
host="$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 -E '^[0-9]+\.')"
[ -n "$host" ] || die "no IPv4 gateway on Docker's kind network"
KUBECONFIG="$kubeconfig" SENSORFLOW_E2E_HOST_ADDR="$host" SENSORFLOW_E2E_IMAGE="$image" \
  tests/e2e/run.sh "$@"
