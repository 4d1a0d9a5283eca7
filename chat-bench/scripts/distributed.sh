#!/usr/bin/env bash
# Distributed benchmark: a local cluster on the real services of e2e/env — 2 edges, 2
# delivery, 1 presence, all on this machine together with Kafka, Cassandra and Redis — and
# the bench spreading its clients over both edges (a sender and its receiver sit on
# different edges, so every message crosses Kafka and Redis). Results go to $OUT.
#
#   cargo build --release -p chat-server -p chat-bench
#   chat-bench/scripts/distributed.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
OUT=${1:-/tmp/tern-dist-bench-$(date +%Y%m%d-%H%M%S)}
RATES=${RATES:-500,1000,2000,3000,4000,6000,8000}
mkdir -p "$OUT"
e2e/env/up.sh redis kafka cassandra
eval "$(e2e/env/env.sh)"
export CHAT_CLUSTER="bench$(date +%s)" CHAT_JWT_SECRET=benchsecret \
  CHAT_KAFKA_BROKERS="$TERN_KAFKA_BROKERS" CHAT_SCYLLA_NODES="$TERN_CQL_NODES" \
  CHAT_REDIS_URL="$TERN_REDIS_URL" CHAT_BACKEND=distributed RUST_LOG=warn
"$BIN/chat-server" setup --partitions 8 >"$OUT/setup.log" 2>&1
PIDS=()
stop() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT
start() { # role port
  "$BIN/chat-server" serve --role "$1" --listen "127.0.0.1:$2" --node-id "$CHAT_CLUSTER-$1-$2" \
    >"$OUT/$1-$2.log" 2>&1 &
  PIDS+=($!)
}
start edge 18180; start edge 18181; start delivery 18182; start delivery 18183; start presence 18184
for port in 18180 18181 18182 18183 18184; do
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "127.0.0.1:$port not ready"; tail "$OUT"/*.log; exit 1; }
done
export CHAT_BENCH_URL=http://127.0.0.1:18180,http://127.0.0.1:18181
run() { # name, args...
  local name=$1; shift
  echo "== $name: chat-bench $*" | tee -a "$OUT/summary.txt"
  "$BIN/chat-bench" "$@" 2>"$OUT/$name.progress" | tee "$OUT/$name.txt" | tee -a "$OUT/summary.txt"
}
# Where the time goes: each process's chat_stage_seconds (and ack/delivery histograms).
stages() { # name
  for port in 18180 18181 18182 18183; do
    curl -sf "http://127.0.0.1:$port/metrics" >"$OUT/$1-metrics-$port.txt" || true
  done
  python3 - "$OUT" "$1" <<'PY' | tee -a "$OUT/summary.txt"
import glob, re, sys
out, name = sys.argv[1], sys.argv[2]
acc = {}
for f in glob.glob(f"{out}/{name}-metrics-*.txt"):
    for line in open(f):
        m = re.match(r'chat_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', line)
        if m:
            acc.setdefault(m[2], [0.0, 0.0])[0 if m[1] == "sum" else 1] += float(m[3])
print(f"stage means after {name} (ms): " + ", ".join(
    f"{k} {1000 * s / c:.2f} (n={int(c)})" for k, (s, c) in sorted(acc.items()) if c))
PY
}
if [ -n "${ONLY_DIRECT:-}" ]; then
  run "direct-$ONLY_DIRECT" direct --rate "$ONLY_DIRECT" --duration 15s --warmup 5s
  stages "direct-$ONLY_DIRECT"
  exit 0
fi
run sweep sweep --rates "$RATES" --duration 10s --warmup 3s --p99-limit-ms 50 --keep-going
run direct-2k direct --rate 2000 --duration 20s --warmup 5s
stages direct-2k
run group-1000 group --members 1000 --rate 20 --duration 15s --warmup 5s
echo "results in $OUT"
