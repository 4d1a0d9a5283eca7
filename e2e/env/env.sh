#!/usr/bin/env bash
# Print `export` lines for the real-services environment (the TERN_HA_* ones name the
# three-node services of `up.sh redis-ha kafka-ha cassandra-ha`, printed whether or not they run). Use:
#   eval "$(e2e/env/env.sh)"
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
q() { printf '%q' "$1"; }
cat <<ENV
export TERN_CACHE=$(q "$TERN_CACHE")
export TERN_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export TERN_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export TERN_CQL_NODES=127.0.0.1:$CQL_PORT
export TERN_HA_REDIS_SENTINELS=127.0.0.1:$((REDIS_HA_SENTINEL_PORT_BASE + 1)),127.0.0.1:$((REDIS_HA_SENTINEL_PORT_BASE + 2)),127.0.0.1:$((REDIS_HA_SENTINEL_PORT_BASE + 3))
export TERN_HA_REDIS_MASTER=$REDIS_HA_MASTER
export TERN_HA_KAFKA_BROKERS=127.0.0.1:$((KAFKA_HA_PORT_BASE + 1)),127.0.0.1:$((KAFKA_HA_PORT_BASE + 2)),127.0.0.1:$((KAFKA_HA_PORT_BASE + 3))
export TERN_HA_CQL_NODES=127.0.0.2:$CASSANDRA_HA_CQL_PORT,127.0.0.3:$CASSANDRA_HA_CQL_PORT,127.0.0.4:$CASSANDRA_HA_CQL_PORT
export TERN_ETCD_ENDPOINTS=http://127.0.0.1:$ETCD_CLIENT_PORT
export TERN_S3_ENDPOINT=http://127.0.0.1:$MINIO_PORT
export TERN_S3_BUCKET=$(q "${TERN_S3_BUCKET:-$TERN_S3_BUCKET_DEFAULT}")
export AWS_ACCESS_KEY_ID=$(q "${MINIO_ROOT_USER:-$MINIO_ROOT_USER_DEFAULT}")
export AWS_SECRET_ACCESS_KEY=$(q "${MINIO_ROOT_PASSWORD:-$MINIO_ROOT_PASSWORD_DEFAULT}")
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
export KUBECONFIG=$(q "$TERN_RUN/kube/kubeconfig")
export TERN_CONTAINERD_SOCK=$(q "$TERN_RUN/node/containerd/containerd.sock")
export PATH=$(q "$TERN_BIN"):\$PATH
ENV
