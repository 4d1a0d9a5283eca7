#!/usr/bin/env bash
# Embedded chat-server against its floor (issue #13), alternated in one run:
#   floor  — examples/relay_floor.rs: the same transport stack, nothing stored
#   durable — relay_floor --durable: the same, acking and delivering only after a group-
#             committed append + fdatasync of the frame (the least any durable server can do)
#   each DIR given — a release `chat-server` (e.g. before and after a change)
# For every round and side (a fresh server each time, server on core 1, bench on core 0):
# 1:1 at 5,000 msg/s, a 1:1 sweep (JSON, for plot.py), a group of 1000 at 200 msg/s.
#
#   cargo build --release -p chat-server -p chat-bench --bins --example relay_floor
#   chat-bench/scripts/floor-embedded.sh OUT ROUNDS name=DIR [name=DIR …]
#   e.g. floor-embedded.sh /tmp/floor 2 before=/tmp/bench-old after=target/release
#
# Writes OUT/<round>-<side>-{direct,sweep,group}.{txt,json}, OUT/table.md (medians) and
# OUT/latency-vs-rate.svg. Takes about 2.5 minutes per side and round.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?OUT}; ROUNDS=${2:?ROUNDS}; shift 2
(($#)) || { echo "give at least one name=DIR"; exit 2; }
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
FLOOR=${FLOOR:-$BIN/examples/relay_floor}
BENCH=${BENCH:-$BIN/chat-bench}
RATES=${RATES:-5000,10000,15000,20000,25000,30000,40000}
SERVER_CPUS=${SERVER_CPUS-1}
BENCH_CPUS=${BENCH_CPUS-0}
SERVER_PIN=(); [[ -n "$SERVER_CPUS" ]] && SERVER_PIN=(taskset -c "$SERVER_CPUS")
BENCH_PIN=(); [[ -n "$BENCH_CPUS" ]] && BENCH_PIN=(taskset -c "$BENCH_CPUS")
mkdir -p "$OUT"
export CHAT_BENCH_URL=http://127.0.0.1:18080 CHAT_JWT_SECRET=benchsecret
# The durable floor is the same binary with --durable, started through a wrapper so every
# side is "a directory with a chat-server in it" or a binary.
mkdir -p "$OUT/durable-floor"
printf '#!/bin/sh\nexec %q --durable "$@"\n' "$(realpath "$FLOOR")" >"$OUT/durable-floor/chat-server"
chmod +x "$OUT/durable-floor/chat-server"
sides=("floor=$FLOOR" "durable=$OUT/durable-floor" "$@")
PID=""
stop() { [[ -n "$PID" ]] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }; PID=""; }
trap stop EXIT
start() { # binary
  rm -rf "$OUT/data"
  "${SERVER_PIN[@]}" "$1" --listen 127.0.0.1:18080 --data-dir "$OUT/data" --jwt-secret benchsecret \
    --log warn >"$OUT/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && return; sleep 0.1; done
  echo "server $1 did not start"; cat "$OUT/server.log"; exit 1
}
bench() { # file-prefix args...
  local f=$1; shift
  "${BENCH_PIN[@]}" "$BENCH" "$@" 2>"$f.progress" >"$f" || echo "  (chat-bench exited $?)"
}
for round in $(seq "$ROUNDS"); do
  for spec in "${sides[@]}"; do
    name=${spec%%=*}; path=${spec#*=}
    [[ -d "$path" ]] && path="$path/chat-server"
    p="$OUT/$round-$name"
    echo "== round $round $name ($path) load $(cut -d' ' -f1 /proc/loadavg)"
    start "$path"; bench "$p-direct.json" direct --rate 5000 --duration 15s --warmup 3s --json; stop
    start "$path"; bench "$p-sweep.json" sweep --rates "$RATES" --duration 8s --warmup 2s --p99-limit-ms 50 --keep-going --json; stop
    start "$path"; bench "$p-group.json" group --members 1000 --rate 200 --duration 15s --warmup 5s --json; stop
  done
done
python3 - "$OUT" "$ROUNDS" "${sides[@]%%=*}" <<'PY'
import json, statistics, sys, os
out, rounds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(p):
    try:
        with open(p) as f: return json.load(f)
    except Exception: return None
def ms(us): return us / 1000.0
rows = []
for n in names:
    d5 = [load(f"{out}/{r}-{n}-direct.json") for r in range(1, rounds + 1)]
    sw = [load(f"{out}/{r}-{n}-sweep.json") for r in range(1, rounds + 1)]
    gr = [load(f"{out}/{r}-{n}-group.json") for r in range(1, rounds + 1)]
    p99_5k = [ms(x["delivery_from_send"]["p99_us"]) for x in d5 if x]
    knee = []
    for x in sw:
        if not x: continue
        ok = [s["target_rate"] for s in x["steps"] if s["delivery"]["p99_us"] <= 50_000 and s.get("lost", 0) == 0]
        knee.append(max(ok) if ok else 0)
    g99 = [ms(x["delivery_from_send"]["p99_us"]) for x in gr if x]
    gput = [x.get("deliveries_per_s", 0) for x in gr if x]
    f = lambda v, k="{:.1f}": " / ".join(k.format(a) for a in v) or "—"
    rows.append(f"| {n} | {f(p99_5k)} | {f(knee, '{:,}')} | {f(g99)} | {f(gput, '{:,.0f}')} |")
with open(f"{out}/table.md", "w") as t:
    t.write("| side | 1:1 at 5k msg/s: p99 sent→recv, ms (per round) | 1:1 highest swept rate with p99 (scheduled→recv) ≤ 50 ms and 0 lost | group 1000 at 200 msg/s: p99 sent→recv, ms | group deliveries/s |\n|---|---|---|---|---|\n")
    t.write("\n".join(rows) + "\n")
print(open(f"{out}/table.md").read())
PY
specs=()
for n in "${sides[@]%%=*}"; do [[ -s "$OUT/1-$n-sweep.json" ]] && specs+=("$n=$OUT/1-$n-sweep.json"); done
python3 chat-bench/scripts/plot.py -o "$OUT/latency-vs-rate.svg" --limit-ms 50 "${specs[@]}" || true
echo "results in $OUT"
