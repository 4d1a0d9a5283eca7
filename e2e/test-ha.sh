#!/usr/bin/env bash
# No single point of failure (issue #15): the failure tests of chat-server/tests/ha_failures.rs on
# the multi-node services of e2e/env — Redis primary + 2 replicas under 3 Sentinels, 3 Kafka
# brokers (RF 3, min.insync 2), 3 Cassandra nodes (RF 3, QUORUM) — each under a steady load of
# direct and group messages across 2 edges (2 delivery, 1 presence):
#   - kill -9 the Redis primary (Sentinel failover to a replica), bring it back;
#   - kill -9 the Kafka broker leading the busiest partition, bring it back;
#   - cut one delivery process off Kafka for 20 s (iptables on its group id), heal;
#   - kill -9 one Cassandra node, bring it back (hinted handoff).
# Each prints a line `HA-RESULT fault=… unavailable_ms=… longest_wait_ms=… ack_p99_ms=…`; the
# summary is printed at the end and kept in $TERN_CACHE/ha-results.txt.
#
#   e2e/test-ha.sh              all four, one at a time (what CI runs)
#   e2e/test-ha.sh TEST…        some of them (names as in ha_failures.rs)
#   TERN_HA_KEEP=1 e2e/test-ha.sh    leave the HA services running afterwards
#   TERN_HA_FAULT_SECS=60 e2e/test-ha.sh   a longer outage per fault (default 20 s)
#
# Needs root (iptables, the cut test). Stop the single-node JVMs first on a small machine
# (e2e/test-all.sh does): 3 Cassandra + 3 Kafka nodes take ~6 GiB.
set -euo pipefail
cd "$(dirname "$0")/.."
export TERN_CACHE="${TERN_CACHE:-$HOME/.cache/tern}"
T0=$(date +%s)

tests=("$@")
if ((${#tests[@]} == 0)); then
  tests=(
    kill_9_the_redis_primary_failover_to_a_replica
    kill_9_the_kafka_leader_of_the_busiest_partition
    cut_one_delivery_process_off_kafka_for_20_s
    kill_9_a_cql_node
  )
fi

on_failure() {
  echo "---- HA services ----" >&2
  for svc in redis-ha kafka-ha cassandra-ha; do
    e2e/env/services/$svc.sh status >&2 || true
  done
}
trap 'on_failure' ERR

# The cut test needs iptables, which a fresh machine may not have.
(source e2e/env/lib.sh && apt_install $HA_APT_PACKAGES)
e2e/env/up.sh redis-ha kafka-ha cassandra-ha
echo "==> HA services up after $(( $(date +%s) - T0 )) s"
eval "$(e2e/env/env.sh)"
export TERN_TEST_BACKEND=distributed TERN_TEST_HA=redis,kafka,cql

cargo build -p chat-server --bin chat-server --test ha_failures
results="$TERN_CACHE/ha-results.txt"
: >"$results"
for t in "${tests[@]}"; do
  echo "==> $t ($(( $(date +%s) - T0 )) s)"
  # Every node up and in sync before each fault.
  e2e/env/services/redis-ha.sh health >/dev/null
  e2e/env/services/kafka-ha.sh wait-isr 120
  e2e/env/services/cassandra-ha.sh health >/dev/null
  log="$TERN_CACHE/ha-$t.log"
  t1=$(date +%s)
  if ! cargo test -p chat-server --test ha_failures -- --ignored --exact "$t" --nocapture >"$log" 2>&1; then
    tail -200 "$log" >&2
    echo "FAILED: $t (full log $log)" >&2
    exit 1
  fi
  grep -h '^HA-RESULT' "$log" | sed "s/\$/ test_s=$(( $(date +%s) - t1 ))/" | tee -a "$results"
done

if [[ -z "${TERN_HA_KEEP:-}" ]]; then
  e2e/env/down.sh redis-ha kafka-ha cassandra-ha
fi
echo "==> HA failure tests passed in $(( $(date +%s) - T0 )) s; results:"
cat "$results"
