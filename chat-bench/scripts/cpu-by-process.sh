#!/usr/bin/env bash
# CPU per message of each process of the distributed path (Kafka, Cassandra, Redis, Tern's
# edges, delivery and presence processes) in the steady state of one `direct` run: user +
# system time from /proc/<pid>/stat, taken when chat-bench starts measuring (after its
# warm-up) and when it prints its result. Runs chat-bench/scripts/distributed.sh with
# ONLY_DIRECT=RATE (services of e2e/env, 2 edges, 2 delivery, 1 presence, all on this machine).
#
#   cargo build --release -p chat-server -p chat-bench
#   chat-bench/scripts/cpu-by-process.sh OUT [RATE]        # RATE default 2000
#
# Prints CPU seconds, µs per message and share per component. The measured window is the
# bench's own (after its warm-up, read from its report), so messages = RATE × that window.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?OUT}; RATE=${2:-2000}
BIN=${BIN:-target/release}
rm -rf "$OUT"; mkdir -p "$OUT"
snap() {
  local p c n t
  for p in $(pgrep -f 'java|redis-server|chat-server|chat-bench'); do
    c=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
    case "$c" in
      *kafka.Kafka*) n=kafka ;;
      *CassandraDaemon*) n=cassandra ;;
      *redis-server*) n=redis ;;
      *chat-bench*) n=bench ;;
      *"chat-server serve --role edge"*) n=tern-edge ;;
      *"chat-server serve --role delivery"*) n=tern-delivery ;;
      *"chat-server serve --role presence"*) n=tern-presence ;;
      *) continue ;;
    esac
    t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || continue
    echo "$n $p $t"
  done
}
BIN=$BIN ONLY_DIRECT=$RATE chat-bench/scripts/distributed.sh "$OUT" >"$OUT/run.log" 2>&1 &
RUN=$!
until grep -q 'sending:' "$OUT/direct-$RATE.progress" 2>/dev/null; do
  kill -0 "$RUN" 2>/dev/null || { echo "distributed.sh ended early: $OUT/run.log"; exit 1; }
  sleep 0.1
done
snap >"$OUT/cpu-start"
until grep -q '^latency' "$OUT/direct-$RATE.txt" 2>/dev/null; do sleep 0.1; done
snap >"$OUT/cpu-end"
wait "$RUN"
python3 - "$OUT" "$RATE" "$(getconf CLK_TCK)" <<'PY'
import collections, re, sys
out, rate, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def read(f):
    return {(n, p): int(t) for n, p, t in (l.split() for l in open(f))}
a, b = read(f"{out}/cpu-start"), read(f"{out}/cpu-end")
cpu = collections.Counter()
for k, t in b.items():
    cpu[k[0]] += t - a.get(k, 0)
text = open(f"{out}/direct-{rate}.txt").read()
# The measured window, as chat-bench reports it ("… 10 s (+5 s warm-up)").
measured_s = int(re.search(r"recipients/msg, (\d+) s \(\+", text).group(1))
msgs = rate * measured_s
lat = re.search(r"delivery \(sent→recv\)\s+[\d,]+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", text)
print(f"{rate} msg/s, {msgs} messages measured; delivery p50/p90/p99 ms: {' / '.join(lat.groups()) if lat else '?'}")
total = sum(cpu.values())
for name, t in cpu.most_common():
    print(f"  {name:14s} {t / hz:6.2f} s CPU {t / hz / msgs * 1e6:7.1f} µs/message {t / max(total, 1):6.1%}")
print(f"  {'total':14s} {total / hz:6.2f} s CPU {total / hz / msgs * 1e6:7.1f} µs/message")
PY
