#!/usr/bin/env bash
# Stop real services (default: all, in reverse start order). Data stays in $TERN_CACHE/run;
# `down.sh --wipe [svc…]` also deletes the services' data and logs.
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
		[[ " $ALL_SERVICES " == *" $a "* ]] || die "unknown service '$a' (known: $ALL_SERVICES)"
		services+=("$a")
		;;
	esac
done
if ((${#services[@]} == 0)); then
	read -r -a all <<<"$ALL_SERVICES"
	for ((i = ${#all[@]} - 1; i >= 0; i--)); do services+=("${all[i]}"); done
fi

rc=0
for s in "${services[@]}"; do
	"$E2E_ENV_DIR/services/$s.sh" stop || rc=1
	if ((wipe)); then
		log "wiping $TERN_RUN/$s"
		rm -rf "${TERN_RUN:?}/$s"
	fi
done
exit "$rc"
