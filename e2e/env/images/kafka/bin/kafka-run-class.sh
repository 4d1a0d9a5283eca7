#!/usr/bin/env bash
# kafka-run-class.sh CLASS [ARGS…]: run a Kafka main class on /opt/kafka/libs with the same
# environment variables as Kafka's own script (KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS,
# KAFKA_GC_LOG_OPTS, KAFKA_JMX_OPTS, JMX_PORT, KAFKA_LOG4J_OPTS, KAFKA_OPTS, JAVA_HOME).
set -e
[ $# -ge 1 ] || { echo "USAGE: $0 [-daemon] [-name servicename] classname [opts]" >&2; exit 1; }
base_dir="$(cd "$(dirname "$0")/.." && pwd)"
while [ $# -gt 0 ]; do
	case "$1" in
	-name) shift 2 ;;
	-daemon) echo "$0: -daemon is not supported in this image (run in the foreground)" >&2; shift ;;
	-loggc) shift ;;
	*) break ;;
	esac
done
: "${KAFKA_HEAP_OPTS:=-Xmx256M}"
# tools (everything but the broker) get a JVM that starts fast and uses one GC thread:
# readiness probes run one every few seconds on small nodes
: "${KAFKA_JVM_PERFORMANCE_OPTS:=-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:CICompilerCount=1 -Djava.awt.headless=true}"
: "${KAFKA_LOG4J_OPTS:=-Dlog4j2.configurationFile=$base_dir/config/tools-log4j2.properties}"
if [ -n "${JMX_PORT:-}" ]; then
	: "${KAFKA_JMX_OPTS:=-Dcom.sun.management.jmxremote -Dcom.sun.management.jmxremote.authenticate=false -Dcom.sun.management.jmxremote.ssl=false}"
	KAFKA_JMX_OPTS="$KAFKA_JMX_OPTS -Dcom.sun.management.jmxremote.port=$JMX_PORT"
else
	KAFKA_JMX_OPTS=""
fi
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
# shellcheck disable=SC2086 # the *_OPTS are lists of JVM flags
exec "$JAVA" $KAFKA_HEAP_OPTS $KAFKA_JVM_PERFORMANCE_OPTS ${KAFKA_GC_LOG_OPTS:-} $KAFKA_JMX_OPTS \
	-Dkafka.logs.dir="${LOG_DIR:-$base_dir/logs}" $KAFKA_LOG4J_OPTS \
	-cp "${CLASSPATH:+$CLASSPATH:}$base_dir/libs/*" ${KAFKA_OPTS:-} "$@"
