#!/usr/bin/env bash
# Starts/stops a local tansu Kafka-protocol broker (sqlite storage), on loopback by default.
#
#   scripts/broker.sh start [DIR]   start (if not running) with data in DIR (default .sensorflow/broker),
#                                   print the bootstrap address (host:port) on stdout
#   scripts/broker.sh stop [DIR]    stop the broker started from DIR (by recorded PID)
#   scripts/broker.sh status [DIR]
#
# Env: SENSORFLOW_BROKER_PORT (default 19092), SENSORFLOW_BROKER_STORAGE (default sqlite://tansu.db,
# relative to DIR; memory:// is faster but reports wrong watermarks: smoke tests only),
# SENSORFLOW_BROKER_LISTEN (address to bind, default 127.0.0.1; 0.0.0.0 for pods on a node),
# SENSORFLOW_BROKER_ADVERTISE (host clients are told to use, default the listen address; the
# e2e suite sets the node address pods reach the host at).
. "$(dirname "$0")/lib.sh"
cmd="${1:-}"; dir="${2:-$REPO_ROOT/.sensorflow/broker}"
port="${SENSORFLOW_BROKER_PORT:-19092}"
storage="${SENSORFLOW_BROKER_STORAGE:-sqlite://tansu.db}"
listen="${SENSORFLOW_BROKER_LISTEN:-127.0.0.1}"
advertise="${SENSORFLOW_BROKER_ADVERTISE:-$listen}"
pidfile="$dir/tansu.pid"
running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
case "$cmd" in
  start)
    mkdir -p "$dir"
    if running; then cat "$dir/bootstrap"; exit 0; fi
    tansu="$("$REPO_ROOT/scripts/install-tansu.sh")"
    log "starting tansu on $listen:$port, advertised as $advertise:$port (data: $dir, log: $dir/tansu.log)"
    # tansu reads a .env from its working directory; run it inside DIR with an empty one.
    ( cd "$dir" && : > .env && exec "$tansu" broker \
        --listener-url "tcp://$listen:$port" \
        --advertised-listener-url "tcp://$advertise:$port" \
        --storage-engine "$storage" >>tansu.log 2>&1 ) &
    echo $! > "$pidfile"
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/$advertise/$port") 2>/dev/null; then
        echo "$advertise:$port" | tee "$dir/bootstrap"; exit 0
      fi
      running || { tail -20 "$dir/tansu.log" >&2; die "tansu exited during start-up"; }
      sleep 0.1
    done
    die "tansu did not listen on $port within 10 s (log: $dir/tansu.log)"
    ;;
  stop)
    if running; then
      pid="$(cat "$pidfile")"; kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      log "tansu stopped"
    fi
    rm -f "$pidfile"
    ;;
  status) running && echo "running: $(cat "$dir/bootstrap" 2>/dev/null)" || { echo "stopped"; exit 1; } ;;
  *) echo "usage: $0 start|stop|status [DIR]" >&2; exit 2 ;;
esac
