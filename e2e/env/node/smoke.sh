#!/usr/bin/env bash
# shellcheck disable=SC2015 # `check && ok … || bad …`: ok never fails
# Smoke test of the e2e Kubernetes node (after `e2e/env/up.sh node`): a pod runs, a 2-replica
# Deployment becomes available, its ClusterIP answers from the host and from a pod, a NodePort
# answers on 127.0.0.1, a pod resolves Service and headless pod names through CoreDNS, a PVC
# binds and a pod writes to it, a pod gets a ServiceAccount token and reaches the API server
# through the `kubernetes` Service. Only loopback and this machine's pod/Service addresses are
# contacted. Uses namespace tern-node-smoke (deleted at the end; KEEP=1 keeps it).
set -euo pipefail
E2E_ENV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../lib.sh
. "$E2E_ENV_DIR/lib.sh"
SVC=smoke
NS=tern-node-smoke
k() { "$TERN_BIN/kubectl" --kubeconfig "$TERN_RUN/kube/kubeconfig" "$@"; }
kn() { k -n "$NS" "$@"; }
pass=0
fail=0
ok() {
	log "PASS: $*"
	pass=$((pass + 1))
}
bad() {
	log "FAIL: $*"
	fail=$((fail + 1))
}
T0=$SECONDS

if k get ns "$NS" >/dev/null 2>&1; then
	k delete ns "$NS" --wait=true --timeout=120s >/dev/null
fi
k create ns "$NS" >/dev/null
kn apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ConfigMap
metadata: {name: www}
data:
  index.html: "hello from tern-node"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: $NODE_BUSYBOX_IMAGE
        imagePullPolicy: Never
        command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
        volumeMounts: [{name: www, mountPath: /www}]
      volumes: [{name: www, configMap: {name: www}}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 9000}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: db
        image: $NODE_BUSYBOX_IMAGE
        imagePullPolicy: Never
        command: ["sh", "-c", "date > /data/written-by-db && sleep 100000"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: media}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 2Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: sh
    image: $NODE_BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["sh", "-c", "echo written-by-client > /media/hello && sleep 100000"]
    volumeMounts: [{name: media, mountPath: /media}]
  volumes: [{name: media, persistentVolumeClaim: {claimName: media}}]
YAML

t=$SECONDS
if kn wait --for=condition=Ready pod/client --timeout=60s >/dev/null; then ok "pod client Ready ($((SECONDS - t)) s)"; else bad "pod client not Ready"; fi
t=$SECONDS
if kn rollout status deploy/web --timeout=60s >/dev/null; then ok "deployment web 2/2 available ($((SECONDS - t)) s)"; else bad "deployment web not available"; fi

ip="$(kn get svc web -o jsonpath='{.spec.clusterIP}')"
np="$(kn get svc web-np -o jsonpath='{.spec.ports[0].nodePort}')"
body=""
for _ in $(seq 1 20); do
	body="$(curl -fsS --max-time 3 "http://$ip/" 2>/dev/null)" && break
	sleep 0.5
done
[[ "$body" == "hello from tern-node" ]] && ok "ClusterIP $ip:80 from the host" || bad "ClusterIP $ip from the host: '$body'"
body="$(curl -fsS --max-time 3 "http://127.0.0.1:$np/" 2>/dev/null || true)"
[[ "$body" == "hello from tern-node" ]] && ok "NodePort 127.0.0.1:$np" || bad "NodePort 127.0.0.1:$np: '$body'"
# busybox wget segfaults (Debian's static build): plain HTTP over nc
body="$(kn exec client -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $ip 80" 2>&1 | tail -1 || true)"
[[ "$body" == "hello from tern-node" ]] && ok "ClusterIP from a pod" || bad "ClusterIP from a pod: '$body'"
body="$(kn exec client -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 web.$NS.svc.cluster.local 80" 2>&1 | tail -1 || true)"
[[ "$body" == "hello from tern-node" ]] && ok "web.$NS.svc.cluster.local from a pod (DNS + ClusterIP)" || bad "Service name from a pod: '$body'"
out="$(kn exec client -- nslookup "web.$NS.svc.cluster.local" 2>&1 || true)"
[[ "$out" == *"Address: $ip"* ]] && ok "nslookup web.$NS.svc.cluster.local = $ip" || bad "nslookup: $out"
out="$(kn exec client -- nslookup kubernetes.default.svc.cluster.local 2>&1 || true)"
[[ "$out" == *"Address: $KUBE_SERVICE_APISERVER_IP"* ]] && ok "nslookup kubernetes.default.svc.cluster.local = $KUBE_SERVICE_APISERVER_IP" || bad "nslookup kubernetes.default.svc.cluster.local: $out"
# short name through the pod's search path (resolv.conf: <ns>.svc.cluster.local …, ndots:5)
body="$(kn exec client -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 web 80" 2>&1 | tail -1 || true)"
[[ "$body" == "hello from tern-node" ]] && ok "short name 'web' from a pod (search path)" || bad "short name from a pod: '$body'"

t=$SECONDS
if kn rollout status sts/db --timeout=90s >/dev/null; then ok "statefulset db with a 1Gi volumeClaimTemplate ready ($((SECONDS - t)) s)"; else bad "statefulset db not ready"; fi
podip="$(kn get pod db-0 -o jsonpath='{.status.podIP}')"
out="$(kn exec client -- nslookup "db-0.db.$NS.svc.cluster.local" 2>&1 || true)"
[[ -n "$podip" && "$out" == *"Address: $podip"* ]] && ok "headless pod name db-0.db.$NS.svc.cluster.local = $podip" || bad "headless name: $out"
for pvc in media data-db-0; do
	ph="$(kn get pvc "$pvc" -o jsonpath='{.status.phase} {.spec.volumeName} {.spec.storageClassName}')"
	[[ "$ph" == Bound* ]] && ok "PVC $pvc: $ph" || bad "PVC $pvc: $ph"
done
out="$(kn exec client -- cat /media/hello 2>&1 || true)"
[[ "$out" == written-by-client ]] && ok "pod wrote to its PVC" || bad "PVC write: $out"
pv="$(kn get pvc media -o jsonpath='{.spec.volumeName}')"
hp="$(k get pv "$pv" -o jsonpath='{.spec.hostPath.path}')"
[[ "$(cat "$hp/hello" 2>/dev/null)" == written-by-client ]] && ok "the write is on the host in $hp" || bad "no file in $hp"

# ServiceAccount token + the kubernetes Service (what an operator pod needs)
out="$(kn exec client -- sh -c 'test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo token' 2>&1 || true)"
[[ "$out" == token ]] && ok "pod has a ServiceAccount token" || bad "no ServiceAccount token: $out"
out="$(kn exec client -- sh -c 'echo | nc -w 3 kubernetes.default.svc 443 && echo connected' 2>&1 | tail -1 || true)"
[[ "$out" == connected ]] && ok "pod reaches the API server via kubernetes.default.svc:443" || bad "kubernetes.default.svc:443: $out"
ep="$(k get endpointslice -n default -l kubernetes.io/service-name=kubernetes -o jsonpath='{.items[0].endpoints[0].addresses[0]}')"
[[ -n "$ep" ]] && ok "Service kubernetes has endpoint $ep" || bad "Service kubernetes has no endpoints"

# isolation: a pod cannot reach the VM's resolver (dropped between the pod bridge and the uplink)
out="$(kn exec client -- sh -c 'nslookup -timeout=2 example.com 2>&1; true' 2>&1 | tail -2 | tr '\n' ' ')"
[[ "$out" != *"Address: "*[0-9]* || "$out" == *"can't"* ]] && ok "no answers for names outside the cluster (no forward plugin)" || bad "external name resolved: $out"

if [[ "${KEEP:-0}" != 1 ]]; then
	k delete ns "$NS" --wait=false >/dev/null
fi
log "$pass passed, $fail failed in $((SECONDS - T0)) s"
echo "$pass passed, $fail failed"
((fail == 0))
