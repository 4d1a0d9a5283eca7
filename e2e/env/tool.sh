#!/usr/bin/env bash
# Small clients for the running services, using what the environment already installed:
#   e2e/env/tool.sh kafka-topics --list            org.apache.kafka.tools.TopicCommand (bootstrap preset)
#   e2e/env/tool.sh kafka CLASS ARGS...            any Kafka main class on the broker's classpath
#   e2e/env/tool.sh cql "SELECT * FROM system.local"   one CQL statement via the python driver
#   e2e/env/tool.sh nodetool status                Cassandra nodetool over local JMX (17199)
#   e2e/env/tool.sh redis-cli ARGS...              redis-cli against 127.0.0.1:16379
#   e2e/env/tool.sh kubectl|helm|etcd|minio ARGS... the binaries built into $TERN_CACHE/bin
#   e2e/env/tool.sh ctr ARGS...                    containerd's ctr on the node's socket, namespace k8s.io
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SVC=tool
cmd="${1:-}"
[[ -n "$cmd" ]] || {
	sed -n '2,9p' "$0"
	exit 2
}
shift
kafka_cp="$TERN_PKG/kafka-$KAFKA_SCALA_VERSION-$KAFKA_VERSION/lib/*"
quiet_log4j=(-Dlog4j2.level=WARN -Dlog4j2.rootLevel=WARN)
case "$cmd" in
kafka-topics)
	exec "$(java_bin)" "${quiet_log4j[@]}" -cp "$kafka_cp" org.apache.kafka.tools.TopicCommand \
		--bootstrap-server "127.0.0.1:$KAFKA_PORT" "$@"
	;;
kafka) exec "$(java_bin)" "${quiet_log4j[@]}" -cp "$kafka_cp" "$@" ;;
cql)
	exec "$TERN_VENV/bin/python" - "$CQL_PORT" "$@" <<'PY'
import sys
from cassandra.cluster import Cluster
c = Cluster(["127.0.0.1"], port=int(sys.argv[1]))
s = c.connect()
for stmt in sys.argv[2:]:
    for row in s.execute(stmt):
        print(row)
c.shutdown()
PY
	;;
nodetool)
	cassandra_jpms_opts
	mkdir -p "$TERN_RUN/cassandra/conf"
	lb="$TERN_RUN/cassandra/conf/logback-tools.xml"
	[[ -f "$lb" ]] || cat >"$lb" <<'XML'
<configuration>
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDERR" /></root>
</configuration>
XML
	exec "$(java_bin)" "${CASSANDRA_JPMS_OPTS[@]}" -Duser.home="$TERN_RUN/cassandra" -cp "$TERN_PKG/cassandra-$CASSANDRA_VERSION/lib/*" \
		-Dlogback.configurationFile="$lb" org.apache.cassandra.tools.NodeTool \
		-h 127.0.0.1 -p "$CASSANDRA_JMX_PORT" "$@"
	;;
redis-cli) exec redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@" ;;
kubectl) exec "$TERN_BIN/kubectl" --kubeconfig "$TERN_RUN/kube/kubeconfig" "$@" ;;
helm) KUBECONFIG="$TERN_RUN/kube/kubeconfig" exec "$TERN_BIN/helm" "$@" ;;
etcd | etcdctl | minio | kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy) exec "$TERN_BIN/$cmd" "$@" ;;
ctr) exec ctr --address "$TERN_RUN/node/containerd/containerd.sock" -n k8s.io "$@" ;;
*) die "unknown tool '$cmd'" ;;
esac
