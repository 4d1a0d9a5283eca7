#!/usr/bin/env bash
# Install (download/build, cached in $TERN_CACHE) and start real services, waiting until each
# answers a real query. Idempotent: running services are left alone.
#   e2e/env/up.sh                   all services: redis kafka cassandra etcd kube minio
#   e2e/env/up.sh redis kafka       just those
#   e2e/env/up.sh --only-install    download/build everything, start nothing
#   e2e/env/up.sh node              a real single-node Kubernetes cluster (root; not in the default set)
#   e2e/env/up.sh redis-ha kafka-ha cassandra-ha   3-node services for the failure tests (not default)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SVC=up

only_install=0
services=()
for a in "$@"; do
	case "$a" in
	--only-install) only_install=1 ;;
	-h | --help)
		sed -n '2,9p' "$0"
		exit 0
		;;
	-*) die "unknown option $a" ;;
	*)
		[[ " $ALL_SERVICES $EXTRA_SERVICES " == *" $a "* ]] || die "unknown service '$a' (known: $ALL_SERVICES $EXTRA_SERVICES)"
		services+=("$a")
		;;
	esac
done
((${#services[@]})) || read -r -a services <<<"$ALL_SERVICES"

t_all="$(now_s)"
for s in "${services[@]}"; do
	t0="$(now_s)"
	if ((only_install)); then
		"$E2E_ENV_DIR/services/$s.sh" install
		log "$s installed ($(elapsed_since "$t0")s)"
	else
		"$E2E_ENV_DIR/services/$s.sh" start
		log "$s up ($(elapsed_since "$t0")s)"
	fi
done
log "done in $(elapsed_since "$t_all")s: ${services[*]}"
((only_install)) || log "use:  eval \"\$($E2E_ENV_DIR/env.sh)\""
