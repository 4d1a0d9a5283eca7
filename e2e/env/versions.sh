# shellcheck shell=bash
# shellcheck disable=SC2034 # variables here are used by the scripts that source this file
# Every pinned version of the real-services test environment, in one place.
# Sourced by lib.sh. Changing a version here makes the next `up.sh` rebuild/re-download
# that one component into a new versioned directory of the cache (old ones stay until you
# delete them from ${TERN_CACHE:-$HOME/.cache/tern}).

# --- Debian packages (apt) -------------------------------------------------------------
# Debian 12 ships redis-server 7.0.x; we take what apt has and record it.
REDIS_APT_PACKAGES="redis-server redis-tools"
# The Kubernetes node (services/node.sh): containerd 1.6.20, runc 1.1.5, CNI plugins 1.1.1 on
# Debian 12; busybox-static 1.35.0 goes into the test image; iptables for kube-proxy and the
# node's own isolation rules (not on every fresh machine: a clean VM of this kind had none);
# nftables only to drop the empty iptables tables kube-proxy leaves behind at `down`.
NODE_APT_PACKAGES="containerd runc containernetworking-plugins busybox-static iptables nftables gcc libc6-dev"
# e2e/test-ha.sh's cut test (iptables rules on a group id).
HA_APT_PACKAGES="iptables"

# --- Maven Central -----------------------------------------------------------------------
KAFKA_VERSION="4.1.1"              # org.apache.kafka:kafka_2.13 (KRaft only in 4.x)
KAFKA_SCALA_VERSION="2.13"
KAFKA_LOG4J2_VERSION="2.24.3"      # org.apache.logging.log4j:log4j-core / log4j-slf4j2-impl
KAFKA_SLF4J_VERSION="2.0.17"        # org.slf4j:slf4j-api (log4j-slf4j2-impl needs 2.x; Maven would pick 1.7)
CASSANDRA_VERSION="5.0.6"          # org.apache.cassandra:cassandra-all, runs on JDK 17

# --- PyPI (tools venv used by the health checks) -----------------------------------------
PY_CASSANDRA_DRIVER_VERSION="3.29.2"
PY_CONFLUENT_KAFKA_VERSION="2.12.1"
PY_BOTO3_VERSION="1.40.61"

# --- Go module proxy ---------------------------------------------------------------------
ETCD_VERSION="v3.6.13"             # go.etcd.io/etcd/server/v3 (k8s 1.34 wants etcd >= 3.5.13; 3.6 recommended)
KUBERNETES_VERSION="v1.34.4"       # k8s.io/kubernetes -> kube-apiserver, kubectl, kube-controller-manager, kube-scheduler, kubelet, kube-proxy (k8s-openapi feature v1_34)
KUBERNETES_STAGING_VERSION="v0.34.4"  # k8s.io/<staging> modules matching KUBERNETES_VERSION
HELM_VERSION="v3.19.0"             # helm.sh/helm/v3/cmd/helm
COREDNS_VERSION="v1.13.1"          # github.com/coredns/coredns (1.13.1 is built on client-go 0.34, the node's k8s line)
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"  # github.com/minio/minio (no semver tags: pseudo-version)

# --- Images the node builds itself (e2e/env/node/oci-image.py), never pulled -----------------
NODE_PAUSE_IMAGE="registry.k8s.io/pause:3.10.1"   # static C pause (e2e/env/node/pause.c); kubelet 1.34's default name
NODE_COREDNS_IMAGE="tern.local/coredns:$COREDNS_VERSION"
NODE_BUSYBOX_IMAGE="tern.local/busybox:1.35.0"     # Debian busybox-static (its wget segfaults; nc works)
