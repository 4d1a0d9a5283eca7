#!/usr/bin/env bash
# Server CPU time per message (user + system, from /proc/<pid>/stat) for each system at the
# same offered load: a measure that a noisy machine disturbs much less than latency does.
#
#   bench/peers/cpu-per-message.sh OUT_DIR [systems...] -- chat-bench args...
#   bench/peers/cpu-per-message.sh /tmp/cpu tern centrifugo socketio -- direct --rate 2000 --duration 10s
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=$1; shift
systems=()
while [[ $# -gt 0 && "$1" != "--" ]]; do systems+=("$1"); shift; done
shift
. "$HERE/systems.sh"
trap 'stop_system' EXIT
ticks() { local t=0 p; for p in ${1//,/ }; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
for s in "${systems[@]}"; do
  "start_$s"
  before=$(ticks "$PIDS")
  "${BENCH_PIN[@]}" "$BIN/chat-bench" "$@" --url "$URL" --system "$SYSTEM" --jwt-secret "$SECRET" --json \
    >"$OUT/$s.json" 2>"$OUT/logs/$s.progress" || true
  after=$(ticks "$PIDS")
  python3 - "$OUT/$s.json" "$s" "$before" "$after" "$(getconf CLK_TCK)" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
r = json.load(open(sys.argv[1])); s = sys.argv[2]; cpu = (int(sys.argv[4]) - int(sys.argv[3])) / int(sys.argv[5])
d = r["delivered"]
print(f"{s}: server CPU {cpu:.2f} s (setup and ramp included) for {r['sent']} messages, {d} deliveries: "
      f"{cpu / max(r['sent'], 1) * 1e6:.0f} µs per message, {cpu / max(d, 1) * 1e6:.1f} µs per delivery")
PY
  stop_system
done
