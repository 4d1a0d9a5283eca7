#!/usr/bin/env bash
# A/B benchmark of two chat-server builds on the same machine in the same run: the scenarios of
# the standard set that exercise the send path, each run alternately on A and B (A, B, A, B …)
# so that machine noise falls on both. Every run gets a fresh server and data directory.
#
#   chat-bench/scripts/compare.sh A_DIR B_DIR [OUT_DIR] [ROUNDS]
#
# A_DIR and B_DIR each hold a `chat-server` binary (release); chat-bench comes from B_DIR.
# Results: $OUT/summary.txt (one block per run) and $OUT/table.md (medians per scenario).
set -euo pipefail
cd "$(dirname "$0")/../.."
A=${1:?A_DIR}; B=${2:?B_DIR}
OUT=${3:-/tmp/tern-compare-$(date +%Y%m%d-%H%M%S)}
ROUNDS=${4:-2}
# The 1:1 sweep's offered rates (msg/s); e.g. SWEEP_RATES=10000,20000,30000,40000 for the floor.
SWEEP_RATES=${SWEEP_RATES:-5000,10000,15000,20000}
mkdir -p "$OUT"
export CHAT_BENCH_URL=http://127.0.0.1:18080 CHAT_JWT_SECRET=benchsecret
# The server and the load generator get a core each (taskset), so the bench cannot starve the
# server and every run has the same split. SERVER_CPUS= BENCH_CPUS= (empty) turns pinning off.
SERVER_CPUS=${SERVER_CPUS-1}
BENCH_CPUS=${BENCH_CPUS-0}
SERVER_PIN=(); [[ -n "$SERVER_CPUS" ]] && SERVER_PIN=(taskset -c "$SERVER_CPUS")
BENCH_PIN=(); [[ -n "$BENCH_CPUS" ]] && BENCH_PIN=(taskset -c "$BENCH_CPUS")
BENCH="$B/chat-bench"
PID=""
start() { # bin_dir
  rm -rf "$OUT/data"
  "${SERVER_PIN[@]}" "$1/chat-server" --listen 127.0.0.1:18080 --data-dir "$OUT/data" --jwt-secret benchsecret \
    --log warn >"$OUT/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && return; sleep 0.1; done
  echo "server did not start"; cat "$OUT/server.log"; exit 1
}
stop() { [[ -n "$PID" ]] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }; PID=""; }
trap stop EXIT
run() { # label bin_dir scenario args...
  local label=$1 dir=$2 name=$3; shift 3
  start "$dir"
  echo "== $label $name: chat-bench $* (load $(cut -d' ' -f1 /proc/loadavg))" | tee -a "$OUT/summary.txt"
  "${BENCH_PIN[@]}" "$BENCH" "$@" 2>"$OUT/$label-$name.progress" | tee -a "$OUT/$label-$name.txt" | tee -a "$OUT/summary.txt"
  stop
}
for round in $(seq "$ROUNDS"); do
  for side in A B; do
    dir=$A; [[ $side == B ]] && dir=$B
    run "$side" "$dir" direct-5k direct --rate 5000 --duration 20s --warmup 5s
    run "$side" "$dir" sweep sweep --rates "$SWEEP_RATES" --duration 10s --warmup 2s --p99-limit-ms 50 --keep-going
    run "$side" "$dir" group-1000 group --members 1000 --rate 200 --duration 15s --warmup 5s
  done
done
echo "results in $OUT"
