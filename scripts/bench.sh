#!/usr/bin/env bash
# Prints the benchmark figures of docs/benchmarks.md, on this machine, each next to the limit it
# is compared with, measured in the same run (the machine is shared: absolute figures vary, the
# ratios much less):
#   1. the pure window engine (readings/s on one core, state bytes per buffered reading)
#   2. through a real Apache Kafka broker (sensorflow-bench broker): window-processor and
#      join-predict end to end vs pass-throughs with the same client settings, the whole
#      pipeline's maximum, and SZ -> prediction latency at half of it (at-least-once,
#      exactly-once, join grace 1 s), with each hop's latency on the broker's clock (SZ -> FA,
#      FA -> prediction, SX/SY -> prediction: the latency topics use LogAppendTime)
#   3. gcs-sink consume -> finalised ZSTD Parquet object vs raw rdkafka consume of the same
#      topics (sink-bench, over the pipeline topics of 2)
#   4. the operator: SensorPipeline applied -> 9 topics + Deployments on a real kube-apiserver,
#      and its RSS (only when the test control plane's binaries are already built:
#      tests/cluster/build-k8s.sh)
# Usage: scripts/bench.sh [--engine-only | --operator-only | --latency-only RATE [--latency-cases C]]
#                         [--readings N] [--latency-seconds S] [--perf]
#   --latency-only RATE   only the latency runs of 2 (with its broker), paced at RATE SZ
#            readings/s (no engine, throughput phases, sink or operator): before/after figures
#            of a latency change in ~1 min a case. --latency-cases: a comma list of alo (at-least-
#            once, join grace 0), eos (exactly-once), grace (join grace 1 s), common (one clock);
#            default all four
#   --operator-only   only 4 (with its broker); SENSORFLOW_BENCH_OPERATOR_LOG sets the
#            operator's RUST_LOG (default warn; its log is .sensorflow/bench/operator.log)
#   --perf   attach `perf record -g` to each processor while it is measured; prints the top
#            entries and leaves the data in .sensorflow/bench/perf/
. "$(dirname "$0")/lib.sh"
. "$REPO_ROOT/scripts/rust-env.sh"
cd "$REPO_ROOT"
engine_only=0; operator_only=0; readings=200000; latency_seconds=20; perf=0
latency_rate=""; latency_cases=alo,eos,grace,common
while [ $# -gt 0 ]; do
  case "$1" in
    --engine-only) engine_only=1; shift ;;
    --operator-only) operator_only=1; shift ;;
    --readings) readings="$2"; shift 2 ;;
    --latency-seconds) latency_seconds="$2"; shift 2 ;;
    --latency-only) latency_rate="$2"; shift 2 ;;
    --latency-cases) latency_cases="$2"; shift 2 ;;
    --perf) perf=1; shift ;;
    *) die "unknown option $1" ;;
  esac
done
cargo build --release --quiet -p sensorflow-apps -p sensorflow-tools -p sensorflow-sink --bins
bin="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
echo "== sensorflow-bench on $(nproc) cores, $(date -u +%Y-%m-%d), load average $(cut -d' ' -f1-3 /proc/loadavg) =="
# Pinned to the last core: the engine is one thread, and a thread that migrates between cores
# pays for cold caches.
[ "$operator_only" = 1 ] || [ -n "$latency_rate" ] || taskset -c "$(( $(nproc) - 1 ))" "$bin/sensorflow-bench" engine
[ "$engine_only" = 1 ] && exit 0
work="$REPO_ROOT/.sensorflow/bench"
"$REPO_ROOT/scripts/broker.sh" stop "$work/broker" >/dev/null 2>&1 || true
rm -rf "$work"; mkdir -p "$work/bin"
# Our own copies: the shared target dir's binaries are last-writer-wins across checkouts, and
# another checkout's build can replace (or delete) them during a 10-minute run.
for b in sensorflow-bench window-processor join-predict sink-bench sensorflow-operator; do
  [ -x "$bin/$b" ] && cp "$bin/$b" "$work/bin/"
done
bin="$work/bin"
export SENSORFLOW_BROKER_PORT="${SENSORFLOW_BENCH_BROKER_PORT:-19392}"
bootstrap="$("$REPO_ROOT/scripts/broker.sh" start "$work/broker")"
trap '"$REPO_ROOT/scripts/broker.sh" stop "$work/broker"' EXIT
perf_args=()
[ "$perf" = 1 ] && perf_args=(--perf-dir "$work/perf")
prefix=bench-
if [ -n "$latency_rate" ]; then
  "$bin/sensorflow-bench" broker --bootstrap-servers "$bootstrap" --bin-dir "$bin" \
    --latency-rate "$latency_rate" --latency-cases "$latency_cases" \
    --latency-seconds "$latency_seconds" --prefix "$prefix"
  exit 0
fi
if [ "$operator_only" = 0 ]; then
  "$bin/sensorflow-bench" broker --bootstrap-servers "$bootstrap" --bin-dir "$bin" \
    --readings "$readings" --latency-seconds "$latency_seconds" --prefix "$prefix" "${perf_args[@]}"

  # The sink over the throughput phase's pipeline topics (readings, features, predictions).
  p="${prefix}p-"
  SF_TOPIC_SX="${p}SX" SF_TOPIC_SY="${p}SY" SF_TOPIC_SZ="${p}SZ" SF_TOPIC_FA="${p}FA" \
  SF_TOPIC_FI="${p}FI" SF_TOPIC_FD="${p}FD" SF_TOPIC_PREDICTIONS="${p}predictions" \
  SF_TOPIC_DLQ="${p}dead-letter" SF_TOPIC_LATE="${p}late" RUST_LOG=warn SF_METRICS_ADDR=127.0.0.1:0 \
    "$bin/sink-bench" --bootstrap-servers "$bootstrap" \
    --sink-topics "${p}SX,${p}SY,${p}SZ,${p}FA,${p}FI,${p}FD,${p}predictions"
fi

# The operator on a real kube-apiserver (the operator tests' control plane), when its binaries
# are built: SensorPipeline applied -> its 9 topics on the broker and its 3 Deployments created.
operator_bench() {
  local kbin; kbin="$("$REPO_ROOT/tests/cluster/build-k8s.sh" --dir)"
  local c
  for c in kube-apiserver kube-controller-manager kubectl etcd; do
    if [ ! -x "$kbin/$c" ]; then
      echo "operator: NOT MEASURED: the test control plane is not built ($kbin/$c missing;"
      echo "          tests/cluster/build-k8s.sh builds it once, as ./run.sh test does)"
      return 0
    fi
  done
  [ -x "$bin/sensorflow-operator" ] || { cargo build --release --quiet -p sensorflow-operator --bin sensorflow-operator \
    && cp "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/sensorflow-operator" "$bin/"; }
  export SENSORFLOW_K8S_PORT="${SENSORFLOW_BENCH_K8S_PORT:-16743}"
  export SENSORFLOW_ETCD_PORT="${SENSORFLOW_BENCH_ETCD_PORT:-12779}"
  export SENSORFLOW_KCM_PORT="${SENSORFLOW_BENCH_KCM_PORT:-10757}"
  local kubeconfig ns=sf-bench mport="${SENSORFLOW_BENCH_OPERATOR_PORT:-18799}"
  kubeconfig="$("$REPO_ROOT/tests/cluster/control-plane.sh" up "$work/k8s")" || { echo "operator: NOT MEASURED: the control plane did not start"; return 0; }
  k() { timeout 60 "$kbin/kubectl" --kubeconfig "$kubeconfig" --request-timeout=30s "$@"; }
  k apply --server-side -f crds/sensorpipelines.yaml >/dev/null
  wait_crd_established 60 k
  k create namespace "$ns" >/dev/null
  KUBECONFIG="$kubeconfig" RUST_LOG="${SENSORFLOW_BENCH_OPERATOR_LOG:-warn}" "$bin/sensorflow-operator" --metrics-addr "127.0.0.1:$mport" \
    --watch-namespaces "$ns" --leader-election false >"$work/operator.log" 2>&1 &
  local opid=$!
  local deadline=$(( $(date +%s) + 60 ))
  until curl -fsS --max-time 2 "http://127.0.0.1:$mport/ready" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "operator: NOT MEASURED: not ready in 60 s ($work/operator.log)"; kill "$opid"; return 0; }
    sleep 0.1
  done
  cat >"$work/pipeline.yaml" <<YAML
apiVersion: sensorflow.io/v1alpha1
kind: SensorPipeline
metadata: {name: bench, namespace: $ns}
spec:
  kafka: {bootstrapServers: "$bootstrap"}
  topics: {partitions: 100, replicationFactor: 1}
  sink: {bucket: bench-archive}
YAML
  # Polled straight from the API server every 50 ms (kubectl's start-up alone is ~0.3 s here):
  # the pipeline's status.createdTopics and the Deployments in its namespace.
  local result
  result=$(API="https://127.0.0.1:$SENSORFLOW_K8S_PORT" TOKEN="$(cat "$work/k8s/token")" \
      CA="$work/k8s/pki/ca.crt" NS="$ns" KUBECTL="$kbin/kubectl" KUBECONFIG="$kubeconfig" \
      MANIFEST="$work/pipeline.yaml" python3 - <<'PY'
import json, os, ssl, subprocess, time, urllib.request
ctx = ssl.create_default_context(cafile=os.environ["CA"])
def get(path):
    req = urllib.request.Request(os.environ["API"] + path,
                                 headers={"Authorization": "Bearer " + os.environ["TOKEN"]})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError:
        return {}
ns = os.environ["NS"]
t0 = time.time()
subprocess.run([os.environ["KUBECTL"], "apply", "-f", os.environ["MANIFEST"]], check=True,
               stdout=subprocess.DEVNULL, timeout=60)
topics = deployments = 0
while time.time() - t0 < 60:
    sp = get(f"/apis/sensorflow.io/v1alpha1/namespaces/{ns}/sensorpipelines/bench")
    topics = len(sp.get("status", {}).get("createdTopics", []) or [])
    deployments = len(get(f"/apis/apps/v1/namespaces/{ns}/deployments").get("items", []))
    if topics >= 9 and deployments >= 3:
        break
    time.sleep(0.05)
print(f"{time.time() - t0:.2f} {topics} {deployments}")
PY
) || { echo "operator: NOT MEASURED: polling the API server failed"; kill "$opid"; return 0; }
  local secs deployments
  read -r secs _ deployments <<<"$result"
  local rss; rss=$(awk '/^VmHWM/ {print $2}' "/proc/$opid/status")
  # The topics on the broker itself, not the operator's word for it.
  local on_broker
  on_broker=$("$bin/sensorflow-bench" list-topics --bootstrap-servers "$bootstrap" | grep -c '^bench\.' || true)
  kill "$opid" 2>/dev/null; wait "$opid" 2>/dev/null || true
  "$REPO_ROOT/tests/cluster/control-plane.sh" down "$work/k8s" >/dev/null 2>&1 || true
  awk -v s="$secs" -v topics="$on_broker" -v deps="$deployments" -v rss="$rss" 'BEGIN {
    printf "operator (real kube-apiserver, 100 partitions)\n"
    printf "  SensorPipeline applied -> %d topics on the broker + %d Deployments: %.1f s (target < 5 s: %s; kubectl apply included)\n", topics, deps, s, (topics >= 9 && deps >= 3 && s < 5) ? "met" : "MISSED"
    printf "  operator peak RSS            %.1f MiB (target < 64 MiB: %s)\n", rss / 1024, (rss / 1024 < 64) ? "met" : "MISSED"
  }'
}
operator_bench

if [ "$perf" = 1 ]; then
  for f in "$work"/perf/*.perf.data; do
    echo "perf: $(basename "$f" .perf.data), top entries by self time"
    perf report -i "$f" --no-children -g none --sort symbol --stdio 2>/dev/null |
      grep -E "^ +[0-9]" | sed "s/ *\$//" | cut -c1-120 | head -15 || true
  done
fi
