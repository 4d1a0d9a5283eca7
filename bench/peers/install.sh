#!/usr/bin/env bash
# Install the peers at pinned versions into $PEERS_CACHE (default ~/.cache/tern/peers), outside
# the checkout. Idempotent: a peer whose stamp file exists is skipped. Uses only the ordinary
# package clients: the Go module proxy (go install), PyPI (pip), npm, and Debian's packages
# (PostgreSQL, Redis) when they are missing.
#
#   bench/peers/install.sh            # all peers
#   bench/peers/install.sh centrifugo # one of: centrifugo synapse socketio debs
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.sh"
mkdir -p "$PEERS_CACHE"
want=${*:-debs centrifugo synapse socketio}

debs() {
  local missing=()
  command -v pg_ctlcluster >/dev/null || [ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v taskset >/dev/null || missing+=(util-linux)
  dpkg -s libpq-dev >/dev/null 2>&1 || missing+=(libpq-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

centrifugo() {
  local dir="$PEERS_CACHE/centrifugo-$CENTRIFUGO_VERSION"
  [ -x "$dir/bin/centrifugo" ] && { echo "centrifugo $CENTRIFUGO_VERSION: cached"; return; }
  echo "centrifugo $CENTRIFUGO_VERSION: go install (a few minutes the first time)"
  mkdir -p "$dir/bin"
  # The release builds set the version with -ldflags; so does this one (usage stats stay off:
  # their endpoint is empty, and the config disables them too).
  GOBIN="$dir/bin" GOFLAGS=-modcacherw CGO_ENABLED=0 \
    go install -ldflags "-X github.com/centrifugal/centrifugo/v6/internal/build.Version=${CENTRIFUGO_VERSION#v}" \
    "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION"
  "$dir/bin/centrifugo" version
}

synapse() {
  local dir="$PEERS_CACHE/synapse-$SYNAPSE_VERSION"
  [ -f "$dir/.installed" ] && { echo "synapse $SYNAPSE_VERSION: cached"; return; }
  echo "synapse $SYNAPSE_VERSION: pip install into a venv"
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install -q "matrix-synapse[postgres]==$SYNAPSE_VERSION"
  "$dir/venv/bin/python" -c 'import synapse; print("synapse", synapse.__version__)'
  touch "$dir/.installed"
}

socketio() {
  local dir="$PEERS_CACHE/socketio-$SOCKETIO_VERSION"
  if [ -f "$dir/.installed" ] && cmp -s "$HERE/socketio/package-lock.json" "$dir/package-lock.json"; then
    cp "$HERE/socketio/server.js" "$dir/server.js"
    echo "socket.io $SOCKETIO_VERSION: cached"; return
  fi
  echo "socket.io $SOCKETIO_VERSION: npm ci"
  mkdir -p "$dir"
  cp "$HERE/socketio/package.json" "$HERE/socketio/package-lock.json" "$HERE/socketio/server.js" "$dir/"
  (cd "$dir" && npm ci --silent --no-audit --no-fund)
  touch "$dir/.installed"
}

for p in $want; do "$p"; done
