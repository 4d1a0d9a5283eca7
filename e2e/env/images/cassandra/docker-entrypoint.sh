#!/bin/bash
# The official cassandra image's entrypoint contract (docker-library/cassandra), for this
# image: CASSANDRA_* env -> /etc/cassandra/cassandra.yaml + cassandra-rackdc.properties,
# chown + gosu when started as root, then exec the command (default `cassandra -f`).
set -e

# first arg is `-f` or `--some-option`, or there are no args
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
	set -- cassandra -f "$@"
fi

# started as root: hand config, data and logs to the cassandra user, drop privileges
if [ "$1" = 'cassandra' ] && [ "$(id -u)" = '0' ]; then
	find "$CASSANDRA_CONF" /var/lib/cassandra /var/log/cassandra \! -user cassandra -exec chown cassandra '{}' +
	exec gosu cassandra "${BASH_SOURCE[0]}" "$@"
fi

# the container's first non-loopback IPv4 address (the pod IP on Kubernetes)
_ip_address() {
	local ip
	for ip in $(hostname -i 2>/dev/null); do
		case "$ip" in 127.* | ::1 | *:*) continue ;; esac
		echo "$ip"
		return
	done
	# no resolvable hostname: the kernel's table of local addresses
	awk '/32 host LOCAL/ { print ip } { ip = $2 }' /proc/net/fib_trie 2>/dev/null |
		grep -vE '^(127\.|169\.254\.)' | head -n 1
}

# sed -i that keeps the file (and its owner) in place, for bind-mounted configs
_sed_in_place() {
	local file="$1"
	shift
	local tmp
	tmp="$(mktemp)"
	sed "$@" "$file" >"$tmp"
	cat "$tmp" >"$file"
	rm "$tmp"
}

if [ "$1" = 'cassandra' ]; then
	: "${CASSANDRA_RPC_ADDRESS=0.0.0.0}"
	: "${CASSANDRA_LISTEN_ADDRESS=auto}"
	if [ "$CASSANDRA_LISTEN_ADDRESS" = 'auto' ]; then
		CASSANDRA_LISTEN_ADDRESS="$(_ip_address)"
	fi
	: "${CASSANDRA_BROADCAST_ADDRESS="$CASSANDRA_LISTEN_ADDRESS"}"
	if [ "$CASSANDRA_BROADCAST_ADDRESS" = 'auto' ]; then
		CASSANDRA_BROADCAST_ADDRESS="$(_ip_address)"
	fi
	: "${CASSANDRA_BROADCAST_RPC_ADDRESS:=$CASSANDRA_BROADCAST_ADDRESS}"
	if [ -n "${CASSANDRA_NAME:+1}" ]; then
		: "${CASSANDRA_SEEDS:=cassandra}"
	fi
	: "${CASSANDRA_SEEDS:=$CASSANDRA_BROADCAST_ADDRESS}"
	if [ -z "$CASSANDRA_LISTEN_ADDRESS" ]; then
		echo "docker-entrypoint.sh: could not determine the container's IP address; set CASSANDRA_LISTEN_ADDRESS" >&2
		exit 1
	fi
	export CASSANDRA_LISTEN_ADDRESS CASSANDRA_BROADCAST_ADDRESS CASSANDRA_SEEDS

	# Kubernetes: a StatefulSet pod's own DNS name (the usual seed) appears a moment after the
	# pod starts, and a first NXDOMAIN is cached by CoreDNS for up to 30 s. Cassandra looks its
	# seeds up once and exits when none resolves (seen on the real node: three restarts of
	# pod 0), so wait — bounded by CASSANDRA_SEED_WAIT seconds (default 120) — until at least
	# one seed resolves. An addition to the official image's contract.
	seed_wait="${CASSANDRA_SEED_WAIT:-120}"
	waited=0
	while :; do
		resolved=0
		for seed in ${CASSANDRA_SEEDS//,/ }; do
			getent hosts "$seed" >/dev/null 2>&1 && resolved=1 && break
		done
		[ "$resolved" = 1 ] && break
		if [ "$waited" -ge "$seed_wait" ]; then
			echo "docker-entrypoint.sh: no seed of '$CASSANDRA_SEEDS' resolved in ${seed_wait}s; starting anyway" >&2
			break
		fi
		[ $((waited % 10)) = 0 ] && echo "docker-entrypoint.sh: waiting for a seed of '$CASSANDRA_SEEDS' to resolve (${waited}s)" >&2
		sleep 1
		waited=$((waited + 1))
	done

	_sed_in_place "$CASSANDRA_CONF/cassandra.yaml" -r 's/(- seeds:).*/\1 "'"$CASSANDRA_SEEDS"'"/'

	for yaml in broadcast_address broadcast_rpc_address cluster_name endpoint_snitch listen_address num_tokens rpc_address; do
		var="CASSANDRA_${yaml^^}"
		val="${!var}"
		if [ "$val" ]; then
			_sed_in_place "$CASSANDRA_CONF/cassandra.yaml" -r 's/^(# )?('"$yaml"':).*/\2 '"$val"'/'
		fi
	done

	for rackdc in dc rack; do
		var="CASSANDRA_${rackdc^^}"
		val="${!var}"
		if [ "$val" ]; then
			_sed_in_place "$CASSANDRA_CONF/cassandra-rackdc.properties" -r 's/^('"$rackdc"'=).*/\1'"$val"'/'
		fi
	done
fi

exec "$@"
