#!/usr/bin/env bash
# Idle-connection run beyond one process's 20,000 open files: SERVERS chat-server processes
# share one loopback port (--reuse-port, own data dir each), BENCHES chat-bench processes each
# open their share of TOTAL connections from their own users and source addresses. Reads the
# servers' summed VmRSS before and after every ramp finished, counts established sockets with
# `ss`, then stops the servers it started (by pid). Bounded: ramps time out, holds end.
#
# Usage: chat-bench/scripts/connect-fleet.sh [TOTAL=100000] [SERVERS=6] [BENCHES=6]
# Env:   BIN=target/release PORT=18090 SECRET=benchsecret HOLD=60 CONCURRENCY=128
set -euo pipefail

TOTAL=${1:-100000}
SERVERS=${2:-6}
BENCHES=${3:-6}
BIN=${BIN:-target/release}
PORT=${PORT:-18090}
SECRET=${SECRET:-benchsecret}
HOLD=${HOLD:-60}
CONCURRENCY=${CONCURRENCY:-128}
RAMP_TIMEOUT=${RAMP_TIMEOUT:-300}

die() { echo "connect-fleet: $*" >&2; exit 1; }
per_bench=$(( (TOTAL + BENCHES - 1) / BENCHES ))
(( per_bench <= 19900 )) || die "$per_bench connections per bench process is over the ~19,900 a process can open; use more BENCHES"
(( TOTAL / SERVERS <= 18000 )) || die "$(( TOTAL / SERVERS )) connections per server leaves too little headroom under 20,000 files; use more SERVERS"
[[ -x $BIN/chat-server && -x $BIN/chat-bench ]] || die "build first: cargo build --release -p chat-server -p chat-bench"

work=$(mktemp -d /tmp/tern-fleet.XXXXXX)
server_pids=()
bench_pids=()
cleanup() {
  for p in "${bench_pids[@]}" "${server_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

rss_sum() {
  local sum=0 kb
  for p in "${server_pids[@]}"; do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")
    sum=$(( sum + kb ))
  done
  echo "$sum"
}

echo "starting $SERVERS servers on 127.0.0.1:$PORT (logs in $work)"
for i in $(seq 1 "$SERVERS"); do
  "$BIN/chat-server" --listen "127.0.0.1:$PORT" --reuse-port --data-dir "$work/data-$i" \
    --jwt-secret "$SECRET" --log warn > "$work/server-$i.log" 2>&1 &
  server_pids+=($!)
done
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break
  sleep 0.1
done
sleep 1
rss_before=$(rss_sum)

echo "starting $BENCHES bench processes x $per_bench connections, hold ${HOLD}s"
t0=$(date +%s.%N)
for i in $(seq 0 $(( BENCHES - 1 ))); do
  n=$(( TOTAL - i * per_bench )); (( n > per_bench )) && n=$per_bench
  (( n > 0 )) || break
  "$BIN/chat-bench" connect -n "$n" --hold "${HOLD}s" --settle 1s \
    --url "http://127.0.0.1:$PORT" --jwt-secret "$SECRET" \
    --user-offset $(( 10000000 + i * 1000000 )) \
    --source-ips "127.0.$(( i + 1 )).1-127.0.$(( i + 1 )).20" \
    --concurrency "$CONCURRENCY" --progress-interval 5s --json \
    > "$work/bench-$i.json" 2> "$work/bench-$i.log" &
  bench_pids+=($!)
done

deadline=$(( $(date +%s) + RAMP_TIMEOUT ))
while :; do
  done_count=$( (grep -l "ramp done" "$work"/bench-*.log 2>/dev/null || true) | wc -l)
  (( done_count >= ${#bench_pids[@]} )) && break
  (( $(date +%s) < deadline )) || die "ramps did not finish within ${RAMP_TIMEOUT}s"
  sleep 0.5
done
t1=$(date +%s.%N)
sleep 3
rss_after=$(rss_sum)
established_sockets=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
per_server=$(for p in "${server_pids[@]}"; do ls "/proc/$p/fd" | wc -l; done | tr '\n' ' ')
ramp_s=$(echo "$t1 - $t0" | bc)
echo "all ramps done in $ramp_s s: $established_sockets established sockets on :$PORT" \
  "(includes each bench's one HTTP connection), $(echo "$established_sockets / $ramp_s" | bc) handshakes/s overall"
echo "open files per server: $per_server"
echo "server RSS: $(( rss_before / 1024 )) MiB before, $(( rss_after / 1024 )) MiB after"
if (( established_sockets > 0 )); then
  echo "server RSS per connection: $(echo "scale=2; ($rss_after - $rss_before) / $established_sockets" | bc) KiB"
fi

for p in "${bench_pids[@]}"; do wait "$p" || echo "a bench process exited with an error" >&2; done
bench_pids=()
echo
echo "per bench process (from $work/bench-*.json):"
for f in "$work"/bench-*.json; do
  python3 - "$f" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  {sys.argv[1].rsplit('/', 1)[-1]}: {r['established']}/{r['requested']} established, "
      f"{r['failed']} failed {r['failures'] or ''}, ramp {r['ramp_seconds']:.1f} s "
      f"({r['handshakes_per_s']:.0f}/s), handshake p99 {r['handshake']['p99_us']/1000:.1f} ms, "
      f"{r['dropped']} dropped, {r['open_at_end']} open at end, "
      f"bench RSS/conn {r['bench_per_connection_kib'] or 0:.1f} KiB")
PY
done
