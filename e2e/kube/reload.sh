#!/usr/bin/env bash
# Put the working tree's chat-server and tern-operator into the running node, for iterating
# on a change without the whole suite:
#
#   e2e/kube/reload.sh            rebuild the debug binaries, rebuild + import the two images,
#                                 apply the CRD, restart the operator Deployment
#
# Needs the node and the operator release of `e2e/kube/run.sh --keep` (or e2e/kube/up.sh).
# Chat-server pods pick up the new image when they are next created (same tag,
# imagePullPolicy IfNotPresent): delete them, or change the ChatCluster.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
case "${1:-}" in -h | --help) sed -n '2,10p' "$0"; exit 0 ;; esac
export TERN_CACHE=${TERN_CACHE:-$HOME/.cache/tern}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TERN_CACHE/target}
eval "$(e2e/env/env.sh)"
cargo test --workspace --no-run --quiet
e2e/env/images/build.sh --import chat-server operator
kubectl apply --server-side --force-conflicts -f crds/chatcluster.yaml >/dev/null
kubectl -n tern-system rollout restart deploy/tern-operator
kubectl -n tern-system rollout status deploy/tern-operator --timeout=120s
