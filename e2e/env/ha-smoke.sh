#!/usr/bin/env bash
# Smoke check of the multi-node services (issue #15): for each, kill -9 one node, show that the
# rest keeps serving (and how fast), bring the node back with start-node, check nothing
# written/acked was lost and the set is healthy again.
#   e2e/env/ha-smoke.sh                       redis-ha kafka-ha cassandra-ha
#   e2e/env/ha-smoke.sh redis-ha kafka-ha     just those
# Services it had to start are stopped again at the end (TERN_HA_SMOKE_KEEP=1 keeps them);
# services that already ran are left running. Exit 0 only if every check passed.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SVC=ha-smoke
S="$E2E_ENV_DIR/services"

services=()
for a in "$@"; do
	case "$a" in
	redis-ha | kafka-ha | cassandra-ha) services+=("$a") ;;
	-h | --help)
		sed -n '2,8p' "$0"
		exit 0
		;;
	*) die "unknown argument '$a' (redis-ha, kafka-ha, cassandra-ha)" ;;
	esac
done
((${#services[@]})) || services=(redis-ha kafka-ha cassandra-ha)

started=()
cleanup() {
	if [[ "${TERN_HA_SMOKE_KEEP:-0}" != 1 ]] && ((${#started[@]})); then
		log "stopping what this run started: ${started[*]}"
		"$E2E_ENV_DIR/down.sh" "${started[@]}" || true
	fi
}
trap cleanup EXIT

RESULTS=()
result() {
	RESULTS+=("$*")
	log "RESULT: $*"
}
ms_since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

ensure_up() { # SVC
	local rc=0 t0
	"$S/$1.sh" status >/dev/null 2>&1 || rc=$?
	((rc == 0)) && return 0
	((rc == 3)) && started+=("$1") # stopped before: stop it again at the end
	t0="$(now_s)"
	"$E2E_ENV_DIR/up.sh" "$1"
	result "$1: up in $(elapsed_since "$t0")s"
}

# ---------------------------------------------------------------------------------------
smoke_redis() {
	local R="$S/redis-ha.sh" p pport n i v t0 newp ms
	ensure_up redis-ha
	p="$("$R" primary)"
	pport=$((REDIS_HA_PORT_BASE + p))
	# 200 keys written and acknowledged by both replicas (WAIT 2) before the crash
	v="smoke-$(date +%s%N)"
	{
		for ((i = 0; i < 200; i++)); do echo "SET tern:smoke:$i $v EX 300"; done
		echo "WAIT 2 5000"
	} | redis-cli -h 127.0.0.1 -p "$pport" | tail -1 | grep -qx 2 || die "redis-ha: WAIT 2 did not confirm"
	t0="$(now_s)"
	"$R" kill "$p"
	for ((i = 0; i < 300; i++)); do
		newp="$("$R" primary 2>/dev/null)" || newp="$p"
		[[ "$newp" != "$p" ]] && redis-cli -h 127.0.0.1 -p $((REDIS_HA_PORT_BASE + newp)) ROLE 2>/dev/null | head -1 | grep -qx master && break
		sleep 0.1
	done
	[[ "$newp" != "$p" ]] || die "redis-ha: no failover 30 s after kill -9 of primary node $p"
	ms="$(ms_since "$t0")"
	n="$(for ((i = 0; i < 200; i++)); do echo "GET tern:smoke:$i"; done | redis-cli -h 127.0.0.1 -p $((REDIS_HA_PORT_BASE + newp)) | grep -cx "$v")"
	[[ "$n" == 200 ]] || die "redis-ha: only $n of 200 acked keys on the new primary"
	redis-cli -h 127.0.0.1 -p $((REDIS_HA_PORT_BASE + newp)) SET tern:smoke:after "$v" EX 300 | grep -qx OK || die "redis-ha: new primary refuses writes"
	result "redis-ha: kill -9 primary node $p -> node $newp primary and writable after ${ms} ms; 200/200 acked keys kept"
	t0="$(now_s)"
	"$R" start-node "$p"
	[[ "$(redis-cli -h 127.0.0.1 -p "$pport" GET tern:smoke:after)" == "$v" ]] || die "redis-ha: restarted node $p lacks the post-failover write"
	PID_FILE="" wait_for "redis-ha healthy" 30 "$R" health || die "redis-ha not healthy after start-node $p"
	result "redis-ha: start-node $p -> replica of node $newp with the data, set healthy, in $(elapsed_since "$t0")s"
	# a replica crash: writes go on, then it comes back
	n=$((newp % 3 + 1))
	"$R" kill "$n"
	redis-cli -h 127.0.0.1 -p $((REDIS_HA_PORT_BASE + newp)) SET tern:smoke:replica-down "$v" EX 300 | grep -qx OK || die "redis-ha: no writes with a replica down"
	"$R" start-node "$n"
	[[ "$(redis-cli -h 127.0.0.1 -p $((REDIS_HA_PORT_BASE + n)) GET tern:smoke:replica-down)" == "$v" ]] || die "redis-ha: replica $n did not catch up"
	PID_FILE="" wait_for "redis-ha healthy" 30 "$R" health || die "redis-ha not healthy after start-node $n"
	result "redis-ha: kill -9 replica node $n -> writes go on; start-node $n catches up"
}

# ---------------------------------------------------------------------------------------
smoke_kafka() {
	local K="$S/kafka-ha.sh" topic leader t0 out
	ensure_up kafka-ha
	topic="tern-ha-smoke-$(date +%s)"
	py - "127.0.0.1:$((KAFKA_HA_PORT_BASE + 1)),127.0.0.1:$((KAFKA_HA_PORT_BASE + 2)),127.0.0.1:$((KAFKA_HA_PORT_BASE + 3))" "$topic" <<'PY' || die "kafka-ha: topic creation failed"
import sys
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
f = a.create_topics([NewTopic(sys.argv[2], num_partitions=3, replication_factor=3,
                              config={"min.insync.replicas": "2"})])
f[sys.argv[2]].result(15)
PY
	PID_FILE="" wait_for "topic $topic has leaders and full ISRs" 30 "$K" wait-isr 5 >/dev/null || die "kafka-ha: new topic not ready"
	leader="$("$K" leader "$topic" 0)"
	[[ "$leader" =~ ^[123]$ ]] || die "kafka-ha: no leader for $topic/0 ($leader)"
	t0="$(now_s)"
	"$K" kill "$leader"
	# acks=all producer (idempotent) through the surviving brokers, while node $leader is down:
	# 3000 messages over the 3 partitions; then a consumer must read back every one of them.
	out="$(py - "$topic" "$leader" <<'PY'
import sys, time
from confluent_kafka import Producer, Consumer, TopicPartition
topic, dead = sys.argv[1], int(sys.argv[2])
brokers = ",".join(f"127.0.0.1:{19100 + n}" for n in (1, 2, 3) if n != dead)
t0 = time.monotonic()
p = Producer({"bootstrap.servers": brokers, "acks": "all", "enable.idempotence": True,
              "linger.ms": 5, "message.timeout.ms": 60000, "log_level": 0})
acked, failed, first = [], [], [None]
def cb(err, msg):
    if err is None:
        acked.append(msg.value())
        if first[0] is None:
            first[0] = time.monotonic() - t0
    else:
        failed.append(str(err))
N = 3000
for i in range(N):
    while True:
        try:
            p.produce(topic, key=str(i).encode(), value=f"m{i}".encode(), on_delivery=cb)
            break
        except BufferError:
            p.poll(0.1)
    p.poll(0)
p.flush(90)
produced = time.monotonic() - t0
c = Consumer({"bootstrap.servers": brokers, "group.id": f"{topic}-check", "auto.offset.reset": "earliest",
              "enable.auto.commit": False, "log_level": 0})
c.assign([TopicPartition(topic, i, 0) for i in range(3)])
seen, deadline = set(), time.monotonic() + 60
while len(seen) < len(acked) and time.monotonic() < deadline:
    m = c.poll(0.5)
    if m is not None and m.error() is None:
        seen.add(m.value())
c.close()
missing = [v for v in acked if v not in seen]
print(f"acked={len(acked)} failed={len(failed)} read_back={len(seen)} missing={len(missing)} "
      f"first_ack_s={first[0]:.2f} all_acked_s={produced:.2f}")
sys.exit(0 if len(acked) == N and not missing else 1)
PY
)" || die "kafka-ha: with node $leader down: $out"
	result "kafka-ha: kill -9 node $leader (leader of $topic/0; topic RF 3, min.insync 2) -> acks=all producer on the 2 others: $out (times from the producer start, right after the kill)"
	t0="$(now_s)"
	"$K" start-node "$leader"
	"$K" health || die "kafka-ha: not healthy after start-node $leader"
	result "kafka-ha: start-node $leader -> back in the metadata with every ISR full in $(elapsed_since "$t0")s"
	py - "127.0.0.1:$((KAFKA_HA_PORT_BASE + 1))" "$topic" <<'PY' || warn "kafka-ha: could not delete $topic"
import sys
from confluent_kafka.admin import AdminClient
a = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
a.delete_topics([sys.argv[2]])[sys.argv[2]].result(15)
PY
}

# ---------------------------------------------------------------------------------------
smoke_cassandra() {
	local C="$S/cassandra-ha.sh" t0 out
	ensure_up cassandra-ha
	t0="$(now_s)"
	"$C" kill 3
	out="$(py - <<'PY'
import sys, time, logging
logging.disable(logging.CRITICAL)
from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
from cassandra.policies import RoundRobinPolicy
prof = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), consistency_level=ConsistencyLevel.QUORUM,
                        request_timeout=15)
c = Cluster(["127.0.0.2", "127.0.0.3"], port=19142, execution_profiles={EXEC_PROFILE_DEFAULT: prof},
            connect_timeout=5, control_connection_timeout=5)
s = c.connect()
s.execute("CREATE KEYSPACE IF NOT EXISTS tern_ha_smoke WITH replication = "
          "{'class': 'SimpleStrategy', 'replication_factor': 3}")
s.execute("CREATE TABLE IF NOT EXISTS tern_ha_smoke.kv (k int PRIMARY KEY, v text)")
run = str(time.time_ns())
ins = s.prepare("INSERT INTO tern_ha_smoke.kv (k, v) VALUES (?, ?)")
sel = s.prepare("SELECT v FROM tern_ha_smoke.kv WHERE k = ?")
retries = 0
def run_retrying(stmt, args):
    # A request can time out while the cluster has not yet convicted the dead node (up to
    # ~10 s after the kill, longer on a loaded machine): retry it, and count the retries.
    global retries
    for attempt in range(5):
        try:
            return s.execute(stmt, args)
        except Exception:
            if attempt == 4:
                raise
            retries += 1
t0 = time.monotonic()
for k in range(500):
    run_retrying(ins, (k, run))
w = time.monotonic() - t0
t0 = time.monotonic()
ok = sum(1 for k in range(500) if (r := run_retrying(sel, (k,)).one()) is not None and r.v == run)
rt = time.monotonic() - t0
# the coordinators keep hints for node 3 (flushed to hint files every 10 s)
hints, deadline = 0, time.monotonic() + 20
while hints == 0 and time.monotonic() < deadline:
    hints = 0
    for h in ("127.0.0.2", "127.0.0.3"):
        try:
            for r in s.execute("SELECT address, files FROM system_views.pending_hints", host=c.metadata.get_host(h)):
                if str(r.address) == "127.0.0.4":
                    hints += r.files
        except Exception:
            pass
    if hints == 0:
        time.sleep(1)
print(f"QUORUM writes 500/500 in {w:.1f}s, QUORUM reads {ok}/500 right in {rt:.1f}s, {retries} request(s) "
      f"retried after a timeout; {hints} hint file(s) for node 3 on nodes 1+2 run={run}")
c.shutdown()
sys.exit(0 if ok == 500 else 1)
PY
)" || die "cassandra-ha: with node 3 down: $out"
	result "cassandra-ha: kill -9 node 3 -> ${out% run=*} through nodes 1+2"
	t0="$(now_s)"
	"$C" start-node 3
	result "cassandra-ha: start-node 3 -> answering CQL, 3 nodes UN, in $(elapsed_since "$t0")s"
	out="$(py - "${out##*run=}" <<'PY'
import sys, logging
logging.disable(logging.CRITICAL)
from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
from cassandra.policies import WhiteListRoundRobinPolicy
# hinted handoff: nodes 1 and 2 deliver node 3 what it missed; then read through node 3 (CL ONE)
from cassandra.policies import RoundRobinPolicy
c12 = Cluster(["127.0.0.2", "127.0.0.3"], port=19142)
s12 = c12.connect()
import time
t0, deadline = time.monotonic(), time.monotonic() + 60
left = -1
while time.monotonic() < deadline:
    try:  # (the driver may not have its pool to one of them yet: ask again)
        left = sum(r.files for h in ("127.0.0.2", "127.0.0.3")
                   for r in s12.execute("SELECT address, files FROM system_views.pending_hints", host=c12.metadata.get_host(h))
                   if str(r.address) == "127.0.0.4")
    except Exception:
        left = -1
    if left == 0:
        break
    time.sleep(1)
handoff = time.monotonic() - t0
c12.shutdown()
prof = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy(["127.0.0.4"]),
                        consistency_level=ConsistencyLevel.ONE, request_timeout=15)
c = Cluster(["127.0.0.4"], port=19142, execution_profiles={EXEC_PROFILE_DEFAULT: prof})
s = c.connect()
import time
sel = s.prepare("SELECT v FROM tern_ha_smoke.kv WHERE k = ?")
deadline = time.monotonic() + 60
while True:
    ok = 0
    for k in range(500):
        r = s.execute(sel, (k,)).one()
        ok += r is not None and r.v == sys.argv[1]
    if ok == 500 or time.monotonic() > deadline:
        break
    time.sleep(2)
s.execute("DROP KEYSPACE tern_ha_smoke")
c.shutdown()
print(f"no hints for node 3 pending on nodes 1+2 {handoff:.1f}s after start-node returned; "
      f"{ok}/500 rows right through node 3 (CL ONE)")
sys.exit(0 if ok == 500 and left == 0 else 1)
PY
)" || die "cassandra-ha: $out"
	result "cassandra-ha: $out"
}

t_all="$(now_s)"
for s in "${services[@]}"; do
	t_svc="$(now_s)"
	case "$s" in
	redis-ha) smoke_redis ;;
	kafka-ha) smoke_kafka ;;
	cassandra-ha) smoke_cassandra ;;
	esac
	result "$s: smoke passed in $(elapsed_since "$t_svc")s"
done
log "all passed in $(elapsed_since "$t_all")s:"
printf '  %s\n' "${RESULTS[@]}" >&2
