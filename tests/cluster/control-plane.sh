#!/usr/bin/env bash
# Starts/stops a real Kubernetes control plane (the release pinned in
# tests/cluster/modules/kubernetes/go.mod): etcd + kube-apiserver + kube-controller-manager (no
# nodes: Deployments get ReplicaSets and Pending pods). The operator tests use it on loopback;
# tests/cluster/node.sh adds a node to the same DIR.
#
#   tests/cluster/control-plane.sh up DIR     start (if not running), wait until ready, write
#                                            DIR/kubeconfig and print its path on stdout
#   tests/cluster/control-plane.sh down DIR   stop the processes recorded in DIR (by PID only)
#   tests/cluster/control-plane.sh status DIR
#   tests/cluster/control-plane.sh kubeconfig DIR NAME CN [ORG]
#                                            write DIR/NAME.kubeconfig for a client certificate
#                                            (CN = user, ORG = group) signed by DIR's CA; prints
#                                            its path (what node.sh gives kubelet, scheduler, proxy)
#   tests/cluster/control-plane.sh servercert DIR NAME CN SAN
#                                            DIR/pki/NAME.{crt,key}, a serving certificate signed
#                                            by the CA (SAN as openssl writes it: IP:…,DNS:…);
#                                            prints the .crt path (node.sh: the kubelet's)
#
# Env: SENSORFLOW_K8S_PORT (apiserver, default 16443), SENSORFLOW_ETCD_PORT (default 12379;
# peer port +1), SENSORFLOW_KCM_PORT (controller-manager secure port, default 10357),
# SENSORFLOW_K8S_BIND_ADDRESS / SENSORFLOW_K8S_ADVERTISE_ADDRESS (apiserver, default 127.0.0.1;
# node.sh: 0.0.0.0 and the node IP, the `kubernetes` Service's endpoint).
#
# PKI (DIR/pki, made once): a CA (ca.crt) that signs the apiserver's serving certificate (valid
# for the advertise address, 127.0.0.1, 10.96.0.1 and kubernetes.default.svc[.cluster.local]),
# client certificates, and that the controller-manager hands to pods (--root-ca-file: the
# kube-root-ca.crt ConfigMap that projected ServiceAccount volumes mount as ca.crt), so in-cluster
# clients verify TLS. The admin kubeconfig authenticates with a token (DIR/token) and verifies
# with ca.crt. ServiceAccount tokens are bound tokens signed with DIR/pki/sa.key (issuer
# https://kubernetes.default.svc); no token Secrets are created any more (since 1.24): get one
# with `kubectl create token SA`.
# Binaries, etcd included, come from tests/cluster/build-k8s.sh (built once, cached).
# shellcheck source=SCRIPTDIR/../lib/suite.sh
. "$(dirname "$0")/../lib/suite.sh"
cmd="${1:-}"; dir="${2:-$REPO_ROOT/.sensorflow/k8s}"
api_port="${SENSORFLOW_K8S_PORT:-16443}"
etcd_port="${SENSORFLOW_ETCD_PORT:-12379}"
kcm_port="${SENSORFLOW_KCM_PORT:-10357}"
bind_addr="${SENSORFLOW_K8S_BIND_ADDRESS:-127.0.0.1}"
advertise="${SENSORFLOW_K8S_ADVERTISE_ADDRESS:-127.0.0.1}"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
pid_dir="$dir/pids"  # running / stop_one (tests/lib/suite.sh) read the PID files here
pki="$dir/pki"

api() { curl -fsS --max-time 5 --cacert "$pki/ca.crt" -H "Authorization: Bearer $(cat "$dir/token")" "https://127.0.0.1:$api_port$1"; }

# ensure_ca: DIR/pki/ca.{key,crt}, made once per DIR (valid 10 years). ECDSA P-256 keys here
# and below: a fraction of RSA's key generation time on a busy 2-core machine. (sa.key, which
# signs ServiceAccount tokens, stays RSA: RS256.)
ensure_ca() {
  mkdir -p "$pki"
  [ -s "$pki/ca.crt" ] && return 0
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$pki/ca.key" -out "$pki/ca.crt.partial" \
    -days 3650 -subj "/CN=sensorflow-ca" 2>/dev/null
  mv "$pki/ca.crt.partial" "$pki/ca.crt"
}

# issue NAME CN ORG USAGE [SAN]: DIR/pki/NAME.{key,crt} signed by the CA. USAGE is serverAuth or
# clientAuth; ORG (the group of a client) may be empty.
issue() {
  local name="$1" cn="$2" org="$3" usage="$4" san="${5:-}" subj ext
  subj="/CN=$cn"; [ -z "$org" ] || subj="/O=$org$subj"
  ext="$pki/$name.ext"
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"; [ -z "$san" ] || echo "subjectAltName=$san"; } > "$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$pki/$name.key" -out "$pki/$name.csr" \
    -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$ext"
}

# write_kubeconfig OUT USER-FIELDS: a kubeconfig for https://127.0.0.1:PORT verified with ca.crt.
write_kubeconfig() {
  cat > "$1.partial" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sensorflow
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(base64 -w0 < "$pki/ca.crt")
users:
- name: user
  user:
$2
contexts:
- name: sensorflow
  context: {cluster: sensorflow, user: user, namespace: default}
current-context: sensorflow
EOF
  chmod 600 "$1.partial"; mv "$1.partial" "$1"
}

case "$cmd" in
  up)
    apt_install openssl curl ca-certificates
    bindir="$("$REPO_ROOT/tests/cluster/build-k8s.sh")"
    mkdir -p "$pid_dir" "$pki" "$dir/logs"
    if [ ! -f "$dir/token" ]; then
      openssl rand -hex 24 > "$dir/token"
      openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
      openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
      echo "$(cat "$dir/token"),admin,admin,system:masters" > "$pki/tokens.csv"
    fi
    ensure_ca
    t0=$(date +%s)
    if ! running etcd; then
      log "starting etcd on 127.0.0.1:$etcd_port (log: $dir/logs/etcd.log)"
      # --unsafe-no-fsync: throwaway test data; fsync latency of a busy VM disk would otherwise
      # show up in every API write.
      "$bindir/etcd" --name sensorflow --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
        --initial-cluster "sensorflow=http://127.0.0.1:$((etcd_port + 1))" \
        --quota-backend-bytes 2147483648 --unsafe-no-fsync --log-level warn >>"$dir/logs/etcd.log" 2>&1 &
      echo $! > "$pid_dir/etcd.pid"
      for _ in $(seq 1 100); do
        curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break
        running etcd || die_tail "$dir/logs/etcd.log" 20 "etcd exited"
        sleep 0.1
      done
    fi
    if ! running kube-apiserver; then
      # Issued at every start: the advertise address may differ from the last run's.
      issue apiserver kube-apiserver "" serverAuth "DNS:kubernetes,DNS:kubernetes.default,\
DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,\
IP:127.0.0.1,IP:10.96.0.1,IP:$advertise"
      [ -s "$pki/apiserver-kubelet-client.crt" ] \
        || issue apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
      log "starting kube-apiserver on $bind_addr:$api_port advertising $advertise (log: $dir/logs/kube-apiserver.log)"
      # The `kubernetes` Service's endpoint is the advertise address, which may not be loopback
      # (refused since 1.2x): with no node (operator tests, 127.0.0.1) there is nobody to reach
      # it, so no endpoint reconciler; node.sh advertises the node IP and gets the usual one.
      reconciler=lease
      case "$advertise" in 127.*) reconciler=none ;; esac
      # Node,RBAC + NodeRestriction: a kubelet (user system:node:NAME) sees only its own pods'
      # secrets, as on kubeadm/kind clusters. Both are inert when no node exists.
      "$bindir/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address "$bind_addr" --advertise-address "$advertise" --secure-port "$api_port" \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --token-auth-file "$pki/tokens.csv" \
        --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$pki/ca.crt" \
        --kubelet-preferred-address-types InternalIP,Hostname,ExternalIP \
        --authorization-mode Node,RBAC \
        --enable-admission-plugins NodeRestriction \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$pki/sa.pub" \
        --service-account-signing-key-file "$pki/sa.key" \
        --service-cluster-ip-range 10.96.0.0/16 \
        --endpoint-reconciler-type "$reconciler" \
        --allow-privileged=true \
        --v 1 >>"$dir/logs/kube-apiserver.log" 2>&1 &
      echo $! > "$pid_dir/kube-apiserver.pid"
    fi
    for _ in $(seq 1 300); do
      [ "$(api /readyz 2>/dev/null)" = ok ] && break
      running kube-apiserver || die_tail "$dir/logs/kube-apiserver.log" 30 "kube-apiserver exited"
      sleep 0.2
    done
    [ "$(api /readyz 2>/dev/null)" = ok ] || die "kube-apiserver not ready after 60 s"
    write_kubeconfig "$dir/kubeconfig" "    token: $(cat "$dir/token")"
    if ! running kube-controller-manager; then
      log "starting kube-controller-manager (log: $dir/logs/kube-controller-manager.log)"
      # --root-ca-file: the CA pods get as ca.crt; --cluster-signing-*: approved CSRs get signed.
      # No --allocate-node-cidrs: its controller sleeps 10 s before listing nodes and holds up
      # every controller started after it (the ServiceAccount one too); node.sh's CNI config
      # has the pod range.
      "$bindir/kube-controller-manager" \
        --kubeconfig "$dir/kubeconfig" \
        --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$kcm_port" \
        --leader-elect=false \
        --service-account-private-key-file "$pki/sa.key" \
        --flex-volume-plugin-dir "$dir/flexvolume" \
        --root-ca-file "$pki/ca.crt" \
        --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
        --service-cluster-ip-range 10.96.0.0/16 \
        --use-service-account-credentials=false \
        --controllers '*' \
        --v 1 >>"$dir/logs/kube-controller-manager.log" 2>&1 &
      echo $! > "$pid_dir/kube-controller-manager.pid"
    fi
    # Ready when the controller-manager works: it creates the default ServiceAccount.
    for _ in $(seq 1 300); do
      api /api/v1/namespaces/default/serviceaccounts/default >/dev/null 2>&1 && break
      running kube-controller-manager || die_tail "$dir/logs/kube-controller-manager.log" 30 "kube-controller-manager exited"
      sleep 0.2
    done
    api /api/v1/namespaces/default/serviceaccounts/default >/dev/null 2>&1 \
      || die "kube-controller-manager not working after 60 s"
    log "control plane ready in $(( $(date +%s) - t0 )) s (kubeconfig: $dir/kubeconfig)"
    echo "$dir/kubeconfig"
    ;;
  kubeconfig)
    name="${3:?usage: $0 kubeconfig DIR NAME CN [ORG]}"; cn="${4:?CN}"; org="${5:-}"
    apt_install openssl
    ensure_ca
    [ -s "$pki/$name.crt" ] || issue "$name" "$cn" "$org" clientAuth
    write_kubeconfig "$dir/$name.kubeconfig" "    client-certificate-data: $(base64 -w0 < "$pki/$name.crt")
    client-key-data: $(base64 -w0 < "$pki/$name.key")"
    echo "$dir/$name.kubeconfig"
    ;;
  servercert)
    name="${3:?usage: $0 servercert DIR NAME CN SAN}"; cn="${4:?CN}"; san="${5:?SAN}"
    apt_install openssl
    ensure_ca
    issue "$name" "$cn" "" serverAuth "$san"
    echo "$pki/$name.crt"
    ;;
  down)
    for c in kube-controller-manager kube-apiserver etcd; do stop_one "$c" 5; done
    log "control plane stopped ($dir)"
    ;;
  status)
    for c in etcd kube-apiserver kube-controller-manager; do
      if running "$c"; then echo "$c: running"; else echo "$c: stopped"; fi
    done
    ;;
  *) echo "usage: $0 up|down|status DIR | kubeconfig DIR NAME CN [ORG] | servercert DIR NAME CN SAN" >&2; exit 2 ;;
esac
