#!/usr/bin/env bash
# Stop real services (default: all, in reverse start order). Data stays in $TERN_CACHE/run;
# `down.sh --wipe [svc…]` also deletes the services' data and logs. The Kubernetes node
# (`node`, not started by default) is stopped first when it runs: with no arguments, and
# whenever kube or etcd is stopped.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SVC=down

wipe=0
services=()
for a in "$@"; do
	case "$a" in
	--wipe) wipe=1 ;;
	-*) die "unknown option $a" ;;
	*)
		[[ " $ALL_SERVICES $EXTRA_SERVICES " == *" $a "* ]] || die "unknown service '$a' (known: $ALL_SERVICES $EXTRA_SERVICES)"
		services+=("$a")
		;;
	esac
done
if ((${#services[@]} == 0)); then
	read -r -a all <<<"$ALL_SERVICES"
	services+=(node)
	for ((i = ${#all[@]} - 1; i >= 0; i--)); do services+=("${all[i]}"); done
fi
# The node needs kube (and etcd): stop it first when they go; then it need not switch the API
# server back to bare mode.
if [[ " ${services[*]} " == *" kube "* || " ${services[*]} " == *" etcd "* ]]; then
	export TERN_NODE_KEEP_KUBE_MODE=1
	if [[ " ${services[*]} " != *" node "* ]] && [[ -d "$TERN_RUN/node/host-state" || -s "$TERN_RUN/node/pids/kubelet.pid" ]]; then
		services=(node "${services[@]}")
	fi
fi
ordered=()
[[ " ${services[*]} " == *" node "* ]] && ordered+=(node)
for s in "${services[@]}"; do [[ "$s" == node ]] || ordered+=("$s"); done
services=("${ordered[@]}")

rc=0
for s in "${services[@]}"; do
	"$E2E_ENV_DIR/services/$s.sh" stop || rc=1
	if ((wipe)); then
		if findmnt -rn -o TARGET | grep -q "^$TERN_RUN/$s/"; then
			log "NOT wiping $TERN_RUN/$s: something is still mounted under it"
			rc=1
			continue
		fi
		log "wiping $TERN_RUN/$s"
		rm -rf "${TERN_RUN:?}/$s"
	fi
done
exit "$rc"
