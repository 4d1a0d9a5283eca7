#!/usr/bin/env bash
# One line per service: healthy / stopped / UNHEALTHY (each checked with a real query).
# Exit status 0 only if every named service (default: all but the Kubernetes node, which
# `status.sh node` checks: node Ready + CoreDNS ready) is healthy.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SVC=status
read -r -a services <<<"${*:-$ALL_SERVICES}"
rc=0
for s in "${services[@]}"; do
	[[ " $ALL_SERVICES $EXTRA_SERVICES " == *" $s "* ]] || die "unknown service '$s' (known: $ALL_SERVICES $EXTRA_SERVICES)"
	"$E2E_ENV_DIR/services/$s.sh" status || rc=1
done
exit "$rc"
