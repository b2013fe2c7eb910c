#!/usr/bin/env bash
# Starts/stops a real Kubernetes v1.20.2 control plane on loopback: etcd + kube-apiserver +
# kube-controller-manager (no nodes: Deployments get ReplicaSets and Pending pods).
#
#   tests/cluster/control-plane.sh up DIR     start (if not running), wait until ready, write
#                                            DIR/kubeconfig and print its path on stdout
#   tests/cluster/control-plane.sh down DIR   stop the processes recorded in DIR (by PID only)
#   tests/cluster/control-plane.sh status DIR
#
# Env: SENSORFLOW_K8S_PORT (apiserver, default 16443), SENSORFLOW_ETCD_PORT (default 12379;
# peer port +1), SENSORFLOW_KCM_PORT (controller-manager secure port, default 10357).
# Binaries come from tests/cluster/build-k8s.sh (built once, cached); etcd from Debian.
. "$(dirname "$0")/../../scripts/lib.sh"
cmd="${1:-}"; dir="${2:-$REPO_ROOT/.sensorflow/k8s}"
api_port="${SENSORFLOW_K8S_PORT:-16443}"
etcd_port="${SENSORFLOW_ETCD_PORT:-12379}"
kcm_port="${SENSORFLOW_KCM_PORT:-10357}"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
pids="$dir/pids"

running() { [ -f "$pids/$1.pid" ] && kill -0 "$(cat "$pids/$1.pid")" 2>/dev/null; }

stop_one() {
  local f="$pids/$1.pid"
  [ -f "$f" ] || return 0
  local pid; pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

api() { curl -fsS --max-time 5 -k -H "Authorization: Bearer $(cat "$dir/token")" "https://127.0.0.1:$api_port$1"; }

case "$cmd" in
  up)
    apt_install etcd-server openssl curl ca-certificates
    bindir="$("$REPO_ROOT/tests/cluster/build-k8s.sh")"
    mkdir -p "$pids" "$dir/pki" "$dir/logs"
    if [ ! -f "$dir/token" ]; then
      openssl rand -hex 24 > "$dir/token"
      openssl genrsa -out "$dir/pki/sa.key" 2048 2>/dev/null
      openssl rsa -in "$dir/pki/sa.key" -pubout -out "$dir/pki/sa.pub" 2>/dev/null
      echo "$(cat "$dir/token"),admin,admin,system:masters" > "$dir/pki/tokens.csv"
    fi
    t0=$(date +%s)
    if ! running etcd; then
      log "starting etcd on 127.0.0.1:$etcd_port (log: $dir/logs/etcd.log)"
      # etcd 3.4 on Debian refuses to start on unsupported arches only; amd64 is fine.
      /usr/bin/etcd --name sensorflow --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
        --initial-cluster "sensorflow=http://127.0.0.1:$((etcd_port + 1))" \
        --quota-backend-bytes 2147483648 >>"$dir/logs/etcd.log" 2>&1 &
      echo $! > "$pids/etcd.pid"
      for _ in $(seq 1 100); do
        curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break
        running etcd || { tail -20 "$dir/logs/etcd.log" >&2; die "etcd exited"; }
        sleep 0.1
      done
    fi
    if ! running kube-apiserver; then
      log "starting kube-apiserver on 127.0.0.1:$api_port (log: $dir/logs/kube-apiserver.log)"
      "$bindir/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
        --cert-dir "$dir/pki/serving" \
        --token-auth-file "$dir/pki/tokens.csv" \
        --authorization-mode RBAC \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$dir/pki/sa.pub" \
        --service-account-signing-key-file "$dir/pki/sa.key" \
        --service-cluster-ip-range 10.96.0.0/16 \
        --allow-privileged=true \
        --insecure-port 0 \
        --v 1 >>"$dir/logs/kube-apiserver.log" 2>&1 &
      echo $! > "$pids/kube-apiserver.pid"
    fi
    for _ in $(seq 1 300); do
      [ "$(api /readyz 2>/dev/null)" = ok ] && break
      running kube-apiserver || { tail -30 "$dir/logs/kube-apiserver.log" >&2; die "kube-apiserver exited"; }
      sleep 0.2
    done
    [ "$(api /readyz 2>/dev/null)" = ok ] || die "kube-apiserver not ready after 60 s"
    cat > "$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sensorflow
  cluster:
    server: https://127.0.0.1:$api_port
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $(cat "$dir/token")
contexts:
- name: sensorflow
  context: {cluster: sensorflow, user: admin, namespace: default}
current-context: sensorflow
EOF
    chmod 600 "$dir/kubeconfig"
    if ! running kube-controller-manager; then
      log "starting kube-controller-manager (log: $dir/logs/kube-controller-manager.log)"
      "$bindir/kube-controller-manager" \
        --kubeconfig "$dir/kubeconfig" \
        --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$kcm_port" --port 0 \
        --leader-elect=false \
        --service-account-private-key-file "$dir/pki/sa.key" \
        --use-service-account-credentials=false \
        --controllers '*' \
        --v 1 >>"$dir/logs/kube-controller-manager.log" 2>&1 &
      echo $! > "$pids/kube-controller-manager.pid"
    fi
    # Ready when the controller-manager works: it creates the default ServiceAccount.
    for _ in $(seq 1 300); do
      api /api/v1/namespaces/default/serviceaccounts/default >/dev/null 2>&1 && break
      running kube-controller-manager || { tail -30 "$dir/logs/kube-controller-manager.log" >&2; die "kube-controller-manager exited"; }
      sleep 0.2
    done
    api /api/v1/namespaces/default/serviceaccounts/default >/dev/null 2>&1 \
      || die "kube-controller-manager not working after 60 s"
    log "control plane ready in $(( $(date +%s) - t0 )) s (kubeconfig: $dir/kubeconfig)"
    echo "$dir/kubeconfig"
    ;;
  down)
    for c in kube-controller-manager kube-apiserver etcd; do stop_one "$c"; done
    log "control plane stopped ($dir)"
    ;;
  status)
    for c in etcd kube-apiserver kube-controller-manager; do
      if running "$c"; then echo "$c: running"; else echo "$c: stopped"; fi
    done
    ;;
  *) echo "usage: $0 up|down|status DIR" >&2; exit 2 ;;
esac
