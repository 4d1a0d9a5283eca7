#!/usr/bin/env bash
# Operator CI: bring up etcd + kube-apiserver (e2e/env, cached builds), then check and test
# the tern-operator crate against them. Run from anywhere:
#
#   e2e/operator/ci.sh            # everything below; leaves etcd + kube running
#   e2e/operator/ci.sh --down     # same, then stop etcd + kube
#
# Steps: fmt, clippy -D warnings, chat-server build (the autoscaling test runs it), unit tests,
# CRD drift (crds/ and the chart's copy), helm lint --strict, and the e2e suite on the real API
# server with TERN_REQUIRE_KUBE=1 (a missing API server, helm or chat-server binary fails
# instead of skipping). Target dir: $CARGO_TARGET_DIR, default ~/.cache/tern/target-op.
# TERN_CHAT_SERVER_BIN=path skips the chat-server build and uses that binary.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
DOWN=0
for a in "$@"; do
  case "$a" in
    --down) DOWN=1 ;;
    *) echo "usage: $0 [--down]" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tern/target-op}
START=$(date +%s)
step() { printf '\n== [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

step "etcd + kube-apiserver (bare: a running node is stopped first)"
# This suite plays the controllers itself (Job status, Deployment status); a live kubelet and
# controller-manager would fight it, and it refuses to run next to one. `down.sh node` is a
# no-op when no node runs, and otherwise puts the API server back in bare mode.
e2e/env/down.sh node
e2e/env/up.sh etcd kube
eval "$(e2e/env/env.sh)"
kubectl version >/dev/null
helm version --short

step "free cluster IPs left by earlier failed runs (Services in e2e-* namespaces)"
# No namespace controller runs here, so namespaces of old tests never go away; their Services
# would exhaust the API server's small service range. Passing tests delete their own.
kubectl get svc -A --no-headers 2>/dev/null | awk '$1 ~ /^e2e-/ {print $1, $2}' |
  while read -r ns name; do kubectl delete svc -n "$ns" "$name" --wait=false >/dev/null; done

step "cargo fmt --check (tern-operator)"
cargo fmt -p tern-operator --check

step "cargo clippy -D warnings (tern-operator)"
cargo clippy -p tern-operator --all-targets -- -D warnings

if [ -n "${TERN_CHAT_SERVER_BIN:-}" ] && [ -x "$TERN_CHAT_SERVER_BIN" ]; then
  step "using chat-server $TERN_CHAT_SERVER_BIN (TERN_CHAT_SERVER_BIN)"
else
  step "build chat-server (edge processes for the autoscaling test)"
  cargo build -p chat-server
  export TERN_CHAT_SERVER_BIN="$CARGO_TARGET_DIR/debug/chat-server"
fi

step "unit tests + CRD drift check"
cargo test -p tern-operator --lib --bins --test crd_drift

step "helm lint --strict"
helm lint --strict charts/tern-operator

step "operator e2e suite against the real kube-apiserver"
TERN_REQUIRE_KUBE=1 cargo test -p tern-operator --test e2e -- --test-threads 4

if [ "$DOWN" = 1 ]; then
  step "stopping etcd + kube"
  e2e/env/down.sh kube etcd
fi
step "operator CI passed"
