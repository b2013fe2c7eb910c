#!/usr/bin/env bash
# Starts/stops a local single-node Apache Kafka 4.x broker (KRaft combined mode: broker and
# controller in one JVM), on loopback by default.
#
#   scripts/broker.sh start [DIR]   start (if not running) with data in DIR (default .sensorflow/broker),
#                                   wait until a client can list topics, print the PLAINTEXT
#                                   bootstrap address (host:port) on stdout
#   scripts/broker.sh stop [DIR]    stop the broker started from DIR (by recorded PID; SIGTERM is a
#                                   controlled shutdown, SIGKILL after 30 s)
#   scripts/broker.sh status [DIR]
#
# Env: SENSORFLOW_BROKER_PORT (PLAINTEXT, default 19092; the KRaft controller listens on
# 127.0.0.1:PORT+1 and the SASL_SSL listener on PORT+2 unless SENSORFLOW_BROKER_CONTROLLER_PORT /
# SENSORFLOW_BROKER_SASL_PORT say otherwise), SENSORFLOW_BROKER_LISTEN (address to bind, default
# 127.0.0.1; 0.0.0.0 for pods on a node), SENSORFLOW_BROKER_ADVERTISE (host clients are told to
# use, default the listen address; the e2e suite sets the node address pods reach the host at),
# SENSORFLOW_BROKER_HEAP (JVM heap, default 1G).
#
# The secured listener is what managed clusters (Confluent Cloud, MSK) offer: SASL_SSL with a
# test CA made here (DIR/pki/ca.crt) and one user for each of SCRAM-SHA-512 and PLAIN, written
# to DIR/sasl.env (KAFKA_* variables the SensorFlow binaries read) and DIR/bootstrap-sasl.
#
# The SSL listener is what Strimzi gives a KafkaUser with `authentication: tls`: mutual TLS
# (ssl.client.auth=required), client certificates signed by the same test CA. The broker runs
# an authorizer (StandardAuthorizer, KRaft's) with no access for a principal without ACLs
# (allow.everyone.if.no.acl.found=false, the default). Super users, so every suite that does not
# test ACLs runs as before: User:ANONYMOUS (the PLAINTEXT and controller listeners), the SCRAM
# user `sensorflow` and the PLAIN user `sensorflow-plain`. Two principals have no rights but
# the ACLs a test grants them (docs/security.md lists the pipeline's):
# - the SCRAM-SHA-512 user `sensorflow-acl` (SENSORFLOW_BROKER_ACL_USERNAME/_PASSWORD in
#   DIR/sasl.env);
# - the client certificate DIR/pki/acl-tls.crt/.key, principal `User:CN=sensorflow-acl-tls`,
#   written with the listener's address to DIR/tls.env (KAFKA_* variables) and in Strimzi's
#   KafkaUser Secret layout to DIR/pki/strimzi-user/{ca.crt,user.crt,user.key}.
# ACLs are added through the PLAINTEXT listener (a super user), e.g. with
# `org.apache.kafka.tools.AclCommand` from the installed jars (`sensorflow acls` prints them).
#
# Kafka's stock limits are kept, as managed clusters (Confluent Cloud, MSK, Strimzi) keep
# them: 7-day retention by record timestamp, records at most 1 h ahead of the broker clock
# (KIP-1030), 1 MiB record batches. Where the project needs more, the operator and
# `sensorflow create-topics` set it on the topics they create (docs/broker.md). Only what a
# single node needs differs from the defaults (see docs/broker.md):
# - replication factors and min ISR 1 for the internal topics (one broker), 10 partitions for the
#   offsets and transaction logs (50 by default; created at the first group), transactions on
#   (KIP-98/447: the exactly-once mode);
# - group.initial.rebalance.delay.ms=0, a choice for test speed: no 3 s wait per new group;
# - auto.create.topics.enable=false: a producer writing to a topic nobody created is a bug we
#   want to see, as on a managed cluster.
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
cmd="${1:-}"; dir="${2:-$REPO_ROOT/.sensorflow/broker}"
port="${SENSORFLOW_BROKER_PORT:-19092}"
cport="${SENSORFLOW_BROKER_CONTROLLER_PORT:-$((port + 1))}"
sport="${SENSORFLOW_BROKER_SASL_PORT:-$((port + 2))}"
tport="${SENSORFLOW_BROKER_TLS_PORT:-$((port + 3))}"
listen="${SENSORFLOW_BROKER_LISTEN:-127.0.0.1}"
advertise="${SENSORFLOW_BROKER_ADVERTISE:-$listen}"
heap="${SENSORFLOW_BROKER_HEAP:-1G}"
pidfile="$dir/kafka.pid"
running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

# make_pki: a CA and a server certificate for the SASL_SSL listener, once per DIR.
make_pki() {
  local pki="$dir/pki"
  [ -f "$pki/server.pem" ] && return 0
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=sensorflow-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$advertise" \
    -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
  local san="DNS:localhost,IP:127.0.0.1"
  [[ "$advertise" =~ ^[0-9.]+$ ]] && [ "$advertise" != 127.0.0.1 ] && san="$san,IP:$advertise"
  [[ "$advertise" =~ ^[0-9.]+$ ]] || san="$san,DNS:$advertise"
  printf 'subjectAltName=%s\n' "$san" > "$pki/ext.cnf"
  openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/ext.cnf" -out "$pki/server.crt" 2>/dev/null
  # Kafka's PEM key store: the certificate chain and an unencrypted PKCS#8 key in one file.
  { openssl pkcs8 -topk8 -nocrypt -in "$pki/server.key"; cat "$pki/server.crt" "$pki/ca.crt"; } > "$pki/server.pem"
}

# make_client_cert NAME CN: a client certificate signed by the test CA (DIR/pki/NAME.crt, an
# unencrypted PKCS#8 key in DIR/pki/NAME.key, as Strimzi's user.key), once per DIR.
make_client_cert() {
  local pki="$dir/pki" name="$1" cn="$2"
  [ -f "$pki/$name.crt" ] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > "$pki/$name.cnf"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/$name.cnf" -out "$pki/$name.crt" 2>/dev/null
  # The same files under the names of a Strimzi KafkaUser Secret (ca.crt there is the clients
  # CA; one test CA signs both sides here).
  mkdir -p "$pki/strimzi-user"
  cp "$pki/ca.crt" "$pki/strimzi-user/ca.crt"; cp "$pki/$name.crt" "$pki/strimzi-user/user.crt"
  cp "$pki/$name.key" "$pki/strimzi-user/user.key"
}

write_config() {
  local pw_scram pw_plain
  pw_scram="$(cat "$dir/.scram-password")"; pw_plain="$(cat "$dir/.plain-password")"
  cat > "$dir/server.properties" <<PROPS
# Written by scripts/broker.sh at every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://$listen:$port,CONTROLLER://127.0.0.1:$cport,SASL_SSL://$listen:$sport,SSL://$listen:$tport
advertised.listeners=PLAINTEXT://$advertise:$port,SASL_SSL://$advertise:$sport,SSL://$advertise:$tport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
ssl.keystore.type=PEM
ssl.keystore.location=$dir/pki/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=$dir/pki/ca.crt
listener.name.ssl.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:sensorflow;User:sensorflow-plain
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_sensorflow-plain="$pw_plain";
PROPS
}

java_opts() {
  echo "-Xms$heap -Xmx$heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
-Djava.awt.headless=true -Dkafka.logs.dir=$dir/logs \
-Dlog4j2.configurationFile=$REPO_ROOT/scripts/kafka/log4j2.xml"
}

case "$cmd" in
  start)
    mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"; pidfile="$dir/kafka.pid"
    if running; then cat "$dir/bootstrap"; exit 0; fi
    libs="$("$REPO_ROOT/scripts/install-kafka.sh")"
    cp="$libs/*"
    make_pki
    [ -f "$dir/.scram-password" ] || head -c 18 /dev/urandom | base64 | tr '+/' '-_' > "$dir/.scram-password"
    [ -f "$dir/.plain-password" ] || head -c 18 /dev/urandom | base64 | tr '+/' '-_' > "$dir/.plain-password"
    [ -f "$dir/.acl-password" ] || head -c 18 /dev/urandom | base64 | tr '+/' '-_' > "$dir/.acl-password"
    make_client_cert acl-tls sensorflow-acl-tls
    mkdir -p "$dir/logs"
    write_config
    # shellcheck disable=SC2046
    if [ ! -f "$dir/data/meta.properties" ]; then
      # Storage is formatted once per DIR: a cluster id, and the SCRAM user as KRaft metadata.
      cluster_id="$(java $(java_opts) -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null)"
      java $(java_opts) -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
        --add-scram "SCRAM-SHA-512=[name=sensorflow,password=$(cat "$dir/.scram-password")]" \
        --add-scram "SCRAM-SHA-512=[name=sensorflow-acl,password=$(cat "$dir/.acl-password")]" \
        >"$dir/logs/format.log" 2>&1 || { cat "$dir/logs/format.log" >&2; die "formatting Kafka storage in $dir/data failed"; }
      touch "$dir/.acl-user"
    fi
    log "starting Apache Kafka on $listen:$port (SASL_SSL :$sport, SSL :$tport), advertised as $advertise (data: $dir/data, log: $dir/logs/server.log)"
    # shellcheck disable=SC2046
    nohup java $(java_opts) -cp "$cp" kafka.Kafka "$dir/server.properties" >>"$dir/logs/stdout.log" 2>&1 &
    echo $! > "$pidfile"
    # Ready = the broker answers a client's metadata request (kafka-topics --list), not a sleep.
    deadline=$(( $(date +%s) + 90 ))
    until (exec 3<>"/dev/tcp/$advertise/$port") 2>/dev/null; do
      running || { tail -30 "$dir/logs/stdout.log" "$dir/logs/server.log" >&2 2>/dev/null; die "Kafka exited during start-up"; }
      [ "$(date +%s)" -lt "$deadline" ] || die "Kafka did not listen on $port within 90 s (log: $dir/logs/server.log)"
      sleep 0.2
    done
    # shellcheck disable=SC2046
    until timeout 30 java -Xmx256m -cp "$cp" -Dlog4j2.configurationFile="$REPO_ROOT/scripts/kafka/log4j2.xml" \
        -Dkafka.logs.dir="$dir/logs/tools" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$advertise:$port" --list >/dev/null 2>&1; do
      running || die "Kafka exited during start-up (log: $dir/logs/server.log)"
      [ "$(date +%s)" -lt "$deadline" ] || die "Kafka did not answer a topic listing within 90 s (log: $dir/logs/server.log)"
      sleep 0.5
    done
    # The first consumer group creates __consumer_offsets; do it now, not under a test's timeout.
    timeout 60 java -Xmx256m -cp "$cp" -Dlog4j2.configurationFile="$REPO_ROOT/scripts/kafka/log4j2.xml" \
      -Dkafka.logs.dir="$dir/logs/tools" org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
      --bootstrap-server "$advertise:$port" --describe --group sensorflow-broker-warmup >/dev/null 2>&1 || true
    # A DIR formatted before the ACL user existed gets it now (ConfigCommand upserts it).
    if [ ! -f "$dir/.acl-user" ]; then
      timeout 60 java -Xmx256m -cp "$cp" -Dlog4j2.configurationFile="$REPO_ROOT/scripts/kafka/log4j2.xml" \
        -Dkafka.logs.dir="$dir/logs/tools" org.apache.kafka.tools.ConfigCommand \
        --bootstrap-server "$advertise:$port" --alter --entity-type users --entity-name sensorflow-acl \
        --add-config "SCRAM-SHA-512=[password=$(cat "$dir/.acl-password")]" >/dev/null \
        || die "adding the SCRAM user sensorflow-acl failed"
      touch "$dir/.acl-user"
    fi
    cat > "$dir/sasl.env" <<ENV
KAFKA_BOOTSTRAP_SERVERS=$advertise:$sport
KAFKA_SECURITY_PROTOCOL=SASL_SSL
KAFKA_SASL_MECHANISM=SCRAM-SHA-512
KAFKA_SASL_USERNAME=sensorflow
KAFKA_SASL_PASSWORD=$(cat "$dir/.scram-password")
KAFKA_SSL_CA_LOCATION=$dir/pki/ca.crt
SENSORFLOW_BROKER_PLAIN_USERNAME=sensorflow-plain
SENSORFLOW_BROKER_PLAIN_PASSWORD=$(cat "$dir/.plain-password")
SENSORFLOW_BROKER_ACL_USERNAME=sensorflow-acl
SENSORFLOW_BROKER_ACL_PASSWORD=$(cat "$dir/.acl-password")
ENV
    cat > "$dir/tls.env" <<ENV
KAFKA_BOOTSTRAP_SERVERS=$advertise:$tport
KAFKA_SECURITY_PROTOCOL=SSL
KAFKA_SSL_CA_LOCATION=$dir/pki/ca.crt
KAFKA_SSL_CERTIFICATE_LOCATION=$dir/pki/acl-tls.crt
KAFKA_SSL_KEY_LOCATION=$dir/pki/acl-tls.key
SENSORFLOW_BROKER_TLS_PRINCIPAL=User:CN=sensorflow-acl-tls
SENSORFLOW_BROKER_STRIMZI_USER_DIR=$dir/pki/strimzi-user
SENSORFLOW_BROKER_PLAINTEXT=$advertise:$port
SENSORFLOW_BROKER_KAFKA_LIBS=$libs
ENV
    echo "$advertise:$sport" > "$dir/bootstrap-sasl"
    echo "$advertise:$port" | tee "$dir/bootstrap"
    ;;
  stop)
    if running; then
      pid="$(cat "$pidfile")"; kill "$pid"
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      log "Kafka stopped"
    fi
    rm -f "$pidfile"
    ;;
  status) running && echo "running: $(cat "$dir/bootstrap" 2>/dev/null)" || { echo "stopped"; exit 1; } ;;
  *) echo "usage: $0 start|stop|status [DIR]" >&2; exit 2 ;;
esac
