#!/usr/bin/env bash
# The whole test suite, services included — the one command the README's Tests section starts
# with, and what `.ci/run` runs:
#
#   e2e/test-all.sh
#
# In order: rustfmt + clippy; the real services (e2e/env: Redis, Kafka, Cassandra, MinIO;
# built/downloaded once into ~/.cache/tern); `cargo test --workspace`; the distributed mode on
# those services; the failure tests on 3-node Redis (Sentinel)/Kafka/Cassandra sets
# (e2e/test-ha.sh); the operator on a bare kube-apiserver; the web client in Chromium; then the
# real Kubernetes node (kubelet + containerd) with a ChatCluster end to end (e2e/kube/run.sh).
# Caches live outside the checkout (TERN_CACHE, CARGO_TARGET_DIR); cold and warm timings are in
# docs/e2e-environment.md.
set -euo pipefail
cd "$(dirname "$0")/.."

export TERN_CACHE="${TERN_CACHE:-$HOME/.cache/tern}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TERN_CACHE/target}"
export CARGO_TERM_COLOR=never
mkdir -p "$TERN_CACHE"
T0=$(date +%s)
step() { printf '\n==> %s (%s, +%ss)\n' "$*" "$(date -u +%H:%M:%S)" "$(( $(date +%s) - T0 ))"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "real services (e2e/env: Redis, Kafka, Cassandra, MinIO; cached builds/downloads in $TERN_CACHE)"
# Started before the workspace tests: the store contract suites (store_contract, media_store)
# run against the real CQL server.
e2e/env/up.sh redis kafka cassandra minio

step "tools from Debian's packages: ffmpeg (media tests: posters, renditions, waveforms), chromium (web client)"
if ! command -v chromium >/dev/null 2>&1 || ! command -v ffmpeg >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium ffmpeg >/dev/null
fi

step "cargo test --workspace (unit tests, protocol suite against the embedded binary, store suites)"
cargo test --workspace 2>&1 | tee "$TERN_CACHE/ci-test.log"

step "distributed mode on real Redis, Kafka, Cassandra: store suite, protocol suite on a cluster, failure tests"
e2e/test-distributed.sh

step "no single point of failure: kill -9 a node of each multi-node dependency under load (e2e/test-ha.sh)"
# The HA tests run on their own 3-node Redis/Kafka/Cassandra sets: stop the single-node JVMs so
# the six HA JVMs get the cores (later steps need none of them; the node step stops them anyway).
e2e/env/down.sh minio cassandra kafka
e2e/test-ha.sh

step "operator on a bare kube-apiserver (etcd + kube-apiserver built from Go modules by e2e/env)"
TERN_CHAT_SERVER_BIN="$CARGO_TARGET_DIR/debug/chat-server" e2e/operator/ci.sh

step "web client in a real browser (Chromium + playwright-core)"
(cd chat-server/web/test && npm ci --no-audit --no-fund --loglevel=error)
BIN="$CARGO_TARGET_DIR/debug/chat-server"
WEBDATA=$(mktemp -d)
"$BIN" --listen 127.0.0.1:18081 --data-dir "$WEBDATA" --dev-auth --log warn >"$WEBDATA/server.out" 2>&1 &
WEBPID=$!
trap 'kill $WEBPID 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:18081/healthz >/dev/null && break; sleep 0.2; done
(cd chat-server/web/test && TERN_URL=http://127.0.0.1:18081 TERN_LOCAL_WEB=0 node smoke.mjs) || { cat "$WEBDATA/server.out"; exit 1; }
(cd chat-server/web/test && TERN_URL=http://127.0.0.1:18081 TERN_LOCAL_WEB=0 node events.mjs) || { cat "$WEBDATA/server.out"; exit 1; }
kill $WEBPID; wait $WEBPID 2>/dev/null || true
trap - EXIT
(cd chat-server/web/test && TERN_SERVER_BIN="$BIN" TERN_LOCAL_WEB=0 node resilience.mjs)
(cd chat-server/web/test && TERN_SERVER_BIN="$BIN" node media.mjs)

step "real Kubernetes node: the ChatCluster end to end (e2e/kube/run.sh)"
# The host's data-plane services are not used by the node (it runs its own Kafka, Cassandra
# and Redis as pods): stop them so the JVMs do not compete for the 2 cores.
e2e/env/down.sh minio cassandra kafka redis
e2e/kube/run.sh
# Leave the machine as the run found it: the node's kube-proxy rules, containerd and the API
# server go (TERN_KEEP_NODE=1 keeps them for a look or a faster next run).
if [ "${TERN_KEEP_NODE:-0}" != 1 ]; then
  e2e/env/down.sh node kube etcd
fi

step "all suites passed in $(( $(date +%s) - T0 )) s"
