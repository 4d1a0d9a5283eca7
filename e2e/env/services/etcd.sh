#!/usr/bin/env bash
# etcd built from its Go module (go.etcd.io/etcd/server/v3) into $TERN_CACHE/bin/etcd.
# Client 127.0.0.1:12379, peer 127.0.0.1:12380. Backs the kube-apiserver (service "kube").
set -euo pipefail
# shellcheck source=lib.sh disable=SC2034 # SVC_* are read by lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
svc_init etcd
SVC_PORTS="$ETCD_CLIENT_PORT $ETCD_PEER_PORT"
SVC_LOG="$LOG_DIR/etcd.log"
ETCD_BUILD="$TERN_PKG/etcd-$ETCD_VERSION"

do_install() { with_lock etcd-install _install; }
_install() {
	go_env
	local key
	key="etcd:$ETCD_VERSION $(go env GOVERSION)"
	stamp_ok "$ETCD_BUILD" "$key" && [[ -x "$TERN_BIN/etcd" ]] && return 0
	local t0
	t0="$(now_s)"
	log "building etcd $ETCD_VERSION from the Go module (first time: ~3-5 min on 2 cores)"
	go_build_module "$ETCD_BUILD" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "$TERN_BIN/etcd" go.etcd.io/etcd/server/v3
	stamp_set "$ETCD_BUILD" "$key"
	log "etcd built in $(elapsed_since "$t0")s: $("$TERN_BIN/etcd" --version | head -1)"
}

do_launch() {
	chmod 700 "$DATA_DIR"
	start_daemon "$SVC_LOG" "$TERN_BIN/etcd" \
		--name tern-e2e \
		--data-dir "$DATA_DIR" \
		--listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "tern-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
		--listen-metrics-urls "" \
		--quota-backend-bytes $((512 * 1024 * 1024)) \
		--auto-compaction-retention 1h \
		--unsafe-no-fsync \
		--log-level warn
}

# Real read through the KV API (gRPC gateway): a range request on an empty key.
do_health() {
	curl -fsS --max-time 3 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"' &&
		curl -fsS --max-time 3 -X POST -d '{"key":"AA=="}' "http://127.0.0.1:$ETCD_CLIENT_PORT/v3/kv/range" | grep -q '"header"'
}

do_info() { curl -fsS --max-time 3 "http://127.0.0.1:$ETCD_CLIENT_PORT/version" | sed 's/^/version /'; }

svc_main "$@"
