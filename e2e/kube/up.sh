#!/usr/bin/env bash
# A Ready Kubernetes node with a Ready ChatCluster on this machine, in one command:
#
#   e2e/kube/up.sh              node (e2e/env/up.sh node), images, operator chart, ChatCluster
#   e2e/kube/up.sh --down       delete the ChatCluster and the operator release, stop the node
#
# The ChatCluster is e2e/kube/chatcluster.yaml (managed Kafka, Cassandra and Redis, 2 edges,
# NodePort) in namespace `tern` (TERN_DEMO_NS). At the end it prints the web client's URL on
# 127.0.0.1 and how to mint a token. First run on a fresh machine: ~35 min (Kubernetes is
# built from source once); afterwards ~4 min, most of it Cassandra starting in its pod.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export TERN_CACHE=${TERN_CACHE:-$HOME/.cache/tern}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TERN_CACHE/target}
NS=${TERN_DEMO_NS:-tern}
START=$(date +%s)
step() { printf '\n== [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

case "${1:-}" in
  --down)
    eval "$(e2e/env/env.sh)"
    kubectl delete namespace "$NS" --wait=true --timeout=180s || true
    helm uninstall tern-operator -n tern-system --wait || true
    e2e/env/down.sh node
    exit 0
    ;;
  "") ;;
  -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--down]" >&2; exit 2 ;;
esac

step "node"
e2e/env/up.sh node
eval "$(e2e/env/env.sh)"
step "chat-server and tern-operator binaries, then images"
# The same unit graph as `cargo test --workspace` (a no-op after it): building only the two
# binaries would unify features differently and recompile half the dependency tree.
cargo test --workspace --no-run
e2e/env/images/build.sh --import
step "helm install the operator"
helm upgrade --install tern-operator charts/tern-operator -n tern-system --create-namespace --wait --timeout 180s
step "kubectl apply the ChatCluster (namespace $NS)"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n "$NS" -f e2e/kube/chatcluster.yaml
echo "waiting for Ready (Cassandra takes 1-2 min to start on 2 cores)…"
if ! kubectl wait -n "$NS" chatcluster/tern-dev --for=condition=Ready --timeout=600s; then
  kubectl get chatclusters,pods -n "$NS" -o wide
  kubectl get events -n "$NS" --sort-by=.lastTimestamp | tail -30
  exit 1
fi
kubectl get nodes
kubectl get chatclusters,pods -n "$NS" -o wide
port=$(kubectl get svc -n "$NS" tern-dev-edge -o jsonpath='{.spec.ports[0].nodePort}')
step "ready"
cat <<TXT
The edge Service answers on 127.0.0.1:$port (NodePort through kube-proxy):
  web client:  http://127.0.0.1:$port/
  WebSocket:   ws://127.0.0.1:$port/ws?token=<jwt>
A token for user 1 (the cluster's generated secret):
  $CARGO_TARGET_DIR/debug/chat-server token --user 1 \\
    --jwt-secret "\$(kubectl get secret -n $NS tern-dev-jwt -o jsonpath='{.data.secret}' | base64 -d)"
Use kubectl with:  eval "\$(e2e/env/env.sh)"
Tear down:         e2e/kube/up.sh --down
TXT
