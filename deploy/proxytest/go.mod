module chat/deploy/proxytest

go 1.25

require github.com/coder/websocket v1.8.15
