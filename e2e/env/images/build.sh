#!/usr/bin/env bash
# Build the container images a Kubernetes node on this machine needs — without Docker and
# without a registry — into OCI archives, and optionally import them into containerd.
#
#   e2e/env/images/build.sh [--import] [--force] [image…]   # default: all images; --force
#                                                           # rebuilds the named ones
#   e2e/env/images/build.sh --list                          # names, archives, cache state
#   e2e/env/images/build.sh --import-only [image…]          # import already built archives
#   e2e/env/images/build.sh --prune                         # drop buildah's dangling layer cache
#
# Images (short name -> full name as the manifests spell it, normalised the way containerd
# stores it):
#   base         docker.io/library/debian:bookworm-slim   debootstrap --variant=minbase, slimmed
#   jre          localhost/tern/jre:17                    base + jlinked JDK 17 runtime (shared layer)
#   redis        docker.io/library/redis:7.0              Debian's redis-server 7.0.x + upstream entrypoint contract
#   kafka        docker.io/apache/kafka:4.1.1             Maven Central jars + /etc/kafka/docker/run
#   cassandra    docker.io/library/cassandra:5.0.6        Maven Central jars + docker-entrypoint.sh
#   chat-server  ghcr.io/tern/chat-server:0.1.0           docker/chat-server.Dockerfile, prebuilt binary
#   operator     ghcr.io/tern/tern-operator:0.1.0         docker/operator.Dockerfile, prebuilt binary
#
# How: Debian's buildah (daemonless, `--isolation chroot`, overlay storage under the cache)
# runs the Dockerfiles/Containerfiles; `buildah push` writes an OCI layout (gzip layers, so a
# layer shared by two images has one digest), its index gets the `io.containerd.image.name`
# annotation, and it is tarred into $TERN_CACHE/images/archives/<image>.oci.tar. Every image
# is keyed on its inputs (files in this directory, the Dockerfile, versions, binary and jar
# hashes, the parent image's manifest digest) and rebuilt only when the key changes.
# `./smoke.sh` runs the built images the way the operator's pods do and checks them.
#
# Knobs: TERN_CACHE, CARGO_TARGET_DIR (default $HOME/.cache/tern/target),
# TERN_CHAT_SERVER_BIN, TERN_OPERATOR_BIN (default $CARGO_TARGET_DIR/debug/<bin>),
# TERN_CONTAINERD_SOCK (default $TERN_CACHE/run/node/containerd/containerd.sock),
# TERN_DEBIAN_MIRROR (default: the first deb.debian.org-style URI of /etc/apt/sources.list*),
# TERN_IMAGES_PRUNE_MB (4096: prune buildah's dangling layer cache above this size).
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
SVC=images

IMAGES_DIR="$E2E_ENV_DIR/images"
REPO_ROOT="$(cd "$E2E_ENV_DIR/../.." && pwd)"
IMG_CACHE="$TERN_CACHE/images"
ARCHIVES="$IMG_CACHE/archives"
STATE="$IMG_CACHE/state"
WORK="$IMG_CACHE/work"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern/target}"
TERN_CHAT_SERVER_BIN="${TERN_CHAT_SERVER_BIN:-$CARGO_TARGET_DIR/debug/chat-server}"
TERN_OPERATOR_BIN="${TERN_OPERATOR_BIN:-$CARGO_TARGET_DIR/debug/tern-operator}"
TERN_CONTAINERD_SOCK="${TERN_CONTAINERD_SOCK:-$TERN_CACHE/run/node/containerd/containerd.sock}"
DEBIAN_SUITE=bookworm

ALL_IMAGES="base jre redis kafka cassandra chat-server operator"

# image_name SHORT: the full (containerd-normalised) name.
image_name() {
	case "$1" in
	base) echo docker.io/library/debian:bookworm-slim ;;
	jre) echo localhost/tern/jre:17 ;;
	redis) echo docker.io/library/redis:7.0 ;;
	kafka) echo "docker.io/apache/kafka:$KAFKA_VERSION" ;;
	cassandra) echo "docker.io/library/cassandra:$CASSANDRA_VERSION" ;;
	chat-server) echo ghcr.io/tern/chat-server:0.1.0 ;;
	operator) echo ghcr.io/tern/tern-operator:0.1.0 ;;
	*) die "unknown image '$1' (known: $ALL_IMAGES)" ;;
	esac
}
# image_parent SHORT: the image this one is built FROM (built first).
image_parent() {
	case "$1" in
	base) echo "" ;;
	kafka | cassandra) echo jre ;;
	*) echo base ;;
	esac
}

# ---------------------------------------------------------------------------------------
# buildah

ensure_tools() {
	local pkgs=()
	command -v buildah >/dev/null 2>&1 || pkgs+=(buildah)
	command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
	command -v jq >/dev/null 2>&1 || pkgs+=(jq)
	((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
	[[ "$(id -u)" == 0 ]] || die "run as root (debootstrap and buildah's chroot isolation need it)"
}

bah() {
	buildah --root "$IMG_CACHE/buildah/root" --runroot "$IMG_CACHE/buildah/runroot" \
		--storage-driver overlay "$@"
}

# in_buildah SHORT KEY: the image is in buildah's storage and was built from KEY.
in_buildah() {
	local id
	id="$(bah inspect --type image --format '{{.FromImageID}}' "$(image_name "$1")" 2>/dev/null)" || return 1
	[[ -n "$id" && -f "$STATE/$1.buildah" && "$(cat "$STATE/$1.buildah")" == "$2" ]]
}

# load_into_buildah SHORT: put a built archive (back) into buildah's storage, for children.
load_into_buildah() {
	local name key
	name="$(image_name "$1")"
	key="$(cat "$STATE/$1.key")"
	in_buildah "$1" "$key" && return 0
	log "$1: loading $ARCHIVES/$1.oci.tar into buildah storage"
	local id
	id="$(bah pull -q "oci-archive:$ARCHIVES/$1.oci.tar" | tail -1)"
	bah tag "$id" "$name"
	echo "$key" >"$STATE/$1.buildah"
}

# export_image SHORT: buildah storage -> $ARCHIVES/SHORT.oci.tar (OCI layout with the
# containerd name annotation).
export_image() {
	local short="$1" name tag layout tmp
	name="$(image_name "$short")"
	tag="${name##*:}"
	layout="$WORK/$short/oci"
	mkdir -p "$WORK/$short"
	rm -rf "$layout"
	bah push -q --format oci --remove-signatures "$name" "oci:$layout:$tag" >/dev/null
	tmp="$(mktemp "$layout/index.XXXX")"
	jq --arg n "$name" --arg t "$tag" \
		'.manifests |= map(.annotations = ((.annotations // {}) + {"io.containerd.image.name": $n, "org.opencontainers.image.ref.name": $t}))' \
		"$layout/index.json" >"$tmp"
	mv "$tmp" "$layout/index.json"
	jq -r '.manifests[0].digest' "$layout/index.json" >"$STATE/$short.digest"
	tar -C "$layout" --sort=name --owner=0 --group=0 --numeric-owner -cf "$ARCHIVES/$short.oci.tar.tmp" .
	mv "$ARCHIVES/$short.oci.tar.tmp" "$ARCHIVES/$short.oci.tar"
	rm -rf "$layout"
}

# ---------------------------------------------------------------------------------------
# inputs and keys

sha_files() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }
sha_file() { sha256sum "$1" | cut -c1-16; }

debian_mirror() {
	if [[ -n "${TERN_DEBIAN_MIRROR:-}" ]]; then
		echo "$TERN_DEBIAN_MIRROR"
		return
	fi
	local uri
	uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
		grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -1 | tr -d ' ')"
	echo "${uri:-http://deb.debian.org/debian}"
}

bin_path() {
	case "$1" in
	chat-server) echo "$TERN_CHAT_SERVER_BIN" ;;
	operator) echo "$TERN_OPERATOR_BIN" ;;
	esac
}

# check_binary PATH: exists, is an x86-64 ELF, and all its libraries resolve on bookworm
# (the host is bookworm; the image is bookworm, same glibc).
check_binary() {
	local b="$1" missing
	[[ -x "$b" ]] || die "binary $b not found: build it first (cargo build -p chat-server -p tern-operator; CARGO_TARGET_DIR=$CARGO_TARGET_DIR) or set TERN_CHAT_SERVER_BIN / TERN_OPERATOR_BIN"
	missing="$(ldd "$b" 2>&1 | grep -E 'not found' || true)"
	[[ -z "$missing" ]] || die "$b has unresolved libraries: $missing"
}

# image_key SHORT: everything that should trigger a rebuild.
image_key() {
	local s="$1" parent k
	parent="$(image_parent "$s")"
	k="v1 $s $(image_name "$s")"
	# the parent's manifest digest: a rebuilt parent (new layers) rebuilds its children
	[[ -n "$parent" ]] && k+=" parent=$(cat "$STATE/$parent.digest")"
	case "$s" in
	base) k+=" suite=$DEBIAN_SUITE mirror=$(debian_mirror) files=$(sha_files "$IMAGES_DIR/base")" ;;
	jre) k+=" java=$(java_version_string | sha256sum | cut -c1-16) files=$(sha_files "$IMAGES_DIR/jre")" ;;
	redis) k+=" files=$(sha_files "$IMAGES_DIR/redis")" ;;
	kafka) k+=" kafka=$KAFKA_VERSION jars=$(jar_list_hash "$(kafka_home)/lib") files=$(sha_files "$IMAGES_DIR/kafka")" ;;
	cassandra) k+=" cassandra=$CASSANDRA_VERSION jars=$(jar_list_hash "$(cassandra_home)/lib") files=$(sha_files "$IMAGES_DIR/cassandra")" ;;
	chat-server) k+=" dockerfile=$(sha_file "$REPO_ROOT/docker/chat-server.Dockerfile") bin=$(sha_file "$TERN_CHAT_SERVER_BIN")" ;;
	operator) k+=" dockerfile=$(sha_file "$REPO_ROOT/docker/operator.Dockerfile") bin=$(sha_file "$TERN_OPERATOR_BIN")" ;;
	esac
	echo "$k"
}

java_version_string() { "$(java_home)/bin/java" -version 2>&1; }
java_home() {
	local j
	j="$(readlink -f "$(java_bin)")"
	echo "${j%/bin/java}"
}
jar_list_hash() { (cd "$1" && find . -name '*.jar' -printf '%f %s\n' | sort) | sha256sum | cut -c1-16; }
kafka_home() { echo "$TERN_PKG/kafka-$KAFKA_SCALA_VERSION-$KAFKA_VERSION"; }
cassandra_home() { echo "$TERN_PKG/cassandra-$CASSANDRA_VERSION"; }

# ---------------------------------------------------------------------------------------
# per-image builds (each leaves the image in buildah storage under its full name)

# base: debootstrap minbase, slimmed like Debian's official -slim images.
build_base() {
	local w="$WORK/base" rootfs mirror
	rootfs="$w/rootfs"
	mirror="$(debian_mirror)"
	rm -rf "$w"
	mkdir -p "$w"
	log "base: debootstrap --variant=minbase $DEBIAN_SUITE from $mirror (~1 min)"
	nice -n 10 debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" "$mirror" >"$w/debootstrap.log" 2>&1 || {
		log_tail "$w/debootstrap.log" 30
		die "debootstrap failed (log: $w/debootstrap.log)"
	}
	log "base: apt-get upgrade (security + updates) and slimming"
	SLIM_LOG="$w/slim.log" "$IMAGES_DIR/base/slim.sh" "$rootfs"
	log "base: rootfs $(du -sh "$rootfs" | cut -f1); committing"
	tar -C "$rootfs" --sort=name --numeric-owner --xattrs -cf "$w/rootfs.tar" .
	local c
	c="$(bah from --pull-never scratch)"
	bah add "$c" "$w/rootfs.tar" / >/dev/null
	bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--cmd bash --os linux --arch amd64 \
		--label "org.opencontainers.image.description=Debian $DEBIAN_SUITE minbase (debootstrap, slimmed) built by e2e/env/images" \
		"$c"
	bah commit -q --rm "$c" "$(image_name base)" >/dev/null
	rm -rf "$rootfs" "$w/rootfs.tar"
}

# bud SHORT CONTEXT CONTAINERFILE [buildah bud args…]
bud() {
	local short="$1" ctx="$2" file="$3"
	shift 3
	local logf="$WORK/$short.build.log" nocache=()
	[[ " $FORCE " == *" $short "* ]] && nocache=(--no-cache)
	mkdir -p "$WORK"
	log "$short: buildah bud -f ${file#"$REPO_ROOT"/} (log $logf)"
	nice -n 10 buildah --root "$IMG_CACHE/buildah/root" --runroot "$IMG_CACHE/buildah/runroot" \
		--storage-driver overlay bud --isolation chroot --pull-never --layers \
		"${nocache[@]}" -f "$file" -t "$(image_name "$short")" "$@" "$ctx" >"$logf" 2>&1 || {
		log_tail "$logf" 40
		bah rm --all >/dev/null 2>&1 || true
		die "$short: buildah bud failed (log: $logf)"
	}
	# buildah 1.28 leaves the working containers of `FROM <stage>` stages behind (mounted):
	# nothing else uses this storage (builds hold the images lock), so remove them all
	bah rm --all >/dev/null
}

build_jre() {
	local ctx="$WORK/jre/ctx" jh
	jh="$(java_home)"
	[[ -x "$jh/bin/jlink" ]] || apt_install openjdk-17-jdk-headless
	rm -rf "$WORK/jre"
	mkdir -p "$ctx"
	local mods
	mods="$(grep -vE '^\s*(#|$)' "$IMAGES_DIR/jre/modules" | paste -sd, -)"
	log "jre: jlink from $jh"
	nice -n 10 "$jh/bin/jlink" --add-modules "$mods" --include-locales=en \
		--strip-debug --no-man-pages --no-header-files --compress=2 --output "$ctx/jre"
	# A class-data-sharing archive for the runtime's own classes (faster JVM start).
	"$ctx/jre/bin/java" -Xshare:dump >/dev/null 2>&1 || true
	cp "$IMAGES_DIR/jre/Containerfile" "$ctx/"
	log "jre: $(du -sh "$ctx/jre" | cut -f1) runtime"
	bud jre "$ctx" "$ctx/Containerfile"
}

build_redis() {
	bud redis "$IMAGES_DIR/redis" "$IMAGES_DIR/redis/Containerfile"
}

# ensure_jars SVC HOME: the jar set the host service runs (Maven Central, resolved by
# e2e/env/services/SVC.sh install into $TERN_CACHE/pkg; a no-op when already there)
ensure_jars() {
	if [[ ! -f "$2/.installed" ]]; then
		log "$1: jars not in $2 yet: e2e/env/services/$1.sh install"
		"$E2E_ENV_DIR/services/$1.sh" install
	fi
	[[ -d "$2/lib" ]] || die "$1: no jars in $2/lib after install"
}

stage_jars() {
	local src="$1" dst="$2"
	[[ -d "$src" ]] || die "jar set $src missing: run e2e/env/services/${3}.sh install first"
	mkdir -p "$dst"
	# hard links: same filesystem, no copy
	cp -al "$src"/*.jar "$dst/" 2>/dev/null || cp -a "$src"/*.jar "$dst/"
}

build_kafka() {
	local ctx="$WORK/kafka/ctx"
	rm -rf "$WORK/kafka"
	mkdir -p "$ctx"
	stage_jars "$(kafka_home)/lib" "$ctx/libs" kafka
	cp -a "$IMAGES_DIR/kafka/." "$ctx/"
	bud kafka "$ctx" "$ctx/Containerfile" --build-arg "KAFKA_VERSION=$KAFKA_VERSION"
}

build_cassandra() {
	local ctx="$WORK/cassandra/ctx"
	rm -rf "$WORK/cassandra"
	mkdir -p "$ctx"
	stage_jars "$(cassandra_home)/lib" "$ctx/lib" cassandra
	cp -a "$IMAGES_DIR/cassandra/." "$ctx/"
	bud cassandra "$ctx" "$ctx/Containerfile" --build-arg "CASSANDRA_VERSION=$CASSANDRA_VERSION"
}

# chat-server / operator: the repository's Dockerfile, with BINARY=prebuilt so the Rust build
# stage is skipped and the binary comes from a tiny build context holding just it.
build_rust_image() {
	local short="$1" bin binname dockerfile ctx
	bin="$(bin_path "$short")"
	case "$short" in
	chat-server) binname=chat-server dockerfile="$REPO_ROOT/docker/chat-server.Dockerfile" ;;
	operator) binname=tern-operator dockerfile="$REPO_ROOT/docker/operator.Dockerfile" ;;
	esac
	ctx="$WORK/$short/ctx"
	rm -rf "${WORK:?}/$short"
	mkdir -p "$ctx"
	# Debug binaries carry hundreds of MB of DWARF: strip it for the image (symbols stay, so
	# backtraces still name functions).
	objcopy --strip-debug "$bin" "$ctx/$binname"
	log "$short: $bin ($(du -h "$bin" | cut -f1)) -> stripped $(du -h "$ctx/$binname" | cut -f1)"
	bud "$short" "$ctx" "$dockerfile" --build-arg BINARY=prebuilt
	# the binary was linked on the host: check that the image's libraries satisfy it
	local c out
	c="$(bah from --pull-never "$(image_name "$short")")"
	out="$(bah run --isolation chroot --user 0 "$c" -- ldd "/usr/local/bin/$binname" 2>&1)" || true
	bah rm "$c" >/dev/null
	if [[ "$out" == *"not found"* || "$out" != *libc.so.6* ]]; then
		die "$short: /usr/local/bin/$binname does not link inside the image:
$out"
	fi
}

build_chat_server() { build_rust_image chat-server; }
build_operator() { build_rust_image operator; }

# ---------------------------------------------------------------------------------------

build_one() {
	local s="$1" key t0
	case "$s" in
	chat-server | operator) check_binary "$(bin_path "$s")" ;;
	kafka) ensure_jars kafka "$(kafka_home)" ;;
	cassandra) ensure_jars cassandra "$(cassandra_home)" ;;
	esac
	key="$(image_key "$s")"
	if [[ " $FORCE " != *" $s "* && -f "$ARCHIVES/$s.oci.tar" && -f "$STATE/$s.digest" && -f "$STATE/$s.key" && "$(cat "$STATE/$s.key")" == "$key" ]]; then
		log "$s: up to date ($(image_name "$s"), $(du -h "$ARCHIVES/$s.oci.tar" | cut -f1))"
		return 0
	fi
	t0="$(now_s)"
	log "$s: building $(image_name "$s")"
	rm -f "$STATE/$s.key" "$STATE/$s.buildah"
	"build_${s//-/_}"
	export_image "$s"
	echo "$key" >"$STATE/$s.key"
	echo "$key" >"$STATE/$s.buildah"
	rm -rf "$WORK/$s/ctx"
	log "$s: built in $(elapsed_since "$t0")s -> $ARCHIVES/$s.oci.tar ($(du -h "$ARCHIVES/$s.oci.tar" | cut -f1))"
}

# with_parents IMAGE…: the images plus everything they are built from, in build order.
with_parents() {
	local want=" $* " s p out=""
	for s in "$@"; do
		p="$(image_parent "$s")"
		while [[ -n "$p" ]]; do
			want+=" $p "
			p="$(image_parent "$p")"
		done
	done
	for s in $ALL_IMAGES; do [[ "$want" == *" $s "* ]] && out+="$s "; done
	echo "$out"
}

# chain_id SHORT: the snapshot (chain) id of the image's top layer, from its config's diff_ids
chain_id() {
	local a="$ARCHIVES/$1.oci.tar" m cfg chain="" d
	m="$(tar -xOf "$a" ./index.json | jq -r '.manifests[0].digest | sub("sha256:"; "")')"
	cfg="$(tar -xOf "$a" "./blobs/sha256/$m" | jq -r '.config.digest | sub("sha256:"; "")')"
	for d in $(tar -xOf "$a" "./blobs/sha256/$cfg" | jq -r '.rootfs.diff_ids[]'); do
		if [[ -z "$chain" ]]; then
			chain="$d"
		else
			chain="sha256:$(printf '%s %s' "$chain" "$d" | sha256sum | cut -d' ' -f1)"
		fi
	done
	echo "$chain"
}
# unpacked SHORT: containerd has the image's layers unpacked (an import cut short by a
# containerd restart leaves the image record without its snapshots)
unpacked() {
	ctr --address "$TERN_CONTAINERD_SOCK" -n k8s.io snapshots info "$(chain_id "$1")" >/dev/null 2>&1
}

import_one() {
	local s="$1" name
	name="$(image_name "$s")"
	[[ -f "$ARCHIVES/$s.oci.tar" ]] || die "$s: no archive $ARCHIVES/$s.oci.tar (build it first)"
	[[ -S "$TERN_CONTAINERD_SOCK" ]] || die "containerd socket $TERN_CONTAINERD_SOCK not found (start the node, or set TERN_CONTAINERD_SOCK)"
	need_cmd ctr "apt-get install containerd (only the ctr client is used)"
	local t0 have
	have="$(ctr --address "$TERN_CONTAINERD_SOCK" -n k8s.io images ls "name==$name" 2>/dev/null | awk 'NR > 1 { print $3 }')"
	if [[ -n "$have" && "$have" == "$(cat "$STATE/$s.digest" 2>/dev/null)" ]] && unpacked "$s"; then
		log "$s: containerd already has $name at ${have:0:19}"
		return 0
	fi
	t0="$(now_s)"
	local try
	for try in 1 2 3; do
		if ctr --address "$TERN_CONTAINERD_SOCK" -n k8s.io images import "$ARCHIVES/$s.oci.tar" >"$WORK/$s.import.log" 2>&1; then
			break
		fi
		# a containerd restarted under us ("transport is closing"): wait for it, try again
		if ((try < 3)) && grep -qE 'transport is closing|connection refused|Unavailable|unavailable' "$WORK/$s.import.log"; then
			warn "$s: import interrupted (containerd restarting?): retrying in 5 s"
			sleep 5
			continue
		fi
		log_tail "$WORK/$s.import.log" 20
		die "$s: ctr images import failed"
	done
	ctr --address "$TERN_CONTAINERD_SOCK" -n k8s.io images ls -q "name==$name" | grep -qx "$name" ||
		die "$s: imported, but containerd does not list $name"
	log "$s: imported $name into containerd (k8s.io) in $(elapsed_since "$t0")s"
}

list_images() {
	local s st
	printf '%-12s %-42s %-8s %s\n' IMAGE NAME SIZE STATE
	for s in $ALL_IMAGES; do
		st="not built"
		if [[ -f "$ARCHIVES/$s.oci.tar" ]]; then
			st="built $(date -r "$ARCHIVES/$s.oci.tar" '+%F %T') $ARCHIVES/$s.oci.tar"
		fi
		printf '%-12s %-42s %-8s %s\n' "$s" "$(image_name "$s")" \
			"$([[ -f "$ARCHIVES/$s.oci.tar" ]] && du -h "$ARCHIVES/$s.oci.tar" | cut -f1 || echo -)" "$st"
	done
}

main() {
	local do_import=0 do_build=1 want=()
	FORCE="" # images to rebuild even when up to date (--force: the named ones)
	local force=0
	while (($#)); do
		case "$1" in
		--import) do_import=1 ;;
		--import-only)
			do_import=1
			do_build=0
			;;
		--force) force=1 ;;
		--list)
			list_images
			return 0
			;;
		--prune)
			bah rm --all >/dev/null 2>&1 || true
			bah rmi --prune >/dev/null
			log "pruned dangling images (build cache); buildah storage now $(du -sh "$IMG_CACHE/buildah" | cut -f1)"
			return 0
			;;
		-h | --help)
			sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
			return 0
			;;
		-*) die "unknown option $1 (see --help)" ;;
		*)
			image_name "$1" >/dev/null
			want+=("$1")
			;;
		esac
		shift
	done
	((${#want[@]})) || read -ra want <<<"$ALL_IMAGES"
	((force)) && FORCE="${want[*]}"
	mkdir -p "$ARCHIVES" "$STATE" "$WORK"
	if ((do_build)); then
		ensure_tools
		local t0 order s
		t0="$(now_s)"
		order="$(with_parents "${want[@]}")"
		exec 8>"$TERN_CACHE/locks/images.lock"
		flock 8
		for s in $order; do
			# a child needs its parent in buildah's storage (after a cache wipe, from the archive)
			[[ -n "$(image_parent "$s")" ]] && load_into_buildah "$(image_parent "$s")"
			build_one "$s"
		done
		log "done in $(elapsed_since "$t0")s: ${want[*]}"
		# buildah keeps every superseded image as a dangling layer cache: bound it
		local mb
		mb="$(du -sm "$IMG_CACHE/buildah" | cut -f1)"
		if ((mb > ${TERN_IMAGES_PRUNE_MB:-4096})); then
			log "buildah storage is ${mb} MB (> ${TERN_IMAGES_PRUNE_MB:-4096}): pruning dangling images"
			bah rmi --prune >/dev/null || true
		fi
	fi
	if ((do_import)); then
		for s in "${want[@]}"; do
			[[ "$s" == jre ]] && continue
			import_one "$s"
		done
	fi
}

main "$@"
