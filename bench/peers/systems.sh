# Start and stop each system under test, configured for a fair single-node comparison on
# loopback. Sourced by run.sh. Every start_* function sets:
#   URL      base URL for chat-bench --url
#   SYSTEM   chat-bench --system
#   PIDS     process ids whose RSS is the server's memory (comma separated)
#   VERSION  what ran, for the tables
#   SETTINGS the configuration in a few words, for the tables
#   ACKS     what the system has done when it acknowledges a send
# and stop_system stops everything the last start_* started. Servers (and their database or
# broker) run under `taskset -c $SERVER_CPUS`, the load generator under `taskset -c $BENCH_CPUS`.
#
# Needs: $OUT (run directory), $ROOT (checkout), versions.sh; sets up BIN (Tern release
# binaries, default $ROOT/target/release), BENCH_PIN, SYNAPSE_STATE and $OUT/{logs,state}.

SERVER_CPUS=${SERVER_CPUS-1}
SERVER_PIN=()
[[ -n "$SERVER_CPUS" ]] && SERVER_PIN=(taskset -c "$SERVER_CPUS")
BENCH_CPUS=${BENCH_CPUS-0}
BENCH_PIN=()
[[ -n "$BENCH_CPUS" ]] && BENCH_PIN=(taskset -c "$BENCH_CPUS")
BIN=${BIN:-$ROOT/target/release}
SYNAPSE_STATE=${SYNAPSE_STATE:-$OUT/state/synapse}
mkdir -p "$OUT/logs" "$OUT/state"
SECRET=benchsecret
# The commit the Tern binaries were built from (run.sh sets it after building; the checkout
# may move on during a long run).
TERN_VERSION=${TERN_VERSION:-"tern $(git -C "$ROOT" rev-parse --short HEAD)"}
STARTED=()   # pids to stop
CLEANUP=()   # commands to run at stop

wait_http() { # url what [tries]
  local i
  for i in $(seq "${3:-300}"); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.2
  done
  echo "$2 did not come up at $1" >&2
  return 1
}

port_free() { # port... — refuse to start over someone else's server
  local p
  for p in "$@"; do
    if ss -ltn "sport = :$p" 2>/dev/null | grep -q LISTEN; then
      echo "port $p is already in use on this machine: not starting (stop that process or change the port)" >&2
      return 1
    fi
  done
}

stop_system() {
  local p
  for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${STARTED[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  for c in "${CLEANUP[@]}"; do eval "$c" || true; done
  STARTED=(); CLEANUP=()
}

# --- Tern, embedded: one process, SQLite, ack after the fsynced group commit -----------------
start_tern() {
  port_free 18580 || return 1
  local dir="$OUT/state/tern"
  rm -rf "$dir"; mkdir -p "$dir"
  "${SERVER_PIN[@]}" "$BIN/chat-server" --listen 127.0.0.1:18580 --data-dir "$dir" \
    --jwt-secret "$SECRET" --log warn >"$OUT/logs/tern.log" 2>&1 &
  STARTED+=($!); PIDS=$!
  wait_http http://127.0.0.1:18580/healthz tern
  URL=http://127.0.0.1:18580 SYSTEM=tern
  VERSION=$TERN_VERSION
  SETTINGS="embedded, SQLite WAL, defaults"
  ACKS="stored durably (fsynced SQLite group commit)"
}

# --- Tern, distributed: 2 edges + 1 delivery + 1 presence on Kafka, Cassandra, Redis --------
# The services of e2e/env run on the same machine (they are not pinned: they are JVMs with
# their own threads; the Tern processes are pinned to $SERVER_CPUS like every other server).
start_tern_dist() {
  port_free 18590 18591 18592 18594 || return 1
  (cd "$ROOT" && e2e/env/up.sh redis kafka cassandra) >"$OUT/logs/tern-dist-services.log" 2>&1
  eval "$(cd "$ROOT" && e2e/env/env.sh)"
  local cluster="peers$(date +%s)"
  local envs=(CHAT_CLUSTER="$cluster" CHAT_JWT_SECRET="$SECRET" CHAT_KAFKA_BROKERS="$TERN_KAFKA_BROKERS"
    CHAT_SCYLLA_NODES="$TERN_CQL_NODES" CHAT_REDIS_URL="$TERN_REDIS_URL" CHAT_BACKEND=distributed RUST_LOG=warn)
  env "${envs[@]}" "$BIN/chat-server" setup --partitions 8 >"$OUT/logs/tern-dist-setup.log" 2>&1
  local role port pids=()
  for rp in edge:18590 edge:18591 delivery:18592 presence:18594; do
    role=${rp%%:*}; port=${rp##*:}
    env "${envs[@]}" "${SERVER_PIN[@]}" "$BIN/chat-server" serve --role "$role" --listen "127.0.0.1:$port" \
      --node-id "$cluster-$role-$port" >"$OUT/logs/tern-dist-$role-$port.log" 2>&1 &
    STARTED+=($!); pids+=($!)
  done
  for port in 18590 18591 18592 18594; do wait_http "http://127.0.0.1:$port/readyz" "tern-dist :$port" 600; done
  URL=http://127.0.0.1:18590,http://127.0.0.1:18591 SYSTEM=tern
  PIDS=$(IFS=,; echo "${pids[*]}")
  VERSION=$TERN_VERSION
  SETTINGS="distributed: 2 edge, 1 delivery, 1 presence; Kafka acks=all, Cassandra, Redis (e2e/env)"
  ACKS="stored durably (Kafka acks=all, then Cassandra)"
}

# --- Centrifugo --------------------------------------------------------------------------------
centrifugo_config() { # file engine history
  local engine=$2 history=$3
  python3 - "$1" "$engine" "$history" <<'PY'
import json, sys
path, engine, history = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
ns = {"allow_subscribe_for_client": True, "allow_publish_for_subscriber": True}
if history:
    ns.update({"history_size": 1000, "history_ttl": "300s", "force_recovery": True})
cfg = {
    "http_server": {"address": "127.0.0.1", "port": 18300},
    "log": {"level": "error"},
    "client": {"token": {"hmac_secret_key": "benchsecret"}, "allowed_origins": ["*"]},
    "channel": {"without_namespace": ns},
    "usage_stats": {"disabled": True},
    "health": {"enabled": True},
}
if engine == "redis":
    cfg["engine"] = {"type": "redis", "redis": {"address": ["redis://127.0.0.1:18310"]}}
json.dump(cfg, open(path, "w"), indent=1)
PY
}

start_centrifugo() { # default: memory engine, no history (publications are not kept)
  port_free 18300 || return 1
  . "$HERE/versions.sh"
  local dir="$OUT/state/centrifugo"
  rm -rf "$dir"; mkdir -p "$dir"
  centrifugo_config "$dir/config.json" memory 0
  "${SERVER_PIN[@]}" "$PEERS_CACHE/centrifugo-$CENTRIFUGO_VERSION/bin/centrifugo" -c "$dir/config.json" \
    >"$OUT/logs/centrifugo.log" 2>&1 &
  STARTED+=($!); PIDS=$!
  wait_http http://127.0.0.1:18300/health centrifugo
  URL=http://127.0.0.1:18300 SYSTEM=centrifugo
  VERSION="centrifugo $CENTRIFUGO_VERSION"
  SETTINGS="defaults: memory engine, no history"
  ACKS="published to the subscribers in memory; nothing kept"
}

start_centrifugo_durable() { # Redis engine with history + recovery, Redis AOF fsync on every write
  port_free 18300 18310 || return 1
  . "$HERE/versions.sh"
  local dir="$OUT/state/centrifugo-durable"
  rm -rf "$dir"; mkdir -p "$dir/redis"
  "${SERVER_PIN[@]}" redis-server --port 18310 --bind 127.0.0.1 --dir "$dir/redis" --save "" \
    --appendonly yes --appendfsync always --daemonize no >"$OUT/logs/centrifugo-redis.log" 2>&1 &
  STARTED+=($!); local rpid=$!
  for _ in $(seq 100); do redis-cli -p 18310 ping >/dev/null 2>&1 && break; sleep 0.1; done
  centrifugo_config "$dir/config.json" redis 1
  "${SERVER_PIN[@]}" "$PEERS_CACHE/centrifugo-$CENTRIFUGO_VERSION/bin/centrifugo" -c "$dir/config.json" \
    >"$OUT/logs/centrifugo-durable.log" 2>&1 &
  STARTED+=($!); PIDS="$!,$rpid"
  wait_http http://127.0.0.1:18300/health centrifugo-durable
  URL=http://127.0.0.1:18300 SYSTEM=centrifugo
  VERSION="centrifugo $CENTRIFUGO_VERSION, redis $(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2)"
  SETTINGS="Redis engine, history 1000/300 s + force_recovery; Redis appendfsync always"
  ACKS="added to the channel's Redis stream, AOF fsynced (history is TTL-bounded)"
}

# --- Socket.IO -------------------------------------------------------------------------------
start_socketio_with() { # recovery(0|1) name
  port_free 18400 || return 1
  . "$HERE/versions.sh"
  local dir="$PEERS_CACHE/socketio-$SOCKETIO_VERSION"
  PORT=18400 SECRET=$SECRET RECOVERY=$1 "${SERVER_PIN[@]}" node "$dir/server.js" \
    >"$OUT/logs/$2.log" 2>&1 &
  STARTED+=($!); PIDS=$!
  wait_http http://127.0.0.1:18400/healthz "$2"
  URL=http://127.0.0.1:18400 SYSTEM=socketio
  VERSION="socket.io $(node -p "require('$dir/node_modules/socket.io/package.json').version"), node $(node --version)"
}
start_socketio() {
  start_socketio_with 0 socketio
  SETTINGS="defaults (rooms, acks), in memory"
  ACKS="emitted to the room's sockets in memory; nothing kept"
}
start_socketio_recovery() {
  start_socketio_with 1 socketio-recovery
  SETTINGS="connectionStateRecovery (2 min), in memory"
  ACKS="emitted to the room in memory; kept 2 min in memory for recovery"
}

# --- Synapse (Matrix) on PostgreSQL ------------------------------------------------------------
# PostgreSQL, not SQLite: Synapse's docs call SQLite fit for testing only and PostgreSQL the
# production database; with PostgreSQL's default synchronous_commit=on, a 200 from /send means
# the event's transaction is committed and its WAL flushed — the same promise as Tern's ack.
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
start_synapse() {
  port_free 18320 18321 || return 1
  . "$HERE/versions.sh"
  local dir="$SYNAPSE_STATE"
  local venv="$PEERS_CACHE/synapse-$SYNAPSE_VERSION/venv"
  mkdir -p "$dir"
  # The database persists for the whole run.sh invocation (registrations and room joins are
  # slow; chat-bench caches them in $dir/bench-state.json); a fresh run starts from scratch.
  if [ ! -f "$dir/pg/PG_VERSION" ]; then
    mkdir -p "$dir/pg" "$dir/pgsock"; chown -R postgres "$dir/pg" "$dir/pgsock"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/pg" -E UTF8 --locale=C >"$OUT/logs/pg-init.log" 2>&1
  fi
  chown -R postgres "$dir/pg" "$dir/pgsock"
  "${SERVER_PIN[@]}" runuser -u postgres -- "$PG_BIN/postgres" -D "$dir/pg" -p 18321 -k "$dir/pgsock" \
    -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB >"$OUT/logs/postgres.log" 2>&1 &
  STARTED+=($!); local pgpid=$!
  for _ in $(seq 100); do runuser -u postgres -- "$PG_BIN/pg_isready" -h "$dir/pgsock" -p 18321 -q && break; sleep 0.2; done
  if ! runuser -u postgres -- psql -h "$dir/pgsock" -p 18321 -tAc "select 1 from pg_database where datname='synapse'" | grep -q 1; then
    runuser -u postgres -- psql -h "$dir/pgsock" -p 18321 -q -c "create user synapse password 'synapse'" \
      -c "create database synapse encoding 'UTF8' lc_collate='C' lc_ctype='C' template=template0 owner synapse"
  fi
  if [ ! -f "$dir/homeserver.yaml" ]; then
    cat >"$dir/homeserver.yaml" <<YAML
server_name: "localhost"
pid_file: "$dir/homeserver.pid"
listeners:
  - port: 18320
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: psycopg2
  args:
    user: synapse
    password: synapse
    dbname: synapse
    host: 127.0.0.1
    port: 18321
    cp_min: 5
    cp_max: 10
log_config: "$dir/log.yaml"
media_store_path: "$dir/media"
signing_key_path: "$dir/signing.key"
registration_shared_secret: "$SECRET"
report_stats: false
suppress_key_server_warning: true
trusted_key_servers: []
macaroon_secret_key: "bench-macaroon-secret"
form_secret: "bench-form-secret"
# Registration is set-up work, not what is measured: the cheapest password hash.
bcrypt_rounds: 4
# A benchmark drives thousands of users from one address: every rate limit off.
rc_message: {per_second: 1000000, burst_count: 1000000}
rc_registration: {per_second: 1000000, burst_count: 1000000}
rc_registration_token_validity: {per_second: 1000000, burst_count: 1000000}
rc_login:
  address: {per_second: 1000000, burst_count: 1000000}
  account: {per_second: 1000000, burst_count: 1000000}
  failed_attempts: {per_second: 1000000, burst_count: 1000000}
rc_admin_redaction: {per_second: 1000000, burst_count: 1000000}
rc_joins:
  local: {per_second: 1000000, burst_count: 1000000}
  remote: {per_second: 1000000, burst_count: 1000000}
rc_joins_per_room: {per_second: 1000000, burst_count: 1000000}
rc_invites:
  per_room: {per_second: 1000000, burst_count: 1000000}
  per_user: {per_second: 1000000, burst_count: 1000000}
  per_issuer: {per_second: 1000000, burst_count: 1000000}
rc_presence:
  per_user: {per_second: 1000000, burst_count: 1000000}
rc_room_creation: {per_second: 1000000, burst_count: 1000000}
rc_delayed_event_mgmt: {per_second: 1000000, burst_count: 1000000}
rc_send_message: {per_second: 1000000, burst_count: 1000000}
limit_remote_rooms: {enabled: false}
YAML
    cat >"$dir/log.yaml" <<YAML
version: 1
formatters: {precise: {format: '%(asctime)s %(levelname)s %(name)s %(message)s'}}
handlers: {console: {class: logging.StreamHandler, formatter: precise}}
root: {level: WARNING, handlers: [console]}
disable_existing_loggers: false
YAML
    "$venv/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" --generate-keys >"$OUT/logs/synapse-keys.log" 2>&1
  fi
  "${SERVER_PIN[@]}" "$venv/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" \
    >>"$OUT/logs/synapse.log" 2>&1 &
  STARTED+=($!); PIDS=$!
  wait_http http://127.0.0.1:18320/health synapse 600
  URL=http://127.0.0.1:18320 SYSTEM=matrix
  VERSION="synapse $("$venv/bin/python" -c 'import synapse; print(synapse.__version__)'), postgres $("$PG_BIN/postgres" --version | grep -o '[0-9][0-9.]*' | head -1)"
  SETTINGS="one process, PostgreSQL (synchronous_commit on), rate limits off, presence on (default)"
  ACKS="event persisted: PostgreSQL transaction committed (WAL flushed)"
  export CHAT_BENCH_MATRIX_STATE="$dir/bench-state.json"
  : "$pgpid"
}
