#!/usr/bin/env bash
# The floor under Tern's distributed numbers, measured on this machine in the same session:
# Kafka's own produce latency at a rate (acks=all, the producer settings Tern uses) and its
# single-record end-to-end latency (produce → consume), and the CQL server's write latency at
# a rate (examples/cql_probe.rs, same driver and consistency as the store). Run it next to a
# distributed sweep and report Tern's p99 as a ratio to these (issue #13).
#
#   e2e/env/up.sh kafka cassandra
#   chat-bench/scripts/floor.sh [RATE] [SECONDS]        # default 2000 msg/s for 10 s
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${1:-2000}
SECONDS_=${2:-10}
eval "$(e2e/env/env.sh)"
BROKERS=${TERN_KAFKA_BROKERS:-127.0.0.1:9092}
CQL=${TERN_CQL_NODES:-127.0.0.1:9042}
KAFKA_HOME=$(ls -d "${TERN_CACHE:-$HOME/.cache/tern}"/pkg/kafka-*/ | head -1)
CP="$KAFKA_HOME/lib/*"
TOPIC=tern-floor-$$
N=$(( RATE * SECONDS_ ))
# The e2e Kafka does not create topics on first use (as in production): create one, drop it after.
java -Xmx256m -cp "$CP" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" \
  --create --topic "$TOPIC" --partitions 1 --replication-factor 1 >/dev/null 2>&1
trap 'java -Xmx256m -cp "$CP" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" --delete --topic "$TOPIC" >/dev/null 2>&1 || true' EXIT
echo "== Kafka ProducerPerformance: $N records of 200 B at $RATE/s, acks=all, linger.ms=1 ($BROKERS)"
java -Xmx256m -cp "$CP" org.apache.kafka.tools.ProducerPerformance --topic "$TOPIC" \
  --num-records "$N" --record-size 200 --throughput "$RATE" \
  --producer-props bootstrap.servers="$BROKERS" acks=all linger.ms=1 enable.idempotence=true 2>&1 \
  | grep -v WARN | tail -1
echo "== Kafka EndToEndLatency: 2000 records one at a time, acks=all (produce → consume)"
java -Xmx256m -cp "$CP" org.apache.kafka.tools.EndToEndLatency "$BROKERS" "$TOPIC" 2000 all 200 2>&1 \
  | grep -iE "avg|percentile" | tail -2
echo "== CQL writes at $RATE/s for $SECONDS_ s ($CQL)"
# The probe from BIN (as the distributed bench's binaries), else built here.
PROBE=${BIN:-target/release}/examples/cql_probe
if [[ -x "$PROBE" ]]; then
  "$PROBE" "$CQL" "$RATE" "$SECONDS_"
else
  cargo run -q --release -p chat-server --example cql_probe -- "$CQL" "$RATE" "$SECONDS_"
fi
