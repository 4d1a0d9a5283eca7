# Pinned peer versions (sourced by install.sh and run.sh). Change a version here and re-run
# install.sh: each version installs into its own directory under $PEERS_CACHE.
CENTRIFUGO_VERSION=v6.9.1
SYNAPSE_VERSION=1.163.0
# socket.io's exact version is pinned in bench/peers/socketio/package.json (+ package-lock.json).
SOCKETIO_VERSION=4.8.4
PEERS_CACHE=${PEERS_CACHE:-$HOME/.cache/tern/peers}
