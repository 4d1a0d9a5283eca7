#!/usr/bin/env bash
# kube-apiserver on etcd, kubectl and helm, all built from their Go modules into
# $TERN_CACHE/bin (the same build also makes the node's commands: kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy — see KUBE_COMMANDS in lib.sh).
#
# Two modes, chosen by the file run/kube/mode (written by services/node.sh):
#  bare (default; envtest style: no kubelet, no controllers): bound to 127.0.0.1, admission
#    = the defaults minus ServiceAccount (no token controller creates `default` SAs) and
#    StorageObjectInUseProtection (its finalizers would keep deleted PVCs/PVs Terminating for
#    ever: the controller that removes them is not running).
#  node (`e2e/env/up.sh node`): advertises the node's address (the default route's interface,
#    192.0.2.2 on these VMs) so the `kubernetes` Service gets endpoints, listens on all
#    addresses (node.sh drops port 16443 arriving on the uplink), all default admission
#    plugins + NodeRestriction, authorization Node,RBAC, a client certificate for kubelets.
# `start` restarts a running API server whose mode differs from run/kube/mode.
# Secure port 16443; admin token in group system:masters; kubeconfig at
# $TERN_CACHE/run/kube/kubeconfig (https://127.0.0.1:16443 in both modes). Starts etcd first.
set -euo pipefail
# shellcheck source=lib.sh disable=SC2034 # SVC_* are read by lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
svc_init kube
SVC_PORTS="$KUBE_SECURE_PORT"
SVC_LOG="$LOG_DIR/kube-apiserver.log"
KUBE_BUILD="$TERN_PKG/kube-$KUBERNETES_VERSION"
HELM_BUILD="$TERN_PKG/helm-$HELM_VERSION"
PKI_DIR="$RUN_DIR/pki"
KUBECONFIG_FILE="$RUN_DIR/kubeconfig"
MODE_FILE="$RUN_DIR/mode"                 # desired mode: "node" or absent (bare)
MODE_RUNNING_FILE="$RUN_DIR/mode.running" # the mode the running API server was started in

wanted_mode() { if [[ "$(cat "$MODE_FILE" 2>/dev/null)" == node ]]; then echo node; else echo bare; fi; }
running_mode() { cat "$MODE_RUNNING_FILE" 2>/dev/null || echo bare; }

do_install() {
	with_lock kube-install _install_kube
	with_lock helm-install _install_helm
}

_install_kube() {
	go_env
	local key
	key="k8s:$KUBERNETES_VERSION staging:$KUBERNETES_STAGING_VERSION cmds:${KUBE_COMMANDS// /,} $(go env GOVERSION)"
	local cmd have=1
	for cmd in $KUBE_COMMANDS; do [[ -x "$TERN_BIN/$cmd" ]] || have=0; done
	stamp_ok "$KUBE_BUILD" "$key" && ((have)) && return 0
	local t0
	t0="$(now_s)"
	log "building $KUBE_COMMANDS $KUBERNETES_VERSION from k8s.io/kubernetes (first time: ~15-25 min on 2 cores, nice 10; the node binaries ~2 min more once the apiserver is built)"
	mkdir -p "$KUBE_BUILD"
	heartbeat_start "building $KUBE_COMMANDS"
	(
		cd "$KUBE_BUILD"
		: >build.log
		local kmod
		kmod="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
		[[ -f "$kmod" ]] || {
			echo "cannot download k8s.io/kubernetes@$KUBERNETES_VERSION" >>build.log
			exit 1
		}
		# Every staging module k8s.io/kubernetes replaces with ./staging/src/... must be
		# replaced here with its published version (go.mod of the main module wins).
		{
			echo "module tern.local/kube-build"
			echo
			grep -E '^go [0-9]' "$kmod"
			echo
			echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
			echo
			echo "replace ("
			sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\t\1 => \1 '"$KUBERNETES_STAGING_VERSION"'#p' "$kmod"
			echo ")"
		} >go.mod
		echo "replace lines: $(grep -c '=>' go.mod)" >>build.log
		local gets=()
		for cmd in $KUBE_COMMANDS; do gets+=("k8s.io/kubernetes/cmd/$cmd@$KUBERNETES_VERSION"); done
		nice -n 10 go get "${gets[@]}" >>build.log 2>&1
		local minor="${KUBERNETES_VERSION#v1.}"
		minor="${minor%%.*}"
		local ld="-s -w" pkgv
		for pkgv in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			ld+=" -X $pkgv.gitVersion=$KUBERNETES_VERSION -X $pkgv.gitMajor=1 -X $pkgv.gitMinor=$minor"
			ld+=" -X $pkgv.gitTreeState=clean -X $pkgv.buildDate=1970-01-01T00:00:00Z"
		done
		for cmd in $KUBE_COMMANDS; do
			# Already built by an earlier run with the same version (e.g. before the node
			# commands were added): keep it, the stamp below covers the whole set.
			if [[ -x "$TERN_BIN/$cmd" && -f "$KUBE_BUILD/.built-$cmd" && "$(cat "$KUBE_BUILD/.built-$cmd")" == "$KUBERNETES_VERSION $(go env GOVERSION)" ]]; then
				continue
			fi
			echo "== go build $cmd ($(date +%T))" >>build.log
			nice -n 10 go build -trimpath -ldflags "$ld" -o "$TERN_BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" >>build.log 2>&1
			mv "$TERN_BIN/$cmd.tmp" "$TERN_BIN/$cmd"
			printf '%s' "$KUBERNETES_VERSION $(go env GOVERSION)" >"$KUBE_BUILD/.built-$cmd"
		done
	) || {
		heartbeat_stop
		log_tail "$KUBE_BUILD/build.log" 40
		die "building $KUBE_COMMANDS failed (log: $KUBE_BUILD/build.log)"
	}
	heartbeat_stop
	stamp_set "$KUBE_BUILD" "$key"
	log "$KUBE_COMMANDS built in $(elapsed_since "$t0")s"
}

_install_helm() {
	go_env
	local key
	key="helm:$HELM_VERSION $(go env GOVERSION)"
	stamp_ok "$HELM_BUILD" "$key" && [[ -x "$TERN_BIN/helm" ]] && return 0
	local t0
	t0="$(now_s)"
	log "building helm $HELM_VERSION from helm.sh/helm/v3 (first time: ~3-6 min)"
	GO_LDFLAGS_EXTRA="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
		go_build_module "$HELM_BUILD" "helm.sh/helm/v3@$HELM_VERSION" "$TERN_BIN/helm" helm.sh/helm/v3/cmd/helm
	stamp_set "$HELM_BUILD" "$key"
	log "helm built in $(elapsed_since "$t0")s: $("$TERN_BIN/helm" version --short 2>/dev/null || true)"
}


# issue_serving_cert SANS: the API server's serving key and certificate, signed by the CA in
# the current directory, for the subjectAltName list SANS.
issue_serving_cert() {
	openssl req -newkey rsa:2048 -nodes -sha256 -keyout apiserver.key -out apiserver.csr \
		-subj "/CN=kube-apiserver" 2>/dev/null
	cat >apiserver.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$1
EXT
	openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
		-days 3650 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
	rm -f apiserver.csr
}

# PKI, tokens and kubeconfig: generated once per run dir (kept across restarts so clients'
# kubeconfigs stay valid); `down.sh --wipe kube` regenerates them.
ensure_pki() {
	need_cmd openssl
	mkdir -p "$PKI_DIR"
	chmod 700 "$PKI_DIR"
	if [[ ! -s "$PKI_DIR/ca.crt" ]]; then
		log "generating CA, serving certificate and service-account key (openssl)"
		(
			cd "$PKI_DIR"
			openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
				-keyout ca.key -out ca.crt -subj "/CN=tern-e2e-ca" 2>/dev/null
			issue_serving_cert "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
			openssl genrsa -out sa.key 2048 2>/dev/null
			openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
		)
	fi
	if [[ "$(wanted_mode)" == node ]]; then
		local ip
		ip="$(host_node_ip)" || die "no IPv4 address on the default route's interface"
		# The serving certificate must name the advertised address (pods reach the API server
		# through the `kubernetes` Service, whose endpoint is that address).
		if ! openssl x509 -in "$PKI_DIR/apiserver.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$ip\(,\|$\)"; then
			log "serving certificate lacks IP:$ip: regenerating it (same CA)"
			(
				cd "$PKI_DIR"
				issue_serving_cert "IP:127.0.0.1,IP:$KUBE_SERVICE_APISERVER_IP,IP:$ip,DNS:localhost,DNS:$KUBE_NODE_NAME,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
			)
		fi
		# The API server's client certificate for kubelets (logs, exec, port-forward).
		if ! openssl verify -CAfile "$PKI_DIR/ca.crt" "$PKI_DIR/apiserver-kubelet-client.crt" >/dev/null 2>&1; then
			(
				cd "$PKI_DIR"
				openssl req -newkey rsa:2048 -nodes -sha256 -keyout apiserver-kubelet-client.key \
					-out apiserver-kubelet-client.csr -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
				printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >client.ext
				openssl x509 -req -in apiserver-kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
					-days 3650 -extfile client.ext -out apiserver-kubelet-client.crt 2>/dev/null
				rm -f apiserver-kubelet-client.csr
			)
		fi
	fi
	if [[ ! -s "$PKI_DIR/admin.token" ]]; then
		openssl rand -hex 24 >"$PKI_DIR/admin.token"
	fi
	local token
	token="$(cat "$PKI_DIR/admin.token")"
	# token,user,uid,"groups" — system:masters is always allowed (privileged-group authorizer).
	printf '%s,tern-admin,tern-admin,"system:masters"\n' "$token" >"$PKI_DIR/tokens.csv"
	cat >"$KUBECONFIG_FILE.tmp" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: tern-e2e
  cluster:
    server: https://127.0.0.1:$KUBE_SECURE_PORT
    certificate-authority-data: $(base64 -w0 "$PKI_DIR/ca.crt")
users:
- name: tern-admin
  user:
    token: $token
contexts:
- name: tern-e2e
  context:
    cluster: tern-e2e
    user: tern-admin
    namespace: default
current-context: tern-e2e
KCFG
	chmod 600 "$KUBECONFIG_FILE.tmp"
	mv "$KUBECONFIG_FILE.tmp" "$KUBECONFIG_FILE"
}

do_launch() {
	"$E2E_ENV_DIR/services/etcd.sh" start
	SVC=kube
	ensure_pki
	local mode mode_args=()
	mode="$(wanted_mode)"
	# shellcheck disable=SC2054 # commas inside flag values (Node,RBAC)
	if [[ "$mode" == node ]]; then
		mode_args=(
			--bind-address=0.0.0.0
			--advertise-address="$(host_node_ip)"
			--authorization-mode=Node,RBAC
			--enable-admission-plugins=NodeRestriction
			--kubelet-client-certificate="$PKI_DIR/apiserver-kubelet-client.crt"
			--kubelet-client-key="$PKI_DIR/apiserver-kubelet-client.key"
		)
	else
		mode_args=(
			--bind-address=127.0.0.1
			--advertise-address=127.0.0.1
			--authorization-mode=RBAC
			--disable-admission-plugins=ServiceAccount,StorageObjectInUseProtection
		)
	fi
	log "mode: $mode"
	echo "$mode" >"$MODE_RUNNING_FILE"
	start_daemon "$SVC_LOG" "$TERN_BIN/kube-apiserver" \
		--etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--etcd-prefix=/registry \
		"${mode_args[@]}" \
		--secure-port="$KUBE_SECURE_PORT" \
		--tls-cert-file="$PKI_DIR/apiserver.crt" \
		--tls-private-key-file="$PKI_DIR/apiserver.key" \
		--client-ca-file="$PKI_DIR/ca.crt" \
		--token-auth-file="$PKI_DIR/tokens.csv" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$PKI_DIR/sa.pub" \
		--service-account-signing-key-file="$PKI_DIR/sa.key" \
		--service-cluster-ip-range="$KUBE_SERVICE_CIDR" \
		--allow-privileged=true \
		--profiling=false \
		--v="${TERN_KUBE_VERBOSITY:-1}"
}

# /readyz (all post-start hooks, RBAC bootstrap included) plus a real authenticated GET.
do_health() {
	local token
	token="$(cat "$PKI_DIR/admin.token")"
	[[ "$(curl -fsS --max-time 5 --cacert "$PKI_DIR/ca.crt" -H "Authorization: Bearer $token" \
		"https://127.0.0.1:$KUBE_SECURE_PORT/readyz")" == ok ]] &&
		curl -fsS --max-time 5 --cacert "$PKI_DIR/ca.crt" -H "Authorization: Bearer $token" \
			"https://127.0.0.1:$KUBE_SECURE_PORT/api/v1/namespaces/default" | grep -q '"phase": *"Active"'
}

do_info() {
	local token
	token="$(cat "$PKI_DIR/admin.token")"
	local v
	v="$(curl -fsS --max-time 5 --cacert "$PKI_DIR/ca.crt" -H "Authorization: Bearer $token" \
		"https://127.0.0.1:$KUBE_SECURE_PORT/version" | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')"
	echo "kube-apiserver $v, $(running_mode) mode, kubeconfig $KUBECONFIG_FILE"
}

# An API server running in the other mode is restarted by `start`.
if [[ "${1:-}" == start ]] && is_running && [[ "$(running_mode)" != "$(wanted_mode)" ]]; then
	log "running in $(running_mode) mode, wanted $(wanted_mode): restarting"
	stop_pidfile "$PID_FILE" 60
fi

svc_main "$@"
