#!/usr/bin/env bash
# The standard benchmark set published in docs/benchmarks.md. Each scenario gets a fresh
# server (so RSS per connection is honest) on 127.0.0.1:18080; results go to $OUT.
# Bounded: every scenario has a duration and a drain timeout; servers are stopped at the end.
#
#   cargo build --release -p chat-server -p chat-bench
#   chat-bench/scripts/standard.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
OUT=${1:-/tmp/tern-bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export CHAT_BENCH_URL=http://127.0.0.1:18080 CHAT_JWT_SECRET=benchsecret
# The server and the load generator get a core each (taskset), so the bench cannot starve the
# server and every run has the same split. SERVER_CPUS= BENCH_CPUS= (empty) turns pinning off.
SERVER_CPUS=${SERVER_CPUS-1}
BENCH_CPUS=${BENCH_CPUS-0}
SERVER_PIN=(); [[ -n "$SERVER_CPUS" ]] && SERVER_PIN=(taskset -c "$SERVER_CPUS")
BENCH_PIN=(); [[ -n "$BENCH_CPUS" ]] && BENCH_PIN=(taskset -c "$BENCH_CPUS")
PID=""
start() {
  rm -rf "$OUT/data"
  "${SERVER_PIN[@]}" "$BIN/chat-server" --listen 127.0.0.1:18080 --data-dir "$OUT/data" --jwt-secret benchsecret \
    --log warn "$@" >"$OUT/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && return; sleep 0.1; done
  echo "server did not start"; cat "$OUT/server.log"; exit 1
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap stop EXIT
run() { # name, args...
  local name=$1; shift
  echo "== $name: chat-bench $*" | tee -a "$OUT/summary.txt"
  "${BENCH_PIN[@]}" "$BIN/chat-bench" "$@" 2>"$OUT/$name.progress" | tee "$OUT/$name.txt" | tee -a "$OUT/summary.txt"
}

start; run idle-19k connect -n 19000 --hold 10s --source-ips 127.0.0.2-127.0.0.20 --server-pid "$PID"; stop
start; run handshake handshake -n 20000 --concurrency 64 --source-ips 127.0.0.2-127.0.0.20; stop
start; run direct-5k direct --rate 5000 --duration 20s --warmup 5s; stop
start; run sweep sweep --rates 5000,10000,15000,20000,25000,30000,40000 --duration 10s --warmup 2s --p99-limit-ms 50 --keep-going; stop
start; run group-1000 group --members 1000 --rate 200 --duration 15s --warmup 5s; stop
echo "results in $OUT"
