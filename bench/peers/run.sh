#!/usr/bin/env bash
# Tern side by side with the systems teams pick instead — one command:
#
#   bench/peers/run.sh [OUT_DIR]
#
# installs the peers (bench/peers/install.sh, cached in ~/.cache/tern/peers), builds Tern and
# chat-bench (release), then for every repeat, every workload and every system: starts the
# system fresh (pinned to $SERVER_CPUS), runs the workload with chat-bench (pinned to
# $BENCH_CPUS), stops it. Systems are interleaved (each repeat visits them in a rotated order)
# so slow drifts of a noisy machine do not land on one system. Then bench/peers/report.py
# writes results.csv, results.md and the SVG plots, and replaces the section of
# docs/benchmarks.md between <!-- peers:begin --> and <!-- peers:end -->.
#
# Everything is bounded: every chat-bench run has a duration and a drain timeout and runs
# under `timeout`. The default run takes about 25 minutes on the 2-core machine (see
# docs/benchmarks-howto.md, "Peers"). Sizes are environment variables (defaults below); a
# per-system override is VAR_<system>, e.g. IDLE_N_synapse=2000.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-/tmp/tern-peers-$(date +%Y%m%d-%H%M%S)}
BIN=${BIN:-$ROOT/target/release}

SYSTEMS=${SYSTEMS:-"tern tern_dist centrifugo centrifugo_durable synapse socketio socketio_recovery"}
WORKLOADS=${WORKLOADS:-"idle sweep group storm"}
REPEAT=${REPEAT:-2}
BENCH_CPUS=${BENCH_CPUS-0}
export SERVER_CPUS=${SERVER_CPUS-1}
# (1) idle connections
IDLE_N=${IDLE_N:-10000}
IDLE_N_synapse=${IDLE_N_synapse:-1000}
IDLE_MAX=${IDLE_MAX-19000}           # one more idle run, first repeat only ("" to skip)
IDLE_MAX_synapse=${IDLE_MAX_synapse-}
# (2) 1:1 at fixed offered rates
RATES=${RATES:-1000,2000,5000,10000,20000}
RATES_synapse=${RATES_synapse:-10,20,50,100,200}
STEP=${STEP:-5s}
STEP_WARMUP=${STEP_WARMUP:-1s}
# (3) group of 1000
GROUP_MEMBERS=${GROUP_MEMBERS:-1000}
GROUP_SENDERS=${GROUP_SENDERS:-10}
GROUP_RATES=${GROUP_RATES:-"20 200"}
GROUP_RATES_synapse=${GROUP_RATES_synapse:-"2 20"}
GROUP_DURATION=${GROUP_DURATION:-10s}
# (4) reconnect storm
STORM_N=${STORM_N:-10000}
STORM_N_synapse=${STORM_N_synapse:-900}
STORM_CHAT=${STORM_CHAT:-10}
STORM_MISSED=${STORM_MISSED:-5}
STORM_CONCURRENCY=${STORM_CONCURRENCY:-1000}
# extra chat-bench options per system (Synapse answers a thousand first /syncs slowly)
EXTRA=${EXTRA:-}
EXTRA_synapse=${EXTRA_synapse:---connect-timeout 120s}
UPDATE_DOCS=${UPDATE_DOCS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}

mkdir -p "$OUT/raw" "$OUT/logs"
exec > >(tee -a "$OUT/run.log") 2>&1
. "$HERE/systems.sh"
trap 'stop_system' EXIT
started_at=$(date +%s)
echo "peers benchmark -> $OUT ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"

"$HERE/install.sh"
if [[ "$SKIP_BUILD" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -q -p chat-server -p chat-bench)
fi
CB=${CB:-$BIN/chat-bench}
dirty=$(git -C "$ROOT" status --porcelain -- chat-server chat-bench | head -1)
TERN_VERSION="tern $(git -C "$ROOT" rev-parse --short HEAD)${dirty:+ (+ uncommitted changes)}"

per() { # VAR system -> ${VAR_system:-$VAR}
  local v="${1}_${2}"
  if [[ -n "${!v+x}" ]]; then echo "${!v}"; else echo "${!1}"; fi
}

record() { # rep workload system variant json ok started
  python3 - "$@" <<'PY' >>"$OUT/runs.jsonl"
import json, os, sys
rep, workload, system, variant, path, ok, t0 = sys.argv[1:8]
print(json.dumps({
    "rep": int(rep), "workload": workload, "system": system, "variant": variant,
    "json": os.path.basename(path), "ok": ok == "0",
    "version": os.environ["VERSION"], "settings": os.environ["SETTINGS"], "acks": os.environ["ACKS"],
    "load_before": float(os.environ["LOAD_BEFORE"]), "load_after": float(open("/proc/loadavg").read().split()[0]),
    "seconds": round(float(os.environ["NOW"]) - float(t0), 1),
}))
PY
}

bench() { # rep workload system variant limit_s args...
  local rep=$1 workload=$2 system=$3 variant=$4 limit=$5; shift 5
  local name="$rep-$workload-$variant-$system"
  local json="$OUT/raw/$name.json" t0 rc=0
  t0=$(date +%s.%N)
  export LOAD_BEFORE VERSION SETTINGS ACKS
  LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
  echo "== $name: chat-bench $* (load $LOAD_BEFORE)"
  local extra; read -r -a extra <<<"$(per EXTRA "$system")"
  timeout --kill-after=10 "$limit" "${BENCH_PIN[@]}" "$CB" "$@" "${extra[@]}" --url "$URL" --system "$SYSTEM" \
    --jwt-secret "$SECRET" --json >"$json" 2>"$OUT/logs/$name.progress" || rc=$?
  [[ $rc == 0 ]] || { echo "   failed (exit $rc): $(tail -3 "$OUT/logs/$name.progress" | tr '\n' ' ')"; }
  NOW=$(date +%s.%N) record "$rep" "$workload" "$system" "$variant" "$json" "$rc" "$t0"
}

# Every workload uses the same user ids (from 1000001 up): Synapse registers each user once per
# run.sh invocation (registration is slow), and the other systems do not care.
run_workload() { # rep workload system
  local rep=$1 w=$2 s=$3
  case $w in
    idle)
      local sizes n
      sizes=$(per IDLE_N "$s")
      [[ $rep == 1 && -n "$(per IDLE_MAX "$s")" ]] && sizes="$sizes $(per IDLE_MAX "$s")"
      for n in $sizes; do
        "start_$s" || { echo "   $s did not start"; stop_system; return; }
        bench "$rep" idle "$s" "$n" 600 connect -n "$n" --hold 3s --settle 3s --concurrency 128 \
          --source-ips 127.0.0.2-127.0.0.9 --server-pid "$PIDS"
        stop_system
      done ;;
    sweep)
      "start_$s" || { echo "   $s did not start"; stop_system; return; }
      bench "$rep" sweep "$s" rates 900 sweep --rates "$(per RATES "$s")" --duration "$STEP" \
        --warmup "$STEP_WARMUP" --pause 1s --drain-timeout 5s --p99-limit-ms 50 --keep-going
      stop_system ;;
    group)
      local r
      "start_$s" || { echo "   $s did not start"; stop_system; return; }
      for r in $(per GROUP_RATES "$s"); do
        bench "$rep" group "$s" "$r" 600 group --members "$GROUP_MEMBERS" --senders "$GROUP_SENDERS" \
          --rate "$r" --duration "$GROUP_DURATION" --warmup 2s --drain-timeout 10s
      done
      stop_system ;;
    storm)
      "start_$s" || { echo "   $s did not start"; stop_system; return; }
      bench "$rep" storm "$s" "$(per STORM_N "$s")" 900 storm -n "$(per STORM_N "$s")" \
        --chat-size "$STORM_CHAT" --missed "$STORM_MISSED" --concurrency "$STORM_CONCURRENCY" \
        --catch-up-timeout 60s
      stop_system ;;
  esac
}

read -r -a systems <<<"$SYSTEMS"
for rep in $(seq "$REPEAT"); do
  for w in $WORKLOADS; do
    # Rotate the order every repeat and workload: no system always runs first or last.
    k=$(( (rep - 1 + $(echo "$WORKLOADS" | tr ' ' '\n' | grep -n "^$w$" | cut -d: -f1)) % ${#systems[@]} ))
    for i in $(seq 0 $(( ${#systems[@]} - 1 ))); do
      s=${systems[$(( (i + k) % ${#systems[@]} ))]}
      run_workload "$rep" "$w" "$s"
    done
  done
done
stop_system
trap - EXIT
took=$(( $(date +%s) - started_at ))
echo "all runs done in $((took / 60)) min $((took % 60)) s"
args=("$OUT" --took "$took")
[[ "$UPDATE_DOCS" == 1 ]] && args+=(--docs "$ROOT/docs/benchmarks.md" --img-dir "$ROOT/docs/img")
python3 "$HERE/report.py" "${args[@]}"
echo "results in $OUT (results.md, results.csv, *.svg)"
