#!/usr/bin/env bash
# The ChatCluster on a real Kubernetes node, end to end — what a platform engineer does first:
#
#   e2e/kube/run.sh            node up, images built + imported, `helm install` the operator,
#                              then operator/tests/node.rs (apply a ChatCluster, clients,
#                              force-deleted pods, delete + garbage collection), then the
#                              other real-node suites (node_specs, node_edge: bad specs, edge
#                              TLS and metrics) and operator/tests/node_day2.rs (upgrade,
#                              rollback, held broken upgrade, autoscaling, dependency
#                              restarts, leadership — all under streaming clients)
#   e2e/kube/run.sh --keep     leave the operator release and the test namespace in place
#
# Brings up what it needs through e2e/env (`up.sh node` starts etcd, kube-apiserver in node
# mode, controller-manager, scheduler, containerd, kubelet, kube-proxy, CoreDNS, storage), and
# builds the images with e2e/env/images (docs/images.md). Every failure prints the pods, the
# events and the pod logs needed to understand it. Cached: a second run spends its time in the
# test itself (docs/e2e-environment.md has the timings).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
KEEP=0
for a in "$@"; do
  case "$a" in
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
  esac
done

export TERN_CACHE=${TERN_CACHE:-$HOME/.cache/tern}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TERN_CACHE/target}
NS=${TERN_KUBE_NS:-tern-e2e}
OPNS=tern-system
START=$(date +%s)
step() { printf '\n== [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

# dump: what a failure needs to be understood — pods, events, logs (and previous logs of
# restarted containers) of the test and operator namespaces.
dump() {
  set +e
  echo
  echo "==================== diagnostics ===================="
  kubectl get nodes -o wide
  kubectl get chatclusters -A -o wide
  kubectl get all,pvc,jobs -n "$NS" -o wide
  kubectl get pv -o wide
  kubectl get pods -n "$OPNS" -o wide
  for ns in "$NS" "$OPNS" kube-system $(kubectl get ns -o name 2>/dev/null | sed -n 's#^namespace/\(e2e-.*\)#\1#p'); do
    echo "---- events in $ns"
    kubectl get events -n "$ns" --sort-by=.lastTimestamp 2>/dev/null | tail -60
  done
  for ns in "$NS" "$OPNS" $(kubectl get ns -o name 2>/dev/null | sed -n 's#^namespace/\(e2e-.*\)#\1#p'); do
    for p in $(kubectl get pods -n "$ns" -o name 2>/dev/null); do
      echo "---- logs $ns/$p"
      kubectl logs -n "$ns" "$p" --all-containers --tail=120 2>&1
      if kubectl get -n "$ns" "$p" -o jsonpath='{.status.containerStatuses[*].restartCount}' 2>/dev/null | grep -q '[1-9]'; then
        echo "---- previous logs $ns/$p"
        kubectl logs -n "$ns" "$p" --all-containers --previous --tail=80 2>&1
      fi
      if ! kubectl get -n "$ns" "$p" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; then
        kubectl describe -n "$ns" "$p" 2>&1 | tail -40
      fi
    done
  done
  echo "---- node: kubelet log tail"
  tail -40 "$TERN_CACHE/run/node/log/kubelet.log" 2>/dev/null
  echo "====================================================="
}

step "clean up what an earlier run or the bare-API-server suite left"
# The bare-API-server suite (e2e/operator) leaves namespaces with ChatClusters, Deployments and
# StatefulSets behind (nothing deletes them there). Marking them for deletion before the node's
# controllers start means none of them ever gets a pod: the namespace controller empties them,
# and admission refuses new pods in a terminating namespace.
e2e/env/up.sh etcd kube
eval "$(e2e/env/env.sh)"
helm uninstall tern-operator -n "$OPNS" >/dev/null 2>&1 || true
for ns in $(kubectl get ns -o name | sed -n 's#^namespace/\(e2e-.*\)#\1#p') "$NS"; do
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
done

step "real node (e2e/env/up.sh node)"
e2e/env/up.sh node
kubectl wait --for=delete namespace/"$NS" --timeout=180s >/dev/null 2>&1 || true
kubectl get nodes -o wide

step "build chat-server and tern-operator (debug binaries go into the images)"
# The same unit graph as `cargo test --workspace` (a no-op after it): building only the two
# binaries would unify features differently and recompile half the dependency tree.
cargo test --workspace --no-run

step "images: build from docker/*.Dockerfile and e2e/env/images, import into the node's containerd"
e2e/env/images/build.sh --import

# The bare-API-server suite installs the CRD with server-side apply; hand it to the Helm
# release (Helm's documented adoption: its ownership label and annotations).
if kubectl get crd chatclusters.chat.tern.dev >/dev/null 2>&1; then
  kubectl label crd chatclusters.chat.tern.dev app.kubernetes.io/managed-by=Helm --overwrite >/dev/null
  kubectl annotate crd chatclusters.chat.tern.dev meta.helm.sh/release-name=tern-operator \
    meta.helm.sh/release-namespace="$OPNS" --overwrite >/dev/null
fi

step "helm install the operator chart (the operator runs as a pod under the chart's RBAC)"
trap 'rc=$?; if [ $rc -ne 0 ]; then dump; fi' EXIT
helm upgrade --install tern-operator charts/tern-operator -n "$OPNS" --create-namespace \
  --wait --timeout 180s
kubectl -n "$OPNS" get pods -o wide
sa=$(kubectl -n "$OPNS" get pods -l app.kubernetes.io/name=tern-operator -o jsonpath='{.items[0].spec.serviceAccountName}')
echo "operator pod runs as ServiceAccount $sa"

step "the suite: operator/tests/node.rs"
TERN_KUBE_NODE=1 TERN_KUBE_NS="$NS" cargo test -p tern-operator --test node -- --nocapture

for t in node_specs node_edge; do
  if [ -f "operator/tests/$t.rs" ]; then
    step "the suite: operator/tests/$t.rs"
    TERN_KUBE_NODE=1 cargo test -p tern-operator --test "$t" -- --nocapture
  fi
done

step "operator pod: still no restarts and no errors after every suite"
restarts=$(kubectl -n "$OPNS" get pods -l app.kubernetes.io/name=tern-operator -o jsonpath='{.items[*].status.containerStatuses[*].restartCount}')
[ "${restarts// /}" = "0" ] || { echo "the operator pod restarted: $restarts"; exit 1; }
if kubectl -n "$OPNS" logs -l app.kubernetes.io/name=tern-operator --tail=-1 | grep -E ' ERROR |panicked'; then
  echo "the operator logged errors (above)"
  exit 1
fi

# Last: it scales the operator to two replicas and makes the leader exit on purpose.
step "day-2 operations: operator/tests/node_day2.rs"
TERN_KUBE_NODE=1 cargo test -p tern-operator --test node_day2 -- --nocapture

if [ "$KEEP" = 0 ]; then
  step "clean up (operator release, test namespace)"
  helm uninstall tern-operator -n "$OPNS" --wait || true
  kubectl delete namespace "$NS" --wait=false || true
fi
step "real-node suite passed"
