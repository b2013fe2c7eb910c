#!/usr/bin/env bash
# The e2e suite (tests/e2e/run.sh: helm install, kubectl apply of a SensorPipeline, scaling,
# chaos, deletion) on a kind cluster created from kind-config.yaml:
#
#   tests/e2e/kind.sh [PYTEST-ARGS…]
#
# Two routes to the images, chosen by SENSORFLOW_KIND_IMAGES:
#   local (default)  works without a registry (CI): the node image is assembled here from our
#                    Kubernetes build (tests/cluster/kind-node-image.sh), the SensorFlow image is
#                    packed without Docker (scripts/build-images.sh) and `kind load image-archive`d
#   published        a developer machine with Docker and internet: kind's own node image
#                    (kindest/node, or SENSORFLOW_KIND_NODE_IMAGE), the SensorFlow image built
#                    with the Dockerfile (`docker build`, which pulls rust:…-bookworm and
#                    distroless) and `kind load docker-image`d
# The Docker engine is the caller's when one answers (DOCKER_HOST or /var/run/docker.sock);
# otherwise, as root, tests/cluster/docker.sh installs docker.io and starts a private dockerd
# for this run (socket /run/sensorflow-docker/docker.sock), stopped again at the end. kind itself
# is built from the Go module proxy (sigs.k8s.io/kind $SENSORFLOW_KIND_VERSION, default v0.33.0,
# cached in $SENSORFLOW_CACHE/kind-VERSION) unless KIND names a binary.
#
# The broker and the GCS server run on this host, bound to 0.0.0.0; pods reach them at the
# gateway of Docker's `kind` network (e.g. 172.18.0.1), so a host firewall must let the kind
# network in on SENSORFLOW_E2E_BROKER_PORT / SENSORFLOW_E2E_GCS_PORT (29092 / 29443).
#
# Teardown: the cluster is deleted if this script created it, then the engine is stopped if
# this script started it; the host's global kernel settings (sysctls) a privileged kind node
# changed are written back (tests/cluster/docker.sh). KEEP_CLUSTER=1 keeps cluster and engine
# (then: kind delete cluster --name NAME; tests/cluster/docker.sh down .sensorflow/kind-docker).
#
# Env: SENSORFLOW_KIND_CLUSTER (sensorflow-e2e), SENSORFLOW_KIND_IMAGES (local), SENSORFLOW_KIND_NODE_IMAGE,
# SENSORFLOW_KIND_IMAGE_DIR (where the local route's image archive goes, default
# $SENSORFLOW_CACHE/images; another checkout sharing that cache should use its own),
# KIND, KUBECTL, HELM, and tests/e2e/run.sh's. Prints the suite's "e2e: N passed, M failed";
# every step logs its time ("kind: … in N s").
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
cd "$REPO_ROOT"
cluster="${SENSORFLOW_KIND_CLUSTER:-sensorflow-e2e}"
route="${SENSORFLOW_KIND_IMAGES:-local}"
state="$REPO_ROOT/.sensorflow/kind-docker"
work="$REPO_ROOT/.sensorflow/kind"
image="sensorflow/sensorflow:$(workspace_version)"
case "$route" in local|published) ;; *) die "SENSORFLOW_KIND_IMAGES must be local or published, not $route" ;; esac
mkdir -p "$work"
t0=$(date +%s)
since() { echo "$(( $(date +%s) - $1 )) s"; }

# kind: pinned, built from the Go module proxy (tests/cluster/tools.sh kind), unless KIND is set.
KIND="${KIND:-$(tests/cluster/tools.sh kind)}"
KUBECTL="${KUBECTL:-$(tests/cluster/tools.sh kubectl)}"
HELM="${HELM:-$(tests/cluster/tools.sh helm)}"
export KUBECTL HELM

# --- the Docker engine ---------------------------------------------------------------------------
t=$(date +%s)
DOCKER_HOST="$(tests/cluster/docker.sh up "$state")" || die "no Docker engine (tests/cluster/docker.sh up)"
export DOCKER_HOST
log "kind: Docker engine at $DOCKER_HOST in $(since "$t")"

# kind writes its kubeconfig here, not into ~/.kube/config.
kubeconfig="$work/$cluster.kubeconfig"
created=0
# shellcheck disable=SC2317 # (run by the EXIT trap)
teardown() {
  local st=$?
  set +e
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    log "KEEP_CLUSTER=1: cluster $cluster and the engine left running (DOCKER_HOST=$DOCKER_HOST)"
    return
  fi
  if [ -n "${p_img:-}" ]; then kill -- "-$p_img" 2>/dev/null; wait "$p_img" 2>/dev/null; fi
  if [ "$created" = 1 ]; then
    local t; t=$(date +%s)
    "$KIND" delete cluster --name "$cluster" --kubeconfig "$kubeconfig" >&2
    log "kind: cluster deleted in $(since "$t")"
  fi
  tests/cluster/docker.sh down "$state"
  exit "$st"
}
trap teardown EXIT

# --- images and cluster (the image build, CPU-bound, overlaps the cluster start) -------------------
if [ "$route" = local ]; then
  # (its own process group: teardown stops it with its cargo)
  setsid scripts/build-images.sh --out "${SENSORFLOW_KIND_IMAGE_DIR:-$SENSORFLOW_CACHE/images}" \
    >"$work/image-archive" 2>"$work/build-images.log" & p_img=$!
  t=$(date +%s)
  node_image="${SENSORFLOW_KIND_NODE_IMAGE:-$(tests/cluster/kind-node-image.sh)}" || die "assembling the kind node image failed"
  log "kind: node image $node_image ready in $(since "$t")"
else
  node_image="${SENSORFLOW_KIND_NODE_IMAGE:-}"
  command -v docker >/dev/null || die "docker CLI not found"
  DOCKER_BUILDKIT=1 setsid docker build -t "$image" . >"$work/docker-build.log" 2>&1 & p_img=$!
fi

if "$KIND" get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "kind: cluster $cluster exists: used as it is"
  "$KIND" get kubeconfig --name "$cluster" >"$kubeconfig"
else
  t=$(date +%s)
  log "kind: creating cluster $cluster from kind-config.yaml${node_image:+ with $node_image}"
  created=1
  "$KIND" create cluster --name "$cluster" --config kind-config.yaml --kubeconfig "$kubeconfig" \
    ${node_image:+--image "$node_image"} --wait 180s >&2 || die "kind create cluster failed"
  log "kind: cluster created in $(since "$t")"
fi

t=$(date +%s)
if [ "$route" = local ]; then
  wait "$p_img" || die_tail "$work/build-images.log" 30 "building the image failed"; p_img=""
  archive="$(tail -1 "$work/image-archive")"
  "$KIND" load image-archive "$archive" --name "$cluster" >&2 || die "kind load image-archive failed"
else
  wait "$p_img" || die_tail "$work/docker-build.log" 30 "docker build failed"; p_img=""
  "$KIND" load docker-image "$image" --name "$cluster" >&2 || die "kind load docker-image failed"
fi
log "kind: $image built and loaded in $(since "$t")"
# The helm-upgrade scenario's second operator version: the same image under a second tag, made in
# the node's containerd (no second build or load; tests/e2e/run.sh explains why that is enough).
upgrade_image="${image}-upgrade"
docker exec "$cluster-control-plane" ctr -n k8s.io images tag --force "docker.io/$image" "docker.io/$upgrade_image" >&2 \
  || die "tagging $image as $upgrade_image in the node failed"
# The kernel settings as the cluster set them: what teardown writes back.
tests/cluster/docker.sh mark "$state"

# The IPv4 gateway of the `kind` network is this host as the nodes (and their pods) see it.
host="$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 -E '^[0-9]+\.' || true)"
[ -n "$host" ] || die "no IPv4 gateway on Docker's kind network"
log "kind: cluster $cluster ready in $(since "$t0") (pods reach this host at $host)"

set +e
KUBECONFIG="$kubeconfig" SENSORFLOW_E2E_HOST_ADDR="$host" SENSORFLOW_E2E_IMAGE="$image" \
  SENSORFLOW_E2E_UPGRADE_IMAGE="$upgrade_image" tests/e2e/run.sh "$@"
st=$?
set -e
log "kind: e2e finished after $(since "$t0") in all"
exit "$st"
