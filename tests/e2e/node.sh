#!/usr/bin/env bash
# The e2e suite on this machine, without Docker: a real single-node Kubernetes v1.37.2
# (tests/cluster/node.sh: etcd, apiserver, controller-manager, scheduler, containerd + runc +
# CNI bridge, kubelet, kube-proxy, DNS), the SensorFlow image packed without Docker
# (scripts/build-images.sh) and imported into the node's containerd, then tests/e2e/run.sh.
#
#   tests/e2e/node.sh [PYTEST-ARGS…]
#
# Exits 0 with "e2e: skipped (…)" when this machine cannot run a kubelet (node.sh exit 3, e.g.
# not root); otherwise the suite's status. The node is torn down at the end (KEEP=1 keeps it,
# and the broker/GCS server). Env: as tests/e2e/run.sh, plus SENSORFLOW_E2E_NODE_DIR (default
# .sensorflow/e2e-node).
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
cd "$REPO_ROOT"
node_dir="${SENSORFLOW_E2E_NODE_DIR:-$REPO_ROOT/.sensorflow/e2e-node}"
t0=$(date +%s)

# The image build (cargo, CPU-bound) and the node start (mostly waiting) overlap.
mkdir -p "$node_dir"
scripts/build-images.sh >"$node_dir/image-archive" 2>"$node_dir/build-images.log" & p_img=$!
set +e
kubeconfig="$(tests/cluster/node.sh up "$node_dir")"; st=$?
set -e
if [ "$st" = 3 ]; then
  wait "$p_img" || true
  echo "e2e: skipped (this machine cannot run a kubelet; see the message above)"
  exit 0
fi
down() { [ "${KEEP:-0}" = 1 ] && { log "KEEP=1: node left running ($node_dir)"; return; }; tests/cluster/node.sh down "$node_dir" || true; }
trap down EXIT
[ "$st" = 0 ] || { wait "$p_img" || true; die "the single-node cluster did not come up (exit $st)"; }
wait "$p_img" || die_tail "$node_dir/build-images.log" 30 "building the image failed"
archive="$(tail -1 "$node_dir/image-archive")"
tests/cluster/node.sh load "$node_dir" "$archive"
# The helm-upgrade scenario's second operator version: the same build under a second tag (a
# repack of the same binaries, seconds; tests/e2e/run.sh explains why that is enough).
upgrade_image="sensorflow/sensorflow:$(workspace_version)-upgrade"
tests/cluster/node.sh load "$node_dir" "$(scripts/build-images.sh --tag "${upgrade_image##*:}" 2>>"$node_dir/build-images.log" | tail -1)"
log "node and image ready in $(( $(date +%s) - t0 )) s"

KUBECONFIG="$kubeconfig" SENSORFLOW_E2E_HOST_ADDR="$(tests/cluster/node.sh addr "$node_dir")" \
  SENSORFLOW_E2E_UPGRADE_IMAGE="$upgrade_image" \
  KUBECTL="${KUBECTL:-$(tests/cluster/tools.sh kubectl)}" tests/e2e/run.sh "$@"
