#!/usr/bin/env bash
# Profile one system during one workload: the server is sampled with `perf record -g` while
# chat-bench runs, then the top of `perf report` is printed (and kept in OUT_DIR).
#
#   bench/peers/profile.sh SYSTEM OUT_DIR -- chat-bench args...
#   bench/peers/profile.sh tern /tmp/prof-group -- group --members 1000 --senders 10 --rate 200 --duration 10s
#
# SYSTEM is one of the names in run.sh's SYSTEMS (tern, centrifugo, socketio, …). Needs perf
# (Debian: linux-perf) and the release binaries (run.sh builds them).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SYS=$1 OUT=$2; shift 2
[[ "${1:-}" == "--" ]] && shift
. "$HERE/systems.sh"
trap 'stop_system' EXIT
"start_$SYS"
IFS=, read -r -a pids <<<"$PIDS"
perf record -F 499 -g -o "$OUT/perf.data" -p "$(IFS=,; echo "${pids[*]}")" >"$OUT/logs/perf.log" 2>&1 &
PERF=$!
sleep 0.5
"${BENCH_PIN[@]}" "$BIN/chat-bench" "$@" --url "$URL" --system "$SYSTEM" --jwt-secret "$SECRET" \
  >"$OUT/bench.txt" 2>"$OUT/bench.progress" || true
kill -INT "$PERF"; wait "$PERF" || true
perf report -i "$OUT/perf.data" --no-children --sort comm,dso,symbol --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' | head -40 | tee "$OUT/top-symbols.txt"
echo "--- by thread"
perf report -i "$OUT/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12 \
  | tee "$OUT/top-threads.txt"
echo "bench result: $OUT/bench.txt"
