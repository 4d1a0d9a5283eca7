#!/usr/bin/env bash
# The distributed mode's tests, on the real services of e2e/env (Redis, Kafka, Cassandra, MinIO):
#   1. the ScyllaDB store suite (same cases as SQLite),
#   2. the whole protocol suite against a cluster of separate processes per test
#      (2 edges, 2 delivery, 1 presence; clients spread over both edges),
#   3. media on S3 (MinIO): embedded, and on a cluster (tus resumed through the other edge),
#   4. push through the <cluster>.push topic (ignored in plain `cargo test`),
#   5. the failure tests (kill -9 delivery, kill -9 edge, restart Redis, stop Kafka 10 s),
#      one at a time, since they restart shared services.
# Each test gets its own cluster name (keyspace, topic, Redis prefix) and drops it after.
#   e2e/test-distributed.sh            everything
#   e2e/test-distributed.sh failures   just the failure tests
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"

on_failure() {
  echo "---- services ----" >&2
  e2e/env/status.sh >&2 || true
  for svc in redis kafka cassandra minio; do
    for f in "${TERN_CACHE:-$HOME/.cache/tern}/run/$svc/log/"*; do
      [[ -f "$f" ]] || continue
      echo "---- $f (last 30 lines) ----" >&2
      tail -30 "$f" >&2
    done
  done
}
trap 'on_failure' ERR

e2e/env/up.sh redis kafka cassandra minio
eval "$(e2e/env/env.sh)"
export TERN_TEST_BACKEND=distributed

if [[ "$what" == all ]]; then
  echo "==> ScyllaDB store suite"
  cargo test -p chat-server --test store_contract
  echo "==> protocol suite against 2 edges + 2 delivery + 1 presence"
  cargo test -p chat-server --test protocol -- --test-threads 2
  echo "==> media on S3 (MinIO), embedded and on a cluster"
  TERN_TEST_BACKEND= TERN_TEST_MEDIA=s3 cargo test -p chat-server --test media
  TERN_TEST_BACKEND= TERN_TEST_MEDIA=s3 cargo test -p chat-server --test media_transcode
  TERN_TEST_MEDIA=s3 cargo test -p chat-server --test media -- --test-threads 2
  echo "==> video renditions and voice waveforms (ffmpeg) on a cluster with S3"
  TERN_TEST_MEDIA=s3 cargo test -p chat-server --test media_transcode -- --test-threads 2
fi
echo "==> push through Kafka and ScyllaDB (coalesced push; kill -9 with pushes pending)"
cargo test -p chat-server --test push -- --ignored --test-threads 1
echo "==> failure tests"
cargo test -p chat-server --test cluster_failures -- --ignored --test-threads 1
