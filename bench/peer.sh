#!/usr/bin/env bash
# peer.sh builds another chat server, if it is not built yet, and runs it on
# 127.0.0.1:PORT, for bench -peer to measure beside this one (README,
# Performance). Nothing of it is committed: it is built from the Go module
# proxy or npm into ${PEERS:-/tmp/chat-peers}. With PORT "build" it only
# builds: do that once first, so that the build does not run pinned beside
# the generator (which waits for the server to listen).
#
#   bench/peer.sh centrifugo build
#   GOMAXPROCS=1 taskset -c 0 bench/peer.sh centrifugo 18092 &
#   taskset -c 1 /tmp/bench -peer centrifugo -url http://127.0.0.1:18092 -server-pid $! \
#       -clients 10000 -rooms 1000 -senders 1000 -rate 10000 -duration 10s
#
# The peers, at the versions the README's tables measured:
#   gorilla     gorilla/websocket's chat example, v1.5.3
#   socketio    the chat of Socket.IO's "Get started" guide, socket.io 4.8.4 on Node.js
#   centrifugo  Centrifugo v6.9.1, anonymous clients that may subscribe to
#               and publish into any channel (a channel is a room)
set -euo pipefail
peer=${1:?usage: peer.sh gorilla|socketio|centrifugo PORT|build}
port=${2:?usage: peer.sh gorilla|socketio|centrifugo PORT|build}
dir=${PEERS:-/tmp/chat-peers}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd) # absolute: the builds run elsewhere

# run starts the built peer, unless only a build was asked for.
run() {
	if [ "$port" = build ]; then
		exit 0
	fi
	exec "$@"
}

case $peer in
gorilla)
	if [ ! -x "$dir/gorilla-chat" ]; then
		go mod download github.com/gorilla/websocket@v1.5.3
		src=$(mktemp -d)
		cp "$(go env GOMODCACHE)"/github.com/gorilla/websocket@v1.5.3/examples/chat/*.go "$src"
		chmod u+w "$src"/*.go
		printf 'module gchat\ngo 1.25\nrequire github.com/gorilla/websocket v1.5.3\n' >"$src/go.mod"
		(cd "$src" && GOFLAGS=-mod=mod go build -o "$dir/gorilla-chat" .)
		rm -rf "$src"
	fi
	# It serves home.html from its working directory, which the bench does not need.
	run "$dir/gorilla-chat" -addr "127.0.0.1:$port"
	;;
socketio)
	if [ ! -d "$dir/sio/node_modules/socket.io" ]; then
		mkdir -p "$dir/sio"
		(cd "$dir/sio" && npm install --no-audit --no-fund socket.io@4.8.4 >/dev/null)
	fi
	cat >"$dir/sio/server.js" <<'JS'
const io = new (require('socket.io').Server)(require('node:http').createServer().listen(+process.argv[2], '127.0.0.1'));
io.on('connection', (socket) => socket.on('chat message', (msg) => io.emit('chat message', msg)));
JS
	run node "$dir/sio/server.js" "$port"
	;;
centrifugo)
	if [ ! -x "$dir/centrifugo" ]; then
		GOBIN=$dir go install github.com/centrifugal/centrifugo/v6@v6.9.1
	fi
	[ "$port" = build ] && exit 0
	cat >"$dir/centrifugo.json" <<JSON
{
  "http_server": {"address": "127.0.0.1", "port": $port},
  "log": {"level": "error"},
  "client": {"allow_anonymous_connect_without_token": true, "allowed_origins": ["*"]},
  "health": {"enabled": true},
  "channel": {"without_namespace": {
    "allow_subscribe_for_anonymous": true, "allow_subscribe_for_client": true,
    "allow_publish_for_anonymous": true, "allow_publish_for_client": true
  }}
}
JSON
	run "$dir/centrifugo" -c "$dir/centrifugo.json"
	;;
*)
	echo "peer.sh: no peer $peer: gorilla, socketio or centrifugo" >&2
	exit 2
	;;
esac
