# shellcheck shell=bash
# shellcheck disable=SC2034 # variables here are used by the scripts that source this file
# Common helpers for the real-services test environment (e2e/env). Sourced, never run.
#
# Layout (all outside the checkout):
#   $TERN_CACHE/bin                 built binaries (etcd, kube-apiserver, kubectl, helm, minio)
#   $TERN_CACHE/m2                  Maven local repository
#   $TERN_CACHE/go/{mod,build}      Go module + build caches
#   $TERN_CACHE/venv                Python venv for health checks (cassandra-driver, confluent-kafka, boto3)
#   $TERN_CACHE/pkg/<name>-<ver>    installed jar sets / build dirs, one per pinned version
#   $TERN_CACHE/run/<svc>/{conf,data,log}, run/<svc>/<svc>.pid
#   $TERN_CACHE/locks               flock files serialising installs

E2E_ENV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
. "$E2E_ENV_DIR/versions.sh"

TERN_CACHE="${TERN_CACHE:-$HOME/.cache/tern}"
TERN_BIN="$TERN_CACHE/bin"
TERN_RUN="$TERN_CACHE/run"
TERN_PKG="$TERN_CACHE/pkg"
TERN_VENV="$TERN_CACHE/venv"
TERN_M2="$TERN_CACHE/m2"
TERN_START_TIMEOUT="${TERN_START_TIMEOUT:-180}"
export TERN_CACHE

# Ports (all bound to 127.0.0.1). Fixed on purpose: env.sh and the tests rely on them.
REDIS_PORT=16379
KAFKA_PORT=19092
KAFKA_CONTROLLER_PORT=19093
CQL_PORT=19042
CASSANDRA_STORAGE_PORT=17000
CASSANDRA_JMX_PORT=17199
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
KUBE_SECURE_PORT=16443
MINIO_PORT=19000
MINIO_CONSOLE_PORT=19001

# Multi-node services for the failure tests (issue #15; not in the default set). Node N = 1..3.
REDIS_HA_PORT_BASE=16379          # Redis node N: 127.0.0.1:$((REDIS_HA_PORT_BASE + N)) = 16380..16382
REDIS_HA_SENTINEL_PORT_BASE=26379 # Sentinel N:   127.0.0.1:26380..26382
REDIS_HA_MASTER=tern              # the master name the Sentinels monitor
KAFKA_HA_PORT_BASE=19100          # broker N:     127.0.0.1:19101..19103 (PLAINTEXT)
KAFKA_HA_CONTROLLER_PORT_BASE=19110 # controller N: 127.0.0.1:19111..19113
CASSANDRA_HA_CQL_PORT=19142       # CQL node N:   127.0.0.$((N + 1)):19142 (127.0.0.2..127.0.0.4)
CASSANDRA_HA_STORAGE_PORT=17100   # on each node address (ssl storage port 17101, unused)
CASSANDRA_HA_JMX_PORT_BASE=17200  # local-only JMX of node N: 127.0.0.1:17201..17203

MINIO_ROOT_USER_DEFAULT="tern-admin"
MINIO_ROOT_PASSWORD_DEFAULT="tern-admin-secret"
TERN_S3_BUCKET_DEFAULT="tern-media"

ALL_SERVICES="redis kafka cassandra etcd kube minio"
# Services up.sh/down.sh/status.sh know but do not run by default (a real Kubernetes node:
# root only, changes routes/iptables/sysctls; `e2e/env/up.sh node`; the three-node services of
# the failure tests: `e2e/env/up.sh redis-ha kafka-ha cassandra-ha`).
EXTRA_SERVICES="node redis-ha kafka-ha cassandra-ha"

# Address ranges of the Kubernetes node (services/node.sh); they exist only inside this machine.
KUBE_SERVICE_CIDR="10.0.0.0/24"   # ClusterIPs (kube-apiserver --service-cluster-ip-range)
KUBE_SERVICE_APISERVER_IP="10.0.0.1"
KUBE_CLUSTER_DNS_IP="10.0.0.10"  # Service kube-system/kube-dns (CoreDNS)
KUBE_POD_CIDR="10.244.0.0/16"     # blackholed (unreachable) except the node's /24 below
KUBE_NODE_POD_SUBNET="10.244.0.0/24"
KUBE_NODE_NAME="tern-node"        # mapped to 127.0.0.1 in /etc/hosts while the node runs

# host_uplink: the interface of the default route (eth0 on these VMs).
host_uplink() { ip -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }'; }
# host_node_ip: the first IPv4 address of that interface (192.0.2.2 on these VMs).
host_node_ip() {
	local dev
	dev="$(host_uplink)"
	[[ -n "$dev" ]] || return 1
	ip -4 -o addr show dev "$dev" scope global | awk '{ sub(/\/.*/, "", $4); print $4; exit }'
}

# Commands built from k8s.io/kubernetes by services/kube.sh (one build, one Go cache).
KUBE_COMMANDS="kube-apiserver kubectl kube-controller-manager kube-scheduler kubelet kube-proxy"

# ---------------------------------------------------------------------------------------
# logging

SVC="${SVC:-env}"

log() { printf '%s [%s] %s\n' "$(date '+%H:%M:%S')" "$SVC" "$*" >&2; }
warn() { log "WARN: $*"; }
die() {
	log "ERROR: $*"
	exit 1
}

# now_s: seconds since epoch with millis, for timing.
now_s() { date +%s.%N | cut -c1-14; }
elapsed_since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------------------
# directories, pid files

# svc_init NAME: set RUN_DIR, CONF_DIR, DATA_DIR, LOG_DIR, PID_FILE for service NAME and create them.
svc_init() {
	SVC="$1"
	RUN_DIR="$TERN_RUN/$1"
	CONF_DIR="$RUN_DIR/conf"
	DATA_DIR="$RUN_DIR/data"
	LOG_DIR="$RUN_DIR/log"
	PID_FILE="$RUN_DIR/$1.pid"
	mkdir -p "$CONF_DIR" "$DATA_DIR" "$LOG_DIR" "$TERN_BIN" "$TERN_PKG" "$TERN_CACHE/locks"
}

# proc_starttime PID: the kernel's start time of PID (clock ticks since boot), to tell a live
# service from an unrelated process that got the same pid after a reboot.
proc_starttime() {
	local stat
	stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
	stat="${stat##*) }"
	# fields after "comm)": state(3) ppid(4) … starttime(22) -> index 19 here
	awk '{ print $20 }' <<<"$stat"
}

# proc_alive PID: running and not a zombie (PID 1 on these machines reaps orphans only every
# ~2 s, and a zombie still answers kill -0).
proc_alive() {
	kill -0 "$1" 2>/dev/null || return 1
	local st
	st="$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null)" || return 1
	[[ -n "$st" && "$st" != Z ]]
}

# pid_of PIDFILE: print the pid if the file names a live process (and, when recorded, the same
# process start time), else nothing and return 1. File format: "PID [STARTTIME]".
pid_of() {
	local f="$1" pid start now
	[[ -s "$f" ]] || return 1
	read -r pid start <"$f" || true
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	proc_alive "$pid" || return 1
	if [[ -n "${start:-}" ]]; then
		now="$(proc_starttime "$pid")" || return 1
		[[ "$now" == "$start" ]] || return 1
	fi
	echo "$pid"
}

# is_running [PIDFILE]: true if our pid file (default $PID_FILE) names a live process.
is_running() { pid_of "${1:-$PID_FILE}" >/dev/null; }

# port_open PORT [HOST]: true if something accepts TCP connections there.
port_open() {
	local port="$1" host="${2:-127.0.0.1}"
	(exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# ensure_port_free PORT...: die if a port we are about to bind is held by someone else.
ensure_port_free() {
	local p
	for p in "$@"; do
		if port_open "$p"; then
			die "port 127.0.0.1:$p is already in use by another process (not ours: no live pid file). $(port_owner "$p")"
		fi
	done
}

port_owner() {
	if command -v ss >/dev/null 2>&1; then
		ss -ltnpH "sport = :$1" 2>/dev/null | head -3 | tr -s ' ' | sed 's/^/  holder: /'
	fi
}

# start_daemon LOGFILE CMD ARGS...: start CMD detached (own session, stdin /dev/null,
# stdout+stderr appended to LOGFILE) and record its pid in $PID_FILE.
start_daemon() {
	local logfile="$1"
	shift
	rm -f "$PID_FILE"
	printf '\n===== %s starting: %s\n' "$(date -Is)" "$*" >>"$logfile"
	# The inner shell writes its own pid, then execs the service: the pid stays the service's.
	# 9>&-: not the lock fd of with_lock (a daemon started under a lock would hold it for ever)
	# shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
	setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" "$@" >>"$logfile" 2>&1 </dev/null 9>&- &
	local i
	for i in $(seq 1 50); do
		[[ -s "$PID_FILE" ]] && break
		sleep 0.1
	done
	[[ -s "$PID_FILE" ]] || die "could not start $1 (no pid file)"
	local pid st
	pid="$(cat "$PID_FILE")"
	st="$(proc_starttime "$pid")" && echo "$pid $st" >"$PID_FILE"
	log "started $(basename "$1") pid $pid, log $logfile"
}

# stop_pidfile [PIDFILE] [TIMEOUT]: SIGTERM, wait, then SIGKILL. Removes the pid file.
stop_pidfile() {
	local f="${1:-$PID_FILE}" timeout="${2:-60}" pid i
	if ! pid="$(pid_of "$f")"; then
		log "not running"
		rm -f "$f"
		return 0
	fi
	log "stopping pid $pid (SIGTERM, up to ${timeout}s)"
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < timeout * 10; i++)); do
		proc_alive "$pid" || break
		sleep 0.1
	done
	if proc_alive "$pid"; then
		warn "pid $pid still alive after ${timeout}s: SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		sleep 0.5
	fi
	rm -f "$f"
	log "stopped"
}

# log_tail FILE [N]: print the last N lines of a log to stderr.
log_tail() {
	local f="$1" n="${2:-60}"
	if [[ -f "$f" ]]; then
		echo "----- last $n lines of $f -----" >&2
		tail -n "$n" "$f" >&2
		echo "----- end of $f -----" >&2
	else
		echo "(no log file $f)" >&2
	fi
}

# wait_for DESCRIPTION TIMEOUT_S CMD ARGS...: poll CMD every 0.5 s until it succeeds.
# Fails early if $PID_FILE is set and its process died. Returns 1 on timeout.
wait_for() {
	local desc="$1" timeout="$2"
	shift 2
	local start deadline
	start="$(date +%s)"
	deadline=$((start + timeout))
	while true; do
		if "$@" >/dev/null 2>&1; then
			log "$desc: ok after $(($(date +%s) - start))s"
			return 0
		fi
		if [[ -n "${PID_FILE:-}" ]] && ! is_running "$PID_FILE"; then
			log "$desc: process exited while waiting"
			return 1
		fi
		if (($(date +%s) >= deadline)); then
			log "$desc: timed out after ${timeout}s"
			return 1
		fi
		sleep 0.5
	done
}

# wait_healthy_or_fail HEALTHFN LOGFILE [TIMEOUT]: wait for health, else print log tail, stop, fail.
wait_healthy_or_fail() {
	local fn="$1" logfile="$2" timeout="${3:-$TERN_START_TIMEOUT}"
	if ! wait_for "health check" "$timeout" "$fn"; then
		log_tail "$logfile" 80
		stop_pidfile "$PID_FILE" 20 || true
		die "$SVC did not become healthy (log: $logfile)"
	fi
}

# rss_of PIDFILE: resident set size in MiB (whole process tree of the pid).
rss_of() {
	local pid
	pid="$(pid_of "$1")" || {
		echo "-"
		return 0
	}
	ps -o rss= --ppid "$pid" -p "$pid" 2>/dev/null | awk '{ s += $1 } END { printf "%d MiB", s / 1024 }'
}

# ---------------------------------------------------------------------------------------
# multi-node services (redis-ha, kafka-ha, cassandra-ha): one pid file per process

# addr_free_or_die HOST:PORT...: die if something (not ours) accepts connections there.
addr_free_or_die() {
	local a
	for a in "$@"; do
		if port_open "${a##*:}" "${a%:*}"; then
			die "$a is already in use by another process. $(port_owner "${a##*:}")"
		fi
	done
}

# kill9_pidfile PIDFILE: SIGKILL the process (a simulated crash); returns once it is gone
# (at most ~5 s; usually at once). The pid file stays (pid_of no longer accepts it).
kill9_pidfile() {
	local pid i
	pid="$(pid_of "$1")" || {
		log "not running ($1)"
		return 0
	}
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		proc_alive "$pid" || break
		sleep 0.1
	done
	log "killed -9 pid $pid"
}

# rss_sum PIDFILE...: summed RSS (MiB) of the live processes named by the pid files.
rss_sum() {
	local f pid pids=()
	for f in "$@"; do
		pid="$(pid_of "$f")" && pids+=("$pid")
	done
	((${#pids[@]})) || {
		echo "0 MiB"
		return 0
	}
	ps -o rss= -p "$(
		IFS=,
		echo "${pids[*]}"
	)" 2>/dev/null | awk '{ s += $1 } END { printf "%d MiB", s / 1024 }'
}

# check_node N: die unless N is 1, 2 or 3.
check_node() { [[ "${1:-}" =~ ^[123]$ ]] || die "node must be 1, 2 or 3 (got '${1:-}')"; }

# ---------------------------------------------------------------------------------------
# install helpers

# heartbeat_start WHAT / heartbeat_stop: print "still WHAT (Ns)" every 60 s during a long step.
HEARTBEAT_PID=""
heartbeat_start() {
	local what="$1" t0=$SECONDS
	(
		while sleep 60; do log "... still $what ($((SECONDS - t0)) s)"; done
	) &
	HEARTBEAT_PID=$!
}
heartbeat_stop() {
	if [[ -n "$HEARTBEAT_PID" ]]; then
		kill "$HEARTBEAT_PID" 2>/dev/null || true
		wait "$HEARTBEAT_PID" 2>/dev/null || true
		HEARTBEAT_PID=""
	fi
}

# with_lock NAME CMD...: run CMD holding an exclusive lock (two `up.sh` at once don't collide).
with_lock() {
	local name="$1"
	shift
	mkdir -p "$TERN_CACHE/locks"
	(
		flock 9
		"$@"
	) 9>"$TERN_CACHE/locks/$name.lock"
}

# stamp_ok DIR KEY: true if DIR/.installed holds KEY (an install finished with those inputs).
stamp_ok() { [[ -f "$1/.installed" && "$(cat "$1/.installed")" == "$2" ]]; }
stamp_set() { printf '%s' "$2" >"$1/.installed"; }

need_cmd() {
	command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH${2:+: $2}"
}

apt_updated=0
# apt_install PKG...: install Debian packages if any is missing.
apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	local sudo=()
	[[ "$(id -u)" == 0 ]] || sudo=(sudo)
	if ((apt_updated == 0)); then
		log "apt-get update"
		"${sudo[@]}" apt-get update -qq
		apt_updated=1
	fi
	log "apt-get install ${missing[*]}"
	# wait for another apt/dpkg (a parallel install) instead of failing on its lock
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_venv: the Python venv with the client libraries the health checks use.
ensure_venv() {
	with_lock venv _ensure_venv
}
_ensure_venv() {
	local key="cassandra-driver==$PY_CASSANDRA_DRIVER_VERSION confluent-kafka==$PY_CONFLUENT_KAFKA_VERSION boto3==$PY_BOTO3_VERSION"
	stamp_ok "$TERN_VENV" "$key" && return 0
	need_cmd python3
	local t0
	t0="$(now_s)"
	log "creating Python venv $TERN_VENV ($key) — ~30 s"
	if [[ ! -x "$TERN_VENV/bin/python" ]]; then
		python3 -m venv "$TERN_VENV" || {
			apt_install python3-venv
			python3 -m venv "$TERN_VENV"
		}
	fi
	# shellcheck disable=SC2086 # key is a list of requirement specifiers
	"$TERN_VENV/bin/pip" install -q --disable-pip-version-check $key
	stamp_set "$TERN_VENV" "$key"
	log "venv ready in $(elapsed_since "$t0")s"
}

# py: run the venv's python.
py() { "$TERN_VENV/bin/python" "$@"; }

# java_bin: JDK 17+ java (Cassandra 5.0 and Kafka 4.x both run on 17).
java_bin() {
	if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
		echo "$JAVA_HOME/bin/java"
		return
	fi
	command -v java >/dev/null 2>&1 || apt_install openjdk-17-jdk-headless
	command -v java
}

ensure_maven() {
	command -v mvn >/dev/null 2>&1 || apt_install maven
	java_bin >/dev/null
}

# maven_fetch DESTDIR POMFILE: resolve the pom's dependencies (runtime scope) into DESTDIR/lib.
maven_fetch() {
	local dest="$1" pom="$2"
	ensure_maven
	mkdir -p "$dest/lib"
	nice -n 10 mvn -B -q -f "$pom" -Dmaven.repo.local="$TERN_M2" \
		dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dest/lib" \
		>"$dest/mvn.log" 2>&1 || {
		log_tail "$dest/mvn.log" 40
		die "maven resolution failed (log: $dest/mvn.log)"
	}
}

# cassandra_jpms_opts: sets CASSANDRA_JPMS_OPTS, the JDK 17 module flags from Cassandra's
# conf/jvm17-server.options (needed by the server and by nodetool alike). One list for the host
# service and the cassandra image: the image's bin/jpms-opts.sh.
cassandra_jpms_opts() {
	# shellcheck source=images/cassandra/bin/jpms-opts.sh
	. "$E2E_ENV_DIR/images/cassandra/bin/jpms-opts.sh"
	CASSANDRA_JPMS_OPTS=("${JPMS_OPTS[@]}")
}

# ---------------------------------------------------------------------------------------
# Go builds

go_env() {
	export GOMODCACHE="$TERN_CACHE/go/mod" GOCACHE="$TERN_CACHE/go/build" GOFLAGS="-buildvcs=false"
	export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED="${CGO_ENABLED:-0}"
	command -v go >/dev/null 2>&1 || {
		[[ -x /usr/local/go/bin/go ]] && export PATH="/usr/local/go/bin:$PATH"
	}
	need_cmd go "install Go >= 1.24 (the machine image has /usr/local/go)"
}

# go_build_module WORKDIR MODULE@VERSION OUT PKG [REPLACES_FILE]: build PKG from a throw-away
# module in WORKDIR that requires MODULE@VERSION; the binary lands at OUT.
go_build_module() {
	local work="$1" modver="$2" out="$3" pkg="$4"
	go_env
	mkdir -p "$work"
	heartbeat_start "building $pkg"
	(
		cd "$work"
		[[ -f go.mod ]] || go mod init tern.local/e2e-build >/dev/null 2>&1
		# `go get PKG@VERSION` (not just the module) records go.sum entries for PKG's imports.
		nice -n 10 go get "$pkg@${modver##*@}" >>build.log 2>&1
		nice -n 10 go build -trimpath -ldflags "-s -w ${GO_LDFLAGS_EXTRA:-}" -o "$out.tmp" "$pkg" >>build.log 2>&1
		mv "$out.tmp" "$out"
	) || {
		heartbeat_stop
		log_tail "$work/build.log" 40
		die "go build of $pkg failed (log: $work/build.log)"
	}
	heartbeat_stop
}

# ---------------------------------------------------------------------------------------
# service skeleton
#
# A service script sets SVC_PORTS and SVC_LOG, defines do_install, do_launch (start the
# process with start_daemon), do_health (a real query; quiet; exit status only), and
# optionally do_post_start, do_stop, do_info; then calls `svc_main "$@"`.

svc_start() {
	if is_running; then
		if do_health >/dev/null 2>&1; then
			log "already running (pid $(pid_of "$PID_FILE")) and healthy"
			return 0
		fi
		log "already running (pid $(pid_of "$PID_FILE")) but not healthy yet: waiting"
		wait_healthy_or_fail do_health "$SVC_LOG"
		declare -F do_post_start >/dev/null && do_post_start
		return 0
	fi
	do_install
	# shellcheck disable=SC2086 # SVC_PORTS is a list
	ensure_port_free $SVC_PORTS
	local t0
	t0="$(now_s)"
	do_launch
	wait_healthy_or_fail do_health "$SVC_LOG"
	declare -F do_post_start >/dev/null && do_post_start
	log "healthy: start took $(elapsed_since "$t0")s, RSS $(rss_of "$PID_FILE")"
}

svc_status() {
	if ! is_running; then
		if [[ -n "${SVC_PORTS:-}" ]] && port_open "${SVC_PORTS%% *}"; then
			echo "$SVC: NOT RUNNING (ours), but port ${SVC_PORTS%% *} is held by another process"
		else
			echo "$SVC: stopped"
		fi
		return 3
	fi
	local pid info=""
	pid="$(pid_of "$PID_FILE")"
	declare -F do_info >/dev/null && info="$(do_info 2>/dev/null || true)"
	if do_health >/dev/null 2>&1; then
		echo "$SVC: healthy (pid $pid, RSS $(rss_of "$PID_FILE"))${info:+ $info}"
		return 0
	fi
	echo "$SVC: UNHEALTHY (pid $pid running but health check fails; log $SVC_LOG)"
	return 1
}

svc_main() {
	local action="${1:-}"
	case "$action" in
	install) do_install ;;
	start) svc_start ;;
	stop) if declare -F do_stop >/dev/null; then do_stop; else stop_pidfile "$PID_FILE" 60; fi ;;
	restart)
		"$0" stop
		"$0" start
		;;
	status) svc_status ;;
	health) do_health ;;
	*)
		echo "usage: $0 install|start|stop|restart|status|health" >&2
		exit 2
		;;
	esac
}
