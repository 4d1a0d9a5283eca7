#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine (root only):
#   control plane: etcd + kube-apiserver (services/kube.sh, switched to "node" mode) +
#                  kube-controller-manager + kube-scheduler
#   node:          containerd (Debian, our own daemon/root/state/socket) + runc + CNI bridge,
#                  kubelet, kube-proxy (iptables mode)
#   add-ons:       CoreDNS (built from its Go module, own OCI image), Service kube-dns at
#                  $KUBE_CLUSTER_DNS_IP; StorageClass "standard" (default) with static hostPath PVs
# All Kubernetes binaries come from the same k8s.io/kubernetes build as kube-apiserver.
#
# Network safety: the pod range ($KUBE_POD_CIDR) and the Service range ($KUBE_SERVICE_CIDR)
# exist only inside this machine: an `unreachable` route for the pod /16 (the bridge's /24 is
# more specific), the Service range routed to a port-less bridge, pod traffic to/from any other
# interface dropped (mangle FORWARD, ahead of kube-proxy's ACCEPT rules), ipMasq off, NodePorts
# only on 127.0.0.0/8, the API server's port dropped on the uplink. `start` checks the routes
# with `ip route get` and refuses to go on if a pod or Service address would leave via the uplink.
#
# `stop` stops every process by PID, kills the containers, unmounts under run/node, removes
# bridges/routes/iptables rules it added, restores the sysctls and paths it found (saved at the
# first start in run/node/host-state), removes the /etc/hosts line and switches the API server
# back to bare mode (unless TERN_NODE_KEEP_KUBE_MODE=1, which down.sh sets when it stops kube
# too). Cluster objects stay in etcd; `down.sh --wipe node` also deletes run/node (images,
# PV data, logs).
set -euo pipefail
# shellcheck source=lib.sh disable=SC2034 # SVC_* are read by lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
svc_init node
NODE_DIR="$E2E_ENV_DIR/node"
PIDS_DIR="$RUN_DIR/pids"
PKI="$RUN_DIR/pki"
KUBE_PKI="$TERN_RUN/kube/pki"
CTRD_DIR="$RUN_DIR/containerd"
CTRD_SOCK="$CTRD_DIR/containerd.sock"
KUBELET_DIR="$RUN_DIR/kubelet"
CNI_DIR="$RUN_DIR/cni"
PV_DIR="$RUN_DIR/pv"
STATE_DIR="$RUN_DIR/host-state"
IMG_BUILD="$TERN_PKG/node-images"
COREDNS_BUILD="$TERN_PKG/coredns-$COREDNS_VERSION"
POD_BRIDGE="tern-cni0"
SVC_BRIDGE="tern-svc0"
POD_GW="${KUBE_NODE_POD_SUBNET%.*}.1"
HOSTS_TAG="# tern-e2e-node"
PV_COUNT=20
KCTL=("$TERN_BIN/kubectl" --kubeconfig "$TERN_RUN/kube/kubeconfig")
PID_FILE="$PIDS_DIR/kubelet.pid"
mkdir -p "$PIDS_DIR"

# Host state kubelet/kube-proxy/CNI change; saved once at start, restored at stop.
SAVED_SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv6.conf.all.forwarding
net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
net.netfilter.nf_conntrack_tcp_timeout_close_wait"
# Paths they create outside run/node (removed at stop if they were not there before).
HOST_PATHS="/var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /usr/libexec/kubernetes
/run/containerd /opt/containerd /etc/cni/net.d /var/run/netns /run/netns"

need_root() { [[ "$(id -u)" == 0 ]] || die "the node needs root (routes, iptables, mounts, cgroups)"; }

# ---------------------------------------------------------------------------------------
# install: Debian packages, the k8s commands (kube.sh's build), CoreDNS, the images

do_install() {
	need_root
	# shellcheck disable=SC2086 # a list of packages
	apt_install $NODE_APT_PACKAGES
	# apt may enable Debian's own containerd unit; we run our own daemon (no systemd here
	# anyway, but keep the unit disabled where there is one).
	if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled containerd >/dev/null 2>&1; then
		systemctl disable --now containerd >/dev/null 2>&1 || true
	fi
	with_lock coredns-install _install_coredns
	with_lock node-images _install_images
	# kube-apiserver, kubectl, the controller-manager, scheduler, kubelet and kube-proxy
	# (one build of k8s.io/kubernetes; plus helm)
	"$E2E_ENV_DIR/services/kube.sh" install
	SVC=node
}

_install_coredns() {
	go_env
	local key
	key="coredns:$COREDNS_VERSION k8s:$KUBERNETES_STAGING_VERSION $(go env GOVERSION) $(sha256sum <"$NODE_DIR/coredns-main.go" | cut -c1-16)"
	stamp_ok "$COREDNS_BUILD" "$key" && [[ -x "$COREDNS_BUILD/coredns" ]] && return 0
	local t0
	t0="$(now_s)"
	log "building CoreDNS $COREDNS_VERSION (plugins: kubernetes errors health ready cache loadbalance reload log) — first time ~3-6 min"
	mkdir -p "$COREDNS_BUILD"
	heartbeat_start "building coredns"
	(
		cd "$COREDNS_BUILD"
		: >build.log
		cp "$NODE_DIR/coredns-main.go" main.go
		cat >go.mod <<MOD
module tern.local/coredns-build

go 1.24.0

require (
	github.com/coredns/coredns $COREDNS_VERSION
	k8s.io/api $KUBERNETES_STAGING_VERSION
	k8s.io/apimachinery $KUBERNETES_STAGING_VERSION
	k8s.io/client-go $KUBERNETES_STAGING_VERSION
)
MOD
		nice -n 10 go mod tidy >>build.log 2>&1
		nice -n 10 go build -trimpath -ldflags "-s -w" -o coredns.tmp . >>build.log 2>&1
		mv coredns.tmp coredns
	) || {
		heartbeat_stop
		log_tail "$COREDNS_BUILD/build.log" 40
		die "building CoreDNS failed (log: $COREDNS_BUILD/build.log)"
	}
	heartbeat_stop
	stamp_set "$COREDNS_BUILD" "$key"
	log "CoreDNS built in $(elapsed_since "$t0")s: $("$COREDNS_BUILD/coredns" -version | head -1)"
}

# The three images, as OCI archives written by node/oci-image.py.
_install_images() {
	local busybox_ver key
	busybox_ver="$(dpkg-query -W -f='${Version}' busybox-static)"
	key="pause:$NODE_PAUSE_IMAGE $(sha256sum <"$NODE_DIR/pause.c" | cut -c1-12) coredns:$NODE_COREDNS_IMAGE $(stat -c %Y "$COREDNS_BUILD/coredns") busybox:$NODE_BUSYBOX_IMAGE $busybox_ver writer:$(sha256sum <"$NODE_DIR/oci-image.py" | cut -c1-12)"
	stamp_ok "$IMG_BUILD" "$key" && [[ -s "$IMG_BUILD/pause.tar" && -s "$IMG_BUILD/coredns.tar" && -s "$IMG_BUILD/busybox.tar" ]] && return 0
	local t0
	t0="$(now_s)"
	rm -rf "$IMG_BUILD"
	mkdir -p "$IMG_BUILD/busybox-root/etc"
	(
		cd "$IMG_BUILD"
		gcc -static -Os -s -o pause "$NODE_DIR/pause.c"
		python3 "$NODE_DIR/oci-image.py" --name "$NODE_PAUSE_IMAGE" --out pause.tar \
			--file pause:/pause:0755 --entrypoint /pause >digests.txt
		python3 "$NODE_DIR/oci-image.py" --name "$NODE_COREDNS_IMAGE" --out coredns.tar \
			--file "$COREDNS_BUILD/coredns:/coredns:0755" --dir /tmp:1777 --entrypoint /coredns >>digests.txt
		printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >busybox-root/etc/passwd
		printf 'root:x:0:\nnogroup:x:65534:\n' >busybox-root/etc/group
		local args=(--file /bin/busybox:/bin/busybox:0755 --file busybox-root/etc/passwd:/etc/passwd:0644
			--file busybox-root/etc/group:/etc/group:0644 --dir /tmp:1777 --dir /root:0700 --dir /var --dir /proc --dir /sys --dir /dev)
		local app
		for app in $(/bin/busybox --list); do
			[[ "$app" == busybox ]] || args+=(--symlink "/bin/$app:busybox")
		done
		python3 "$NODE_DIR/oci-image.py" --name "$NODE_BUSYBOX_IMAGE" --out busybox.tar "${args[@]}" --cmd /bin/sh >>digests.txt
	) || die "building the node images failed"
	stamp_set "$IMG_BUILD" "$key"
	log "images built in $(elapsed_since "$t0")s: $(awk '{ print $1 }' "$IMG_BUILD/digests.txt" | tr '\n' ' ')"
}

# ---------------------------------------------------------------------------------------
# host state: save once, restore at stop

save_host_state() {
	[[ -f "$STATE_DIR/complete" ]] && return 0
	rm -rf "$STATE_DIR"
	mkdir -p "$STATE_DIR"
	local k v p
	for k in $SAVED_SYSCTLS; do
		v="$(sysctl -n "$k" 2>/dev/null)" && printf '%s=%s\n' "$k" "$v" >>"$STATE_DIR/sysctl"
	done
	for p in $HOST_PATHS; do
		[[ -e "$p" || -L "$p" ]] || echo "$p" >>"$STATE_DIR/absent-paths"
	done
	touch "$STATE_DIR/absent-paths"
	iptables-save 2>/dev/null | sed -n 's/^\*//p' >"$STATE_DIR/tables4" || true
	ip6tables-save 2>/dev/null | sed -n 's/^\*//p' >"$STATE_DIR/tables6" || true
	ip route show >"$STATE_DIR/routes"
	touch "$STATE_DIR/complete"
	log "saved host state (sysctls, paths, iptables tables, routes) in $STATE_DIR"
}

restore_host_state() {
	[[ -d "$STATE_DIR" ]] || return 0
	local line p
	if [[ -f "$STATE_DIR/sysctl" ]]; then
		while IFS= read -r line; do
			[[ "$(sysctl -n "${line%%=*}" 2>/dev/null)" == "${line#*=}" ]] || sysctl -qw "$line" >/dev/null 2>&1 || warn "could not restore $line"
		done <"$STATE_DIR/sysctl"
	fi
	if [[ -f "$STATE_DIR/absent-paths" ]]; then
		while IFS= read -r p; do
			[[ -n "$p" && ( -e "$p" || -L "$p" ) ]] || continue
			if findmnt -rn -o TARGET | grep -q "^$p\(/\|$\)"; then
				warn "not removing $p: something is mounted under it"
				continue
			fi
			rm -rf -- "$p"
		done <"$STATE_DIR/absent-paths"
	fi
	rm -rf "$STATE_DIR"
}

# ---------------------------------------------------------------------------------------
# network

# iptables_cleanup: remove every KUBE-*, CNI-* and TERN-* chain and the rules that jump to them
# (kube-proxy leaves its chains even after --cleanup), in all tables of both families; drop
# tables that were not there before the node started and are empty now.
iptables_cleanup() {
	local fam save restore nftfam before
	for fam in 4 6; do
		if [[ $fam == 4 ]]; then save=iptables-save restore=iptables-restore nftfam=ip; else save=ip6tables-save restore=ip6tables-restore nftfam=ip6; fi
		command -v "$save" >/dev/null 2>&1 || continue
		local dump filtered
		dump="$("$save" 2>/dev/null)" || continue
		[[ -n "$dump" ]] || continue
		filtered="$(awk '
			/^:(KUBE|CNI|TERN)-/ { next }
			/^-A (KUBE|CNI|TERN)-/ { next }
			/ -[jg] (KUBE|CNI|TERN)-/ { next }
			{ print }' <<<"$dump")"
		if [[ "$filtered" != "$dump" ]]; then
			"$restore" <<<"$filtered" || warn "$restore of the filtered rules failed"
		fi
		before="$(cat "$STATE_DIR/tables$fam" 2>/dev/null || true)"
		local t
		for t in $("$save" 2>/dev/null | sed -n 's/^\*//p'); do
			grep -qx "$t" <<<"$before" && continue
			# empty = no rules and only default-ACCEPT built-in chains
			if ! "$save" -t "$t" 2>/dev/null | grep -qE '^-A |^:[A-Z]+ (DROP|REJECT)'; then
				if command -v nft >/dev/null 2>&1; then nft delete table "$nftfam" "$t" 2>/dev/null || true; fi
			fi
		done
	done
}

network_up() {
	local uplink
	uplink="$(host_uplink)"
	[[ -n "$uplink" ]] || die "no default route: cannot tell the uplink interface"
	# Pod bridge (the CNI bridge plugin adopts it) with the node's /24; unreachable /16 around it.
	if ! ip link show "$POD_BRIDGE" >/dev/null 2>&1; then
		ip link add "$POD_BRIDGE" type bridge
	fi
	ip addr show dev "$POD_BRIDGE" | grep -q "inet $POD_GW/" || ip addr add "$POD_GW/${KUBE_NODE_POD_SUBNET#*/}" dev "$POD_BRIDGE"
	ip link set "$POD_BRIDGE" up
	ip route replace unreachable "$KUBE_POD_CIDR"
	# Service range on a port-less bridge: ClusterIPs work from the host (kube-proxy's DNAT in
	# OUTPUT), an unknown ClusterIP times out, nothing leaves the machine. An unreachable route
	# would make connect() fail before the DNAT.
	if ! ip link show "$SVC_BRIDGE" >/dev/null 2>&1; then
		ip link add "$SVC_BRIDGE" type bridge
	fi
	ip link set "$SVC_BRIDGE" up
	ip route replace "$KUBE_SERVICE_CIDR" dev "$SVC_BRIDGE"
	# Pods never talk to anything but each other and this host: drop forwarding between the
	# pod bridge and any other interface. In mangle FORWARD, which runs before filter FORWARD
	# where kube-proxy prepends its ACCEPT rules.
	local ipt
	for ipt in iptables ip6tables; do
		"$ipt" -t mangle -N TERN-NODE-FWD 2>/dev/null || "$ipt" -t mangle -F TERN-NODE-FWD
		"$ipt" -t mangle -A TERN-NODE-FWD -i "$POD_BRIDGE" ! -o "$POD_BRIDGE" -j DROP
		"$ipt" -t mangle -A TERN-NODE-FWD ! -i "$POD_BRIDGE" -o "$POD_BRIDGE" -j DROP
		"$ipt" -t mangle -C FORWARD -j TERN-NODE-FWD 2>/dev/null || "$ipt" -t mangle -I FORWARD 1 -j TERN-NODE-FWD
		# The API server listens on all addresses in node mode (pods reach it at the node's
		# address); nobody outside this machine may.
		"$ipt" -t mangle -N TERN-NODE-IN 2>/dev/null || "$ipt" -t mangle -F TERN-NODE-IN
		"$ipt" -t mangle -A TERN-NODE-IN -i "$uplink" -p tcp --dport "$KUBE_SECURE_PORT" -j DROP
		"$ipt" -t mangle -C INPUT -j TERN-NODE-IN 2>/dev/null || "$ipt" -t mangle -I INPUT 1 -j TERN-NODE-IN
	done
	# pod -> ClusterIP -> pod on the same bridge needs bridged traffic to see iptables.
	sysctl -qw net.bridge.bridge-nf-call-iptables=1 >/dev/null
	check_routes
}

# check_routes: no pod or Service address may be routed out of the machine.
check_routes() {
	local uplink out ip
	uplink="$(host_uplink)"
	for ip in "$POD_GW" "${KUBE_NODE_POD_SUBNET%.*}.200" "$KUBE_SERVICE_APISERVER_IP" "$KUBE_CLUSTER_DNS_IP" "${KUBE_SERVICE_CIDR%.*}.254"; do
		out="$(ip route get "$ip" 2>&1 || true)"
		if [[ "$out" == *" dev $uplink "* || "$out" == *" via "* ]]; then
			die "route check failed: $ip would leave the machine: $out"
		fi
	done
	# Elsewhere in the pod /16: unreachable.
	out="$(ip route get "${KUBE_POD_CIDR%.*.*}.77.7" 2>&1 || true)"
	[[ "$out" == *nreachable* || "$out" == *"No route"* ]] || die "route check failed: ${KUBE_POD_CIDR%.*.*}.77.7 is routable: $out"
	log "routes ok: pods $KUBE_NODE_POD_SUBNET on $POD_BRIDGE (rest of $KUBE_POD_CIDR unreachable), services $KUBE_SERVICE_CIDR on $SVC_BRIDGE, uplink $uplink untouched"
}

network_down() {
	local ipt
	for ipt in iptables ip6tables; do
		"$ipt" -t mangle -D FORWARD -j TERN-NODE-FWD 2>/dev/null || true
		"$ipt" -t mangle -D INPUT -j TERN-NODE-IN 2>/dev/null || true
	done
	iptables_cleanup
	# veths of pods whose netns is gone disappear by themselves; delete any left on the bridge.
	local l
	for l in $(ip -o link show master "$POD_BRIDGE" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
		ip link del "$l" 2>/dev/null || true
	done
	ip route del unreachable "$KUBE_POD_CIDR" 2>/dev/null || true
	ip link del "$POD_BRIDGE" 2>/dev/null || true
	ip link del "$SVC_BRIDGE" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------
# PKI: client certificates (kube CA) and kubeconfigs for the node's components

# client_cert NAME CN [O]: $PKI/NAME.{crt,key} signed by the kube CA, kept while it verifies.
client_cert() {
	local name="$1" cn="$2" org="${3:-}" subj
	openssl verify -CAfile "$KUBE_PKI/ca.crt" "$PKI/$name.crt" >/dev/null 2>&1 && return 0
	subj="/CN=$cn"
	[[ -z "$org" ]] || subj="/O=$org$subj"
	openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj" 2>/dev/null
	printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$PKI/client.ext"
	openssl x509 -req -in "$PKI/$name.csr" -CA "$KUBE_PKI/ca.crt" -CAkey "$KUBE_PKI/ca.key" -CAcreateserial \
		-CAserial "$PKI/ca.srl" -sha256 -days 3650 -extfile "$PKI/client.ext" -out "$PKI/$name.crt" 2>/dev/null
	rm -f "$PKI/$name.csr"
}

kubeconfig_for() {
	local name="$1"
	cat >"$PKI/$name.kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: tern-e2e
  cluster:
    server: https://127.0.0.1:$KUBE_SECURE_PORT
    certificate-authority: $KUBE_PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: default
  context: {cluster: tern-e2e, user: $name}
current-context: default
KCFG
}

ensure_node_pki() {
	mkdir -p "$PKI"
	chmod 700 "$PKI"
	client_cert kube-controller-manager system:kube-controller-manager
	client_cert kube-scheduler system:kube-scheduler
	client_cert kubelet "system:node:$KUBE_NODE_NAME" system:nodes
	client_cert kube-proxy system:kube-proxy
	local n
	for n in kube-controller-manager kube-scheduler kubelet kube-proxy; do kubeconfig_for "$n"; done
}

# ---------------------------------------------------------------------------------------
# configs

render() { # TEMPLATE OUT: replace @NAME@ placeholders
	sed -e "s|@RUN@|$RUN_DIR|g" -e "s|@CTRD@|$CTRD_DIR|g" -e "s|@PAUSE_IMAGE@|$NODE_PAUSE_IMAGE|g" \
		-e "s|@COREDNS_IMAGE@|$NODE_COREDNS_IMAGE|g" -e "s|@BUSYBOX_IMAGE@|$NODE_BUSYBOX_IMAGE|g" \
		-e "s|@CLUSTER_DNS_IP@|$KUBE_CLUSTER_DNS_IP|g" -e "s|@POD_BRIDGE@|$POD_BRIDGE|g" \
		-e "s|@POD_SUBNET@|$KUBE_NODE_POD_SUBNET|g" -e "s|@POD_GW@|$POD_GW|g" -e "s|@POD_CIDR@|$KUBE_POD_CIDR|g" \
		-e "s|@NODE_NAME@|$KUBE_NODE_NAME|g" -e "s|@KUBE_PKI@|$KUBE_PKI|g" -e "s|@PKI@|$PKI|g" \
		-e "s|@KUBELET_DIR@|$KUBELET_DIR|g" -e "s|@CNI_DIR@|$CNI_DIR|g" "$1" >"$2.tmp"
	mv "$2.tmp" "$2"
}

write_configs() {
	mkdir -p "$CTRD_DIR" "$KUBELET_DIR/pki" "$CNI_DIR/net.d" "$CNI_DIR/ipam" "$LOG_DIR/pods"
	render "$NODE_DIR/containerd.toml" "$CONF_DIR/containerd.toml"
	render "$NODE_DIR/cni.conflist" "$CNI_DIR/net.d/10-tern-pods.conflist"
	render "$NODE_DIR/kubelet.yaml" "$CONF_DIR/kubelet.yaml"
	render "$NODE_DIR/kube-proxy.yaml" "$CONF_DIR/kube-proxy.yaml"
	render "$NODE_DIR/recycler-pod.yaml" "$CONF_DIR/recycler-pod.yaml"
	# registry hosts: all pulls go to a closed loopback port (see node/containerd.toml)
	local h
	rm -rf "$CONF_DIR/registry-hosts"
	for h in _default docker.io registry-1.docker.io registry.k8s.io k8s.gcr.io gcr.io quay.io ghcr.io public.ecr.aws mcr.microsoft.com tern.local localhost; do
		mkdir -p "$CONF_DIR/registry-hosts/$h"
		printf 'server = "http://127.0.0.1:9"\n\n[host."http://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n' >"$CONF_DIR/registry-hosts/$h/hosts.toml"
	done
	# resolv.conf for pods with dnsPolicy Default (CoreDNS itself): no upstream on purpose.
	printf 'nameserver 127.0.0.1\noptions ndots:1\n' >"$CONF_DIR/resolv.conf"
}

# ---------------------------------------------------------------------------------------
# processes

# config_key: a hash of everything the components read (rendered configs, CNI, registry hosts,
# the binaries); a component started with another key is restarted (its pods keep running).
config_key() {
	{
		find "$CONF_DIR" "$CNI_DIR/net.d" -type f \( -name '*.yaml' -o -name '*.toml' -o -name '*.conflist' -o -name resolv.conf \) -print0 | sort -z | xargs -0 cat
		stat -c '%n %Y %s' "$TERN_BIN"/kube* "$(command -v containerd)"
	} | sha256sum | cut -c1-16
}

# launch NAME LOG CMD...: start_daemon with NAME's own pid file, unless it runs already with
# the same command line and configs.
launch() {
	local name="$1" logf="$2"
	shift 2
	local PID_FILE="$PIDS_DIR/$name.pid" key
	key="$(config_key) $(sha256sum <<<"$*" | cut -c1-16)"
	if is_running "$PID_FILE"; then
		if [[ "$(cat "$PIDS_DIR/$name.key" 2>/dev/null)" == "$key" ]]; then
			log "$name already running (pid $(pid_of "$PID_FILE"))"
			return 0
		fi
		log "$name: configuration changed, restarting"
		SVC="node/$name" stop_pidfile "$PID_FILE" 30
		SVC=node
	fi
	start_daemon "$logf" "$@"
	echo "$key" >"$PIDS_DIR/$name.key"
}

# wait_component NAME DESC TIMEOUT CMD...: wait for CMD while NAME's process lives.
wait_component() {
	local name="$1" desc="$2" timeout="$3"
	shift 3
	local PID_FILE="$PIDS_DIR/$name.pid"
	if ! wait_for "$desc" "$timeout" "$@"; then
		log_tail "$LOG_DIR/$name.log" 60
		die "$name: $desc failed (log: $LOG_DIR/$name.log)"
	fi
}

ctr_() { ctr --address "$CTRD_SOCK" -n k8s.io "$@"; }

import_images() {
	local name digest out
	# digests.txt: "NAME DIGEST layer N bytes -> FILE" per image (node/oci-image.py)
	while read -r name digest _ _ _ _ out; do
		if ctr_ images ls "name==$name" 2>/dev/null | grep -q "$digest"; then
			continue
		fi
		ctr_ images import "$IMG_BUILD/$out" >/dev/null
		log "imported $name ($digest)"
	done <"$IMG_BUILD/digests.txt"
}

kubectl_() { "${KCTL[@]}" "$@"; }

# node_ready [SINCE_EPOCH]: the Node is Ready and its kubelet renewed the node lease since
# SINCE_EPOCH (default: within the last 60 s) — a Ready status left in etcd by an earlier run
# does not count.
# shellcheck disable=SC2120 # called with an argument through wait_component
node_ready() {
	local since="${1:-}" out ready renew
	[[ -n "$since" ]] || since=$(($(date +%s) - 60))
	out="$(kubectl_ get node "$KUBE_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" || return 1
	ready="$out"
	renew="$(kubectl_ -n kube-node-lease get lease "$KUBE_NODE_NAME" -o jsonpath='{.spec.renewTime}' 2>/dev/null)" || return 1
	[[ "$ready" == True && -n "$renew" ]] && (($(date -d "$renew" +%s) >= since))
}
# dns_answers: CoreDNS answers an A query for kubernetes.default.svc.cluster.local through the
# kube-dns ClusterIP from the host (kube-proxy's DNAT, the Service bridge, CoreDNS, the API data).
dns_answers() {
	python3 - "$KUBE_CLUSTER_DNS_IP" "$KUBE_SERVICE_APISERVER_IP" <<'PY'
import socket, struct, sys
server, want = sys.argv[1], socket.inet_aton(sys.argv[2])
name = b"".join(bytes([len(p)]) + p.encode() for p in "kubernetes.default.svc.cluster.local".split(".")) + b"\0"
pkt = struct.pack(">HHHHHH", 0x7e57, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
try:
    s.sendto(pkt, (server, 53))
    r = s.recv(1500)
except OSError:
    sys.exit(1)
ok = r[:2] == pkt[:2] and (r[3] & 0xF) == 0 and struct.unpack(">H", r[6:8])[0] > 0 and want in r
sys.exit(0 if ok else 1)
PY
}
coredns_ready() {
	[[ "$(kubectl_ -n kube-system get deploy coredns -o jsonpath='{.status.readyReplicas}' 2>/dev/null)" -ge 1 ]] 2>/dev/null && dns_answers
}
healthz() { curl -fsS --max-time 3 -o /dev/null "$1" 2>/dev/null; }
https_healthz() { curl -fsSk --max-time 3 "$1" 2>/dev/null | grep -q ok; }

apply_storage() {
	mkdir -p "$PV_DIR"
	local i size out="$CONF_DIR/storage.yaml"
	{
		cat <<'SC'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
reclaimPolicy: Delete
volumeBindingMode: Immediate
SC
		for i in $(seq -w 1 "$PV_COUNT"); do
			# 12 x 10Gi, 6 x 50Gi, 2 x 200Gi (nominal: hostPath does not enforce a size)
			if ((10#$i <= 12)); then size=10Gi; elif ((10#$i <= 18)); then size=50Gi; else size=200Gi; fi
			mkdir -p "$PV_DIR/pv-$i"
			chmod 0777 "$PV_DIR/pv-$i"
			cat <<PV
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: tern-pv-$i
  labels: {tern.e2e/node-pv: "true"}
spec:
  capacity: {storage: $size}
  accessModes: [ReadWriteOnce, ReadWriteMany, ReadOnlyMany]
  persistentVolumeReclaimPolicy: Recycle
  storageClassName: standard
  volumeMode: Filesystem
  hostPath: {path: $PV_DIR/pv-$i, type: DirectoryOrCreate}
PV
		done
	} >"$out"
	local err
	if ! err="$(kubectl_ apply --server-side --force-conflicts --field-manager=tern-e2e-node -f "$out" 2>&1 >/dev/null)"; then
		echo "$err" >&2
		die "applying $out failed"
	fi
	grep -v 'The Recycle reclaim policy is deprecated' <<<"$err" >&2 || true
	# Our PVs whose recycling failed (or that stayed Released): scrub on the host, free them.
	# Available ones must be empty too: a run that ended with the node torn down while a
	# namespace still held its volumes leaves their data on the host, and the next start
	# recreated those PVs as Available with it (a managed Cassandra then found another
	# cluster's system keyspace and refused to start: "Saved cluster name tern-dev !=
	# configured name tern-tls", CI of 2026-11-30).
	local name phase path
	while read -r name phase path; do
		[[ "$phase" == Failed || "$phase" == Released || "$phase" == Available ]] || continue
		[[ "$path" == "$PV_DIR/"* ]] || continue
		[[ "$phase" != Available || -n "$(ls -A "$path" 2>/dev/null)" ]] || continue
		find "$path" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
		if [[ "$phase" != Available ]]; then
			kubectl_ patch pv "$name" --type json -p '[{"op":"remove","path":"/spec/claimRef"}]' >/dev/null 2>&1 || true
		fi
		log "PV $name was $phase with data left on the host: scrubbed $path, available again"
	done < <(kubectl_ get pv -l tern.e2e/node-pv=true -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase} {.spec.hostPath.path}{"\n"}{end}')
}

do_start() {
	need_root
	local t0 t
	t0="$(now_s)"
	do_install
	SVC=node
	save_host_state
	network_up
	# /etc/hosts: the API server reaches the kubelet by the node name.
	grep -q "$HOSTS_TAG" /etc/hosts || printf '127.0.0.1 %s %s\n' "$KUBE_NODE_NAME" "$HOSTS_TAG" >>/etc/hosts

	# API server in node mode (restarts it if it runs bare)
	mkdir -p "$TERN_RUN/kube"
	echo node >"$TERN_RUN/kube/mode"
	"$E2E_ENV_DIR/services/kube.sh" start
	SVC=node
	ensure_node_pki
	write_configs

	t="$(now_s)"
	launch containerd "$LOG_DIR/containerd.log" containerd --config "$CONF_DIR/containerd.toml"
	wait_component containerd "containerd socket" 60 ctr --address "$CTRD_SOCK" version
	import_images
	log "containerd up, images present ($(elapsed_since "$t")s)"

	launch kube-controller-manager "$LOG_DIR/kube-controller-manager.log" "$TERN_BIN/kube-controller-manager" \
		--kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
		--authentication-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
		--authorization-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port=10257 \
		--leader-elect=false \
		--use-service-account-credentials=true \
		--service-account-private-key-file="$KUBE_PKI/sa.key" \
		--root-ca-file="$KUBE_PKI/ca.crt" \
		--cluster-signing-cert-file="$KUBE_PKI/ca.crt" --cluster-signing-key-file="$KUBE_PKI/ca.key" \
		--service-cluster-ip-range="$KUBE_SERVICE_CIDR" \
		--cluster-cidr="$KUBE_POD_CIDR" --allocate-node-cidrs=false \
		--pv-recycler-pod-template-filepath-hostpath="$CONF_DIR/recycler-pod.yaml" \
		--pv-recycler-minimum-timeout-hostpath=30 \
		--terminated-pod-gc-threshold=100 \
		--profiling=false --v=1
	launch kube-scheduler "$LOG_DIR/kube-scheduler.log" "$TERN_BIN/kube-scheduler" \
		--kubeconfig="$PKI/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port=10259 \
		--leader-elect=false --profiling=false --v=1

	t="$(now_s)"
	local since
	since="$(date +%s)"
	launch kubelet "$LOG_DIR/kubelet.log" "$TERN_BIN/kubelet" \
		--config="$CONF_DIR/kubelet.yaml" \
		--kubeconfig="$PKI/kubelet.kubeconfig" \
		--hostname-override="$KUBE_NODE_NAME" \
		--node-ip="$(host_node_ip)" \
		--root-dir="$KUBELET_DIR" \
		--cert-dir="$KUBELET_DIR/pki" \
		--v=1
	launch kube-proxy "$LOG_DIR/kube-proxy.log" "$TERN_BIN/kube-proxy" --config="$CONF_DIR/kube-proxy.yaml" --v=1
	wait_component kube-controller-manager "kube-controller-manager healthz" 90 https_healthz https://127.0.0.1:10257/healthz
	wait_component kube-scheduler "kube-scheduler healthz" 90 https_healthz https://127.0.0.1:10259/healthz
	wait_component kubelet "kubelet healthz" 60 healthz http://127.0.0.1:10248/healthz
	wait_component kubelet "node $KUBE_NODE_NAME Ready" 120 node_ready "$since"
	log "node Ready ($(elapsed_since "$t")s after kubelet start)"
	wait_component kube-proxy "kube-proxy healthz" 60 healthz http://127.0.0.1:10256/healthz

	render "$NODE_DIR/coredns.yaml" "$CONF_DIR/coredns.yaml"
	kubectl_ apply --server-side --force-conflicts --field-manager=tern-e2e-node -f "$CONF_DIR/coredns.yaml" >/dev/null
	apply_storage
	wait_component kubelet "CoreDNS answers at $KUBE_CLUSTER_DNS_IP" 120 coredns_ready
	check_routes
	log "node up in $(elapsed_since "$t0")s: $(do_info)"
}

# ---------------------------------------------------------------------------------------
# stop

kill_containers() {
	[[ -S "$CTRD_SOCK" ]] && is_running "$PIDS_DIR/containerd.pid" || return 0
	local ids id n=0 failed=0
	ids="$(ctr_ tasks ls -q 2>/dev/null || true)"
	for id in $ids; do
		if ctr_ tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1; then n=$((n + 1)); else failed=$((failed + 1)); fi
	done
	((n + failed)) || return 0
	((failed == 0)) || log "ctr could not kill $failed of $((n + failed)) tasks (their processes are killed from the cgroups below)"
	local i
	for i in $(seq 1 50); do
		[[ -z "$(ctr_ tasks ls 2>/dev/null | awk 'NR > 1 && $3 != "STOPPED"')" ]] && break
		sleep 0.2
	done
	for id in $ids; do ctr_ tasks delete "$id" >/dev/null 2>&1 || true; done
	log "killed $n containers"
}

# shim_pids: containerd-shim processes that belong to our containerd (by its socket).
shim_pids() {
	local d cmd
	for d in /proc/[0-9]*; do
		cmd="$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)" || continue
		[[ "$cmd" == *containerd-shim* && "$cmd" == *"$CTRD_SOCK"* ]] && echo "${d#/proc/}"
	done
}

# kubepods_pids: every process in the kubelet's pod cgroups (all hierarchies) = our containers.
kubepods_pids() {
	{ find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -name cgroup.procs 2>/dev/null || true; } |
		xargs -r cat 2>/dev/null | sort -un || true
}

# kill_pod_processes: SIGKILL what is left in the pod cgroups (containers whose task kill did
# not go through containerd), until they are empty.
kill_pod_processes() {
	local i pids n=0
	for i in $(seq 1 20); do
		pids="$(kubepods_pids)"
		[[ -n "$pids" ]] || break
		n=$(wc -w <<<"$pids")
		# shellcheck disable=SC2086 # a list of pids
		kill -KILL $pids 2>/dev/null || true
		sleep 0.5
	done
	((n == 0)) || log "killed $n leftover container processes (by PID, from the kubepods cgroups)"
	[[ -z "$(kubepods_pids)" ]] || warn "processes left in the kubepods cgroups: $(kubepods_pids | tr '\n' ' ')"
}

unmount_all() {
	local m n=0
	# deepest first
	while IFS= read -r m; do
		[[ -n "$m" ]] || continue
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "cannot unmount $m"
		n=$((n + 1))
	done < <(findmnt -rn -o TARGET | grep -E "^$RUN_DIR(/|$)" | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-)
	((n == 0)) || log "unmounted $n mounts under $RUN_DIR"
}

remove_kubepods_cgroups() {
	local d
	for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[[ -d "$d" ]] || continue
		find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		[[ -d "$d" ]] && warn "cgroup $d still has processes"
	done
}

do_stop() {
	local any=0 n
	for n in kube-proxy kubelet kube-scheduler kube-controller-manager containerd; do
		is_running "$PIDS_DIR/$n.pid" && any=1
	done
	if ((any == 0)) && [[ ! -d "$STATE_DIR" ]] && ! grep -q "$HOSTS_TAG" /etc/hosts; then
		log "not running"
		return 0
	fi
	need_root
	local t0
	t0="$(now_s)"
	for n in kube-proxy kubelet kube-scheduler kube-controller-manager; do
		SVC="node/$n" stop_pidfile "$PIDS_DIR/$n.pid" 30
	done
	# Without a renewed node lease, clients (and e2e/operator's suite, which refuses to run
	# next to a live kubelet) see at once that no kubelet runs; kubelet recreates it at start.
	kubectl_ -n kube-node-lease delete lease "$KUBE_NODE_NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
	kill_containers
	SVC="node/containerd" stop_pidfile "$PIDS_DIR/containerd.pid" 30
	SVC=node
	kill_pod_processes
	local p
	for p in $(shim_pids); do
		kill -KILL "$p" 2>/dev/null && log "killed leftover shim pid $p"
	done
	unmount_all
	# runtime state: kubelet's pod dirs, containerd's state dir, CNI's address leases (all pods
	# are gone; kubelet recreates them from the API server at the next start)
	rm -rf "$KUBELET_DIR/pods" "$CTRD_DIR/state" "$CNI_DIR/ipam" "$KUBELET_DIR/plugins" "$KUBELET_DIR/plugins_registry" "$KUBELET_DIR/pod-resources"
	network_down
	remove_kubepods_cgroups
	sed -i "/$HOSTS_TAG\$/d" /etc/hosts
	restore_host_state
	rm -f "$TERN_RUN/kube/mode"
	if [[ "${TERN_NODE_KEEP_KUBE_MODE:-0}" != 1 ]] && is_running "$TERN_RUN/kube/kube.pid" &&
		[[ "$(cat "$TERN_RUN/kube/mode.running" 2>/dev/null)" == node ]]; then
		log "switching kube-apiserver back to bare mode"
		"$E2E_ENV_DIR/services/kube.sh" start
		SVC=node
	fi
	log "stopped in $(elapsed_since "$t0")s"
}

# ---------------------------------------------------------------------------------------
# health / status

do_health() {
	node_ready "" && coredns_ready
}

do_info() {
	local v
	v="$("${KCTL[@]}" get node "$KUBE_NODE_NAME" -o jsonpath='{.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}' 2>/dev/null || true)"
	echo "node $KUBE_NODE_NAME ($v), pods $KUBE_NODE_POD_SUBNET, services $KUBE_SERVICE_CIDR, dns $KUBE_CLUSTER_DNS_IP, containerd $CTRD_SOCK"
}

do_status() {
	local n down=()
	for n in containerd kube-controller-manager kube-scheduler kubelet kube-proxy; do
		is_running "$PIDS_DIR/$n.pid" || down+=("$n")
	done
	if ((${#down[@]} == 5)); then
		echo "node: stopped"
		return 3
	fi
	local rss
	rss="$(for n in containerd kube-controller-manager kube-scheduler kubelet kube-proxy; do rss_of "$PIDS_DIR/$n.pid"; echo; done | awk '{ s += $1 } END { printf "%d MiB", s }')"
	if ((${#down[@]} == 0)) && do_health; then
		echo "node: healthy (kubelet pid $(pid_of "$PID_FILE"), RSS $rss without the API server and pods) $(do_info)"
		return 0
	fi
	echo "node: UNHEALTHY (not running: ${down[*]:-none}; node Ready: $(node_ready "" && echo yes || echo no), CoreDNS ready: $(coredns_ready && echo yes || echo no); logs $LOG_DIR)"
	return 1
}

case "${1:-}" in
install) do_install ;;
start) do_start ;;
stop) do_stop ;;
restart)
	do_stop
	do_start
	;;
status) do_status ;;
health) do_health ;;
*)
	echo "usage: $0 install|start|stop|restart|status|health" >&2
	exit 2
	;;
esac
