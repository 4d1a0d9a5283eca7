#!/usr/bin/env bash
# Slim a debootstrap'ed rootfs the way Debian's official `debian:<suite>-slim` images are:
# dpkg path excludes for docs/man/locales, apt configured like the docker images (no caches,
# no translations, gzip'ed indexes, lists removed), no host files (resolv.conf, hostname).
# Usage: [SLIM_LOG=file] slim.sh ROOTFS
set -euo pipefail
r="$1"
[[ -d "$r/etc/apt" ]] || { echo "slim.sh: $r is not a Debian rootfs" >&2; exit 1; }

# Same sources as the official image: the suite, its updates and security.
rm -f "$r/etc/apt/sources.list"
cat >"$r/etc/apt/sources.list.d/debian.sources" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC

mkdir -p "$r/etc/dpkg/dpkg.cfg.d"
cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
# as in debian:*-slim: no docs, man pages, info or translations in packages installed later
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' >"$r/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"$r/etc/apt/apt.conf.d/docker-gzip-indexes"
printf 'Apt::AutoRemove::SuggestsImportant "false";\n' >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
# policy-rc.d: never start services from maintainer scripts inside a build
printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
chmod 755 "$r/usr/sbin/policy-rc.d"

# security and point-release updates (debootstrap installs the suite only), in a private
# mount namespace so /proc and resolv.conf never leak out of the chroot
cp /etc/resolv.conf "$r/etc/resolv.conf"
unshare --mount --fork sh -ec '
	mount -t proc proc "$1/proc"
	DEBIAN_FRONTEND=noninteractive chroot "$1" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive chroot "$1" apt-get -y -qq -o Dpkg::Options::=--force-confold upgrade
	umount "$1/proc"
' sh "$r" >"${SLIM_LOG:-/dev/stderr}" 2>&1 || { echo "slim.sh: apt-get upgrade in the chroot failed${SLIM_LOG:+ (log: $SLIM_LOG)}" >&2; exit 1; }

# what the package excludes would have kept out of the bootstrap itself
find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$r"/usr/share/{man,groff,info,lintian,linda}/* "$r"/usr/share/locale/*
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/*
rm -rf "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r"/var/cache/ldconfig/aux-cache
find "$r/var/log" -type f -delete
rm -rf "$r"/tmp/* "$r"/var/tmp/* "$r"/root/.bash_history

# runtime-provided files: empty, the container runtime bind-mounts the real ones
: >"$r/etc/resolv.conf"
: >"$r/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
rm -f "$r/etc/machine-id" "$r/var/lib/dbus/machine-id"
: >"$r/etc/machine-id"
chmod 644 "$r/etc/resolv.conf" "$r/etc/hostname" "$r/etc/hosts"
