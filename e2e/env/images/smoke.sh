#!/usr/bin/env bash
# Smoke-test the built images the way the operator's pods run them, without Kubernetes:
# a throw-away containerd (own root/state/socket under /tmp, CRI off), a private network
# namespace that looks like a pod's (an eth0 with a "pod IP", /etc/hosts naming it and the
# headless-service names), `ctr run` with the operator's command/args/env and a volume.
#
#   e2e/env/images/smoke.sh [redis] [kafka] [cassandra] [chat-server] [operator]   # default: all
#
# Checks: redis answers PING from the pod IP (protected mode off) and owns /data; Kafka
# formats a fresh 0777 volume, passes the operator's readiness command, creates a topic and
# round-trips a record, restarts on the formatted volume; Cassandra chowns a root-owned volume,
# answers CQL on the pod IP (python driver from $TERN_CACHE/venv) and `nodetool status`;
# chat-server / tern-operator start as uid 10001. Needs root. Leaves nothing running.
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
SVC=smoke
IMAGES_DIR="$E2E_ENV_DIR/images"

need_cmd containerd "apt-get install containerd"
need_cmd ctr "apt-get install containerd"
need_cmd ip

W="$(mktemp -d /tmp/tern-images-smoke.XXXXXX)"
NS="tern-smoke-$$"
POD_IP=10.250.0.2
SOCK="$W/containerd.sock"
CTD_PID=""
C=(ctr --address "$SOCK" -n k8s.io)
RUNNING=()

cleanup() {
	set +e
	local c
	for c in "${RUNNING[@]}"; do
		"${C[@]}" task kill -s KILL "$c" >/dev/null 2>&1
	done
	sleep 1
	for c in "${RUNNING[@]}"; do
		"${C[@]}" task rm -f "$c" >/dev/null 2>&1
		"${C[@]}" container rm "$c" >/dev/null 2>&1
	done
	if [[ -n "$CTD_PID" ]] && kill -0 "$CTD_PID" 2>/dev/null; then
		kill -TERM "$CTD_PID"
		for _ in $(seq 1 50); do kill -0 "$CTD_PID" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$CTD_PID" 2>/dev/null && kill -KILL "$CTD_PID"
	fi
	ip netns delete "$NS" 2>/dev/null
	# unmount whatever a killed shim left behind, deepest first, then delete
	grep -o " ${W}[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
	if [[ "${SMOKE_KEEP:-0}" == 1 ]]; then
		log "kept $W (logs: $W/*.log)"
	else
		rm -rf "$W"
	fi
}
trap cleanup EXIT

start_containerd() {
	cat >"$W/config.toml" <<EOF
version = 2
root = "$W/root"
state = "$W/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
EOF
	setsid containerd --config "$W/config.toml" >"$W/containerd.log" 2>&1 </dev/null &
	CTD_PID=$!
	wait_for "throw-away containerd ($W)" 20 "${C[@]}" version || {
		log_tail "$W/containerd.log" 20
		die "containerd did not start"
	}
}

# a pod-like network namespace: lo + an eth0 (a port-less bridge: no dummy links in this
# kernel) carrying the pod IP; nothing connects it to the host
make_netns() {
	ip netns add "$NS"
	ip -n "$NS" link set lo up
	ip -n "$NS" link add eth0 type bridge
	ip -n "$NS" addr add "$POD_IP/24" dev eth0
	ip -n "$NS" link set eth0 up
	cat >"$W/hosts" <<EOF
127.0.0.1	localhost
$POD_IP	$(hostname) chat-kafka-0.chat-kafka-headless.ns.svc chat-scylla-0.chat-scylla-headless.ns.svc
EOF
}

# run NAME IMAGE [ctr run options…] -- ARGS…: start a container in the pod namespace
run() {
	local name="$1" image="$2"
	shift 2
	local opts=()
	while (($#)) && [[ "$1" != -- ]]; do
		opts+=("$1")
		shift
	done
	shift
	"${C[@]}" run -d --with-ns "network:/var/run/netns/$NS" \
		--mount "type=bind,src=$W/hosts,dst=/etc/hosts,options=rbind:ro" \
		--log-uri "file://$W/$name.log" "${opts[@]}" "$image" "$name" "$@" >/dev/null
	RUNNING+=("$name")
}
alive() { "${C[@]}" task ls 2>/dev/null | awk -v n="$1" '$1 == n { print $3 }' | grep -q RUNNING; }
stop() {
	"${C[@]}" task kill "$1" >/dev/null 2>&1 || true
	for _ in $(seq 1 300); do alive "$1" || break; sleep 0.1; done
	"${C[@]}" task rm -f "$1" >/dev/null 2>&1 || true
	"${C[@]}" container rm "$1" >/dev/null 2>&1 || true
}
xec() {
	local name="$1"
	shift
	"${C[@]}" task exec --exec-id "x$RANDOM$RANDOM" "$name" "$@"
}
# until NAME TIMEOUT DESCRIPTION CMD…: poll CMD, fail early when the container died
until_ok() {
	local name="$1" timeout="$2" desc="$3" t0=$SECONDS
	shift 3
	while ((SECONDS - t0 < timeout)); do
		if "$@" >/dev/null 2>&1; then
			log "$name: $desc after $((SECONDS - t0)) s"
			return 0
		fi
		alive "$name" || {
			log_tail "$W/$name.log" 40
			die "$name: container exited while waiting for: $desc"
		}
		sleep 1
	done
	log_tail "$W/$name.log" 40
	die "$name: timed out after ${timeout}s waiting for: $desc"
}
volume() {
	mkdir -p "$W/vol/$1"
	chmod "$2" "$W/vol/$1"
	echo "$W/vol/$1"
}

smoke_redis() {
	local v
	v="$(volume redis 755)"
	run redis docker.io/library/redis:7.0 --mount "type=bind,src=$v,dst=/data,options=rbind:rw" -- \
		docker-entrypoint.sh redis-server --appendonly yes --dir /data --notify-keyspace-events Ex
	until_ok redis 30 "readiness (redis-cli ping)" xec redis redis-cli ping
	[[ "$(ip netns exec "$NS" redis-cli -h "$POD_IP" ping)" == PONG ]] || die "redis: no PONG on the pod IP (protected mode?)"
	[[ "$(stat -c %u "$v")" == 999 ]] || die "redis: /data not chowned to 999"
	ip netns exec "$NS" redis-cli -h "$POD_IP" set smoke ok >/dev/null
	log "redis: ok ($(xec redis redis-server --version | grep -o 'v=[0-9.]*'), PONG from $POD_IP, /data owned by 999)"
	stop redis
}

# shellcheck disable=SC2054 # commas are inside the values
kafka_env=(
	--env POD_NAME=chat-kafka-0 --env CLUSTER_ID=AbCdEfGhIjKlMnOpQrStUv
	--env KAFKA_PROCESS_ROLES=broker,controller
	--env "KAFKA_LISTENERS=PLAINTEXT://:9092,CONTROLLER://:9093"
	--env "KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://chat-kafka-0.chat-kafka-headless.ns.svc:9092"
	--env KAFKA_CONTROLLER_LISTENER_NAMES=CONTROLLER
	--env "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
	--env "KAFKA_CONTROLLER_QUORUM_VOTERS=0@chat-kafka-0.chat-kafka-headless.ns.svc:9093"
	--env KAFKA_LOG_DIRS=/var/lib/kafka/data/logs --env KAFKA_AUTO_CREATE_TOPICS_ENABLE=false
	--env KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR=1 --env KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR=1
	--env KAFKA_TRANSACTION_STATE_LOG_MIN_ISR=1 --env KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS=0
)
kafka_probe() { xec "$1" sh -c '/opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server localhost:9092 >/dev/null'; }
smoke_kafka() {
	local v name
	v="$(volume kafka 777)"
	for name in kafka kafka-restarted; do
		run "$name" "docker.io/apache/kafka:$KAFKA_VERSION" "${kafka_env[@]}" \
			--mount "type=bind,src=$v,dst=/var/lib/kafka/data,options=rbind:rw" -- \
			sh -c 'export KAFKA_NODE_ID="${POD_NAME##*-}"; exec /etc/kafka/docker/run'
		until_ok "$name" 120 "readiness (kafka-broker-api-versions.sh)" kafka_probe "$name"
		if [[ "$name" == kafka ]]; then
			xec kafka kafka-topics.sh --bootstrap-server localhost:9092 --create --topic smoke --partitions 2 --replication-factor 1 >/dev/null
			echo "hello-$$" | xec kafka kafka-console-producer.sh --bootstrap-server chat-kafka-0.chat-kafka-headless.ns.svc:9092 --topic smoke
			[[ "$(xec kafka kafka-console-consumer.sh --bootstrap-server localhost:9092 --topic smoke --from-beginning --max-messages 1 --timeout-ms 30000 2>/dev/null)" == "hello-$$" ]] ||
				die "kafka: record did not round-trip"
			log "kafka: topic created, record produced and consumed; volume owner $(stat -c %u "$v/logs")"
		else
			grep -q "already formatted" "$W/$name.log" || die "kafka: restart did not find the formatted volume"
			xec "$name" kafka-topics.sh --bootstrap-server localhost:9092 --list | grep -qx smoke || die "kafka: topic lost across restart"
			log "kafka: restart on the same volume ok (storage already formatted, topic kept)"
		fi
		local t0=$SECONDS
		stop "$name"
		log "$name: stopped (SIGTERM) in $((SECONDS - t0)) s"
	done
}

cql_check() {
	ip netns exec "$NS" "$TERN_VENV/bin/python" - "$POD_IP" <<'PY'
import sys, logging
logging.disable(logging.CRITICAL)
from cassandra.cluster import Cluster
from cassandra.policies import WhiteListRoundRobinPolicy
ip = sys.argv[1]
c = Cluster([ip], port=9042, connect_timeout=3, control_connection_timeout=3,
            load_balancing_policy=WhiteListRoundRobinPolicy([ip]))
try:
    s = c.connect()
    r = s.execute("SELECT release_version, cluster_name, data_center, rack, listen_address FROM system.local").one()
    s.execute("CREATE KEYSPACE IF NOT EXISTS smoke WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
    s.execute("CREATE TABLE IF NOT EXISTS smoke.kv (k text PRIMARY KEY, v text)")
    s.execute("INSERT INTO smoke.kv (k, v) VALUES ('a', 'b')")
    assert s.execute("SELECT v FROM smoke.kv WHERE k = 'a'").one().v == "b"
    print(f"{r.release_version} cluster={r.cluster_name} dc={r.data_center} rack={r.rack} listen={r.listen_address}")
finally:
    c.shutdown()
PY
}
smoke_cassandra() {
	ensure_venv
	local v out
	v="$(volume cassandra 755)"
	run cassandra "docker.io/library/cassandra:$CASSANDRA_VERSION" \
		--mount "type=bind,src=$v,dst=/var/lib/cassandra,options=rbind:rw" \
		--env CASSANDRA_SEEDS=chat-scylla-0.chat-scylla-headless.ns.svc --env CASSANDRA_CLUSTER_NAME=tern-smoke \
		--env CASSANDRA_DC=dc1 --env CASSANDRA_RACK=rack1 --env CASSANDRA_ENDPOINT_SNITCH=GossipingPropertyFileSnitch \
		--env CASSANDRA_NUM_TOKENS=16 --env CASSANDRA_LISTEN_ADDRESS=$POD_IP --env CASSANDRA_BROADCAST_ADDRESS=$POD_IP \
		--env CASSANDRA_RPC_ADDRESS=0.0.0.0 --env CASSANDRA_BROADCAST_RPC_ADDRESS=$POD_IP \
		--env MAX_HEAP_SIZE=768M --env HEAP_NEWSIZE=200M -- # no args: the image's entrypoint + cmd, as the operator
	until_ok cassandra 180 "CQL on $POD_IP:9042" ip netns exec "$NS" bash -c "exec 3<>/dev/tcp/$POD_IP/9042"
	out="$(cql_check)" || die "cassandra: CQL check failed"
	[[ "$out" == *"listen=$POD_IP"* && "$out" == *"dc=dc1"* && "$out" == *"cluster=tern-smoke"* ]] || die "cassandra: unexpected system.local: $out"
	xec cassandra nodetool status | grep -q "^UN  $POD_IP" || die "cassandra: nodetool status does not show $POD_IP Up/Normal"
	[[ "$(stat -c %u "$v")" == 999 ]] || die "cassandra: /var/lib/cassandra not chowned to 999"
	log "cassandra: ok ($out; nodetool UN; data owned by 999)"
	local t0=$SECONDS
	stop cassandra
	log "cassandra: stopped (SIGTERM) in $((SECONDS - t0)) s"
}

smoke_rust() {
	local short="$1" image="$2" bin="$3" out
	run "$short" "$image" -- sh -c "id -u; $bin --help >/dev/null && echo help-ok"
	for _ in $(seq 1 50); do alive "$short" || break; sleep 0.1; done
	out="$(cat "$W/$short.log")"
	[[ "$out" == *10001* && "$out" == *help-ok* ]] || die "$short: unexpected output: $out"
	log "$short: ok (uid 10001, $bin --help runs)"
	stop "$short"
}

main() {
	[[ "$(id -u)" == 0 ]] || die "run as root"
	local want=("$@") s
	((${#want[@]})) || want=(redis kafka cassandra chat-server operator)
	start_containerd
	make_netns
	TERN_CONTAINERD_SOCK="$SOCK" "$IMAGES_DIR/build.sh" --import-only "${want[@]}"
	for s in "${want[@]}"; do
		case "$s" in
		redis) smoke_redis ;;
		kafka) smoke_kafka ;;
		cassandra) smoke_cassandra ;;
		chat-server) smoke_rust chat-server ghcr.io/tern/chat-server:0.1.0 chat-server ;;
		operator) smoke_rust operator ghcr.io/tern/tern-operator:0.1.0 /usr/local/bin/tern-operator ;;
		*) die "no smoke test for '$s'" ;;
		esac
	done
	log "all smoke tests passed: ${want[*]}"
}

main "$@"
