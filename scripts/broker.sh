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

write_config() {
  local pw_scram pw_plain
  pw_scram="$(cat "$dir/.scram-password")"; pw_plain="$(cat "$dir/.plain-password")"
  cat > "$dir/server.properties" <<PROPS
# Written by scripts/broker.sh at every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://$listen:$port,CONTROLLER://127.0.0.1:$cport,SASL_SSL://$listen:$sport
advertised.listeners=PLAINTEXT://$advertise:$port,SASL_SSL://$advertise:$sport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
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
    mkdir -p "$dir/logs"
    write_config
    # shellcheck disable=SC2046
    if [ ! -f "$dir/data/meta.properties" ]; then
      # Storage is formatted once per DIR: a cluster id, and the SCRAM user as KRaft metadata.
      cluster_id="$(java $(java_opts) -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null)"
      java $(java_opts) -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
        --add-scram "SCRAM-SHA-512=[name=sensorflow,password=$(cat "$dir/.scram-password")]" \
        >"$dir/logs/format.log" 2>&1 || { cat "$dir/logs/format.log" >&2; die "formatting Kafka storage in $dir/data failed"; }
    fi
    log "starting Apache Kafka on $listen:$port (SASL_SSL :$sport), advertised as $advertise (data: $dir/data, log: $dir/logs/server.log)"
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
    cat > "$dir/sasl.env" <<ENV
KAFKA_BOOTSTRAP_SERVERS=$advertise:$sport
KAFKA_SECURITY_PROTOCOL=SASL_SSL
KAFKA_SASL_MECHANISM=SCRAM-SHA-512
KAFKA_SASL_USERNAME=sensorflow
KAFKA_SASL_PASSWORD=$(cat "$dir/.scram-password")
KAFKA_SSL_CA_LOCATION=$dir/pki/ca.crt
SENSORFLOW_BROKER_PLAIN_USERNAME=sensorflow-plain
SENSORFLOW_BROKER_PLAIN_PASSWORD=$(cat "$dir/.plain-password")
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
