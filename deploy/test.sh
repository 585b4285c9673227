#!/usr/bin/env bash
# The shipped deploy files, tested with the real proxies: `bash deploy/test.sh`
# from the repository.
#
# For nginx and for Caddy, at the same time: start the chat server (the
# real binary) on a free loopback port, start the proxy with the SHIPPED
# config, and run deploy/proxytest through it over https and wss. Only
# ports, certificate paths and the upstream port are changed, by sed over
# the shipped file; nginx's site is included from a small wrapper (pid,
# logs and temp files in a temp dir), Caddy's is imported after global
# options (ports, its own local CA instead of Let's Encrypt, no admin
# endpoint). The host name stays chat.example.com: the client dials the
# proxy on loopback and sends that name, as a browser would. Meanwhile a
# real browser (e2e/proxy.test.js: Chromium, told that chat.example.com is
# nginx's address) chats through nginx.
#
# Installs nginx, caddy, openssl, Chromium and Node.js if they are missing
# (Debian), and e2e's npm packages. Prints a
# PASS or FAIL line per check, ends with "proxy: N passed, M failed", and
# exits 1 if anything failed. About 80 s: one WebSocket stays idle 65 s.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
started=$SECONDS

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v caddy >/dev/null || missing+=(caddy)
command -v openssl >/dev/null || missing+=(openssl)
command -v chromium >/dev/null || missing+=(chromium)
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  echo "== installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

tmp=$(mktemp -d /tmp/chat-proxy.XXXXXX)
chmod 755 "$tmp" # nginx's workers run as nobody and keep temp files here
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

passed=0 failed=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }

echo "== building the server and the test client"
go build -o "$tmp/chat" .
(cd deploy/proxytest && go build -o "$tmp/proxytest" .)
[ -d e2e/node_modules/playwright-core ] || (cd e2e && npm ci --no-audit --no-fund >/dev/null)

# One certificate for chat.example.com, which the client trusts (nginx).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=chat.example.com -addext subjectAltName=DNS:chat.example.com \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

ports=($("$tmp/proxytest" -freeports 4))
nginx_http=${ports[0]} nginx_https=${ports[1]} caddy_http=${ports[2]} caddy_https=${ports[3]}

# start_server NAME: the chat server on a free port, trusting the proxy on
# 127.0.0.1; sets upstream to its port. A short -poll-timeout keeps the
# test quick; -sessions-per-ip 2 and -burst 5 make the per-address limits
# easy to reach.
start_server() {
  "$tmp/chat" -addr 127.0.0.1:0 -trust-proxy 127.0.0.1 -poll-timeout 5s \
    -sessions-per-ip 2 -rate 1 -burst 5 >"$tmp/$1-server.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    upstream=$(grep -o 'addr=127\.0\.0\.1:[0-9]*' "$tmp/$1-server.log" | head -1 | cut -d: -f2) || true
    [ -n "$upstream" ] && return
    sleep 0.1
  done
  echo "the $1 server did not start:"; cat "$tmp/$1-server.log"; exit 1
}

# wait_port PORT: until something listens on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# --- nginx ---
start_server nginx
site="$tmp/nginx-site.conf"
if grep -qs '^0\{31\}1 .* lo$' /proc/net/if_inet6; then v6='s/listen \[::\]:/listen [::1]:/'; else v6='/listen \[::\]:/d'; fi
sed -e "s/listen 80;/listen 127.0.0.1:80;/" -e "s/listen 443 /listen 127.0.0.1:443 /" -e "$v6" \
  -e "s/:80;/:$nginx_http;/" -e "s/:443 /:$nginx_https /" \
  -e "s#/etc/letsencrypt/live/chat.example.com/fullchain.pem#$tmp/cert.pem#" \
  -e "s#/etc/letsencrypt/live/chat.example.com/privkey.pem#$tmp/key.pem#" \
  -e "s#127.0.0.1:8080#127.0.0.1:$upstream#g" deploy/nginx.conf >"$site"
if grep -nE 'listen (80|443)\b|:8080|letsencrypt' "$site"; then
  fail "nginx: the shipped nginx.conf no longer fits the test's substitutions (lines above)"
fi
cat >"$tmp/nginx.conf" <<EOF
# The test's stand-in for /etc/nginx/nginx.conf: its own pid, logs and
# temp files; the site is the shipped one.
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
worker_processes 1;
events { worker_connections 256; }
http {
    access_log $tmp/nginx-access.log;
    client_body_temp_path $tmp/nginx-body;
    proxy_temp_path $tmp/nginx-proxy;
    fastcgi_temp_path $tmp/nginx-fastcgi;
    uwsgi_temp_path $tmp/nginx-uwsgi;
    scgi_temp_path $tmp/nginx-scgi;
    include $site;
}
EOF
if out=$(nginx -t -q -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" 2>&1); then
  pass "nginx: nginx -t accepts the shipped site"
else
  fail "nginx: nginx -t: $out"
fi
nginx -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" -g 'daemon off;' &
pids+=($!)
nginx_upstream=$upstream

# --- Caddy ---
start_server caddy
sed "s#127.0.0.1:8080#127.0.0.1:$upstream#g" deploy/Caddyfile >"$tmp/site.Caddyfile"
if grep -n ':8080' "$tmp/site.Caddyfile"; then
  fail "caddy: the shipped Caddyfile no longer fits the test's substitutions"
fi
cat >"$tmp/Caddyfile" <<EOF
# The test's global options; the site is the shipped one.
{
	admin off
	default_bind 127.0.0.1
	http_port $caddy_http
	https_port $caddy_https
	# Certificates from Caddy's own CA (tls internal), not Let's Encrypt;
	# the client trusts that CA's root.
	local_certs
	skip_install_trust
	storage file_system $tmp/caddy-data
}
import $tmp/site.Caddyfile
EOF
export HOME="$tmp" XDG_DATA_HOME="$tmp/xdg-data" XDG_CONFIG_HOME="$tmp/xdg-config"
if out=$(caddy validate --config "$tmp/Caddyfile" --adapter caddyfile 2>&1); then
  pass "caddy: caddy validate accepts the shipped site"
else
  fail "caddy: caddy validate: $(echo "$out" | tail -3)"
fi
caddy run --config "$tmp/Caddyfile" --adapter caddyfile >"$tmp/caddy.log" 2>&1 &
pids+=($!)
caddy_upstream=$upstream

# --- the systemd unit ---
if command -v systemd-analyze >/dev/null; then
  mkdir "$tmp/unit"
  sed "s#/usr/local/bin/chat#$tmp/chat#" deploy/chat.service >"$tmp/unit/chat.service"
  if out=$(systemd-analyze verify "$tmp/unit/chat.service" 2>&1) && [ -z "$out" ]; then
    pass "chat.service: systemd-analyze verify is silent"
  else
    fail "chat.service: systemd-analyze verify: $out"
  fi
else
  echo "SKIP chat.service: no systemd-analyze here"
fi

# --- through the proxies ---
ca="$tmp/caddy-data/pki/authorities/local/root.crt"
for _ in $(seq 150); do [ -s "$ca" ] && break; sleep 0.1; done
wait_port "$nginx_https" || fail "nginx: nothing listens on $nginx_https"
wait_port "$caddy_https" || fail "caddy: nothing listens on $caddy_https"

echo "== checks through nginx (server :$nginx_upstream) and Caddy (server :$caddy_upstream), at once; about 80 s"
"$tmp/proxytest" -name nginx -https "127.0.0.1:$nginx_https" -http "127.0.0.1:$nginx_http" \
  -ca "$tmp/cert.pem" -poll-timeout 5s -idle 65s >"$tmp/nginx.out" 2>&1 &
nginx_test=$!
"$tmp/proxytest" -name caddy -https "127.0.0.1:$caddy_https" -http "127.0.0.1:$caddy_http" \
  -ca "$ca" -poll-timeout 5s -idle 65s >"$tmp/caddy.out" 2>&1 &
caddy_test=$!
# Meanwhile, the page in a browser through nginx (e2e/proxy.test.js).
CHAT_PROXY_HTTPS="127.0.0.1:$nginx_https" timeout 120 node --test e2e/proxy.test.js >"$tmp/browser.out" 2>&1 &
browser_test=$!
for p in nginx caddy; do
  pid_var=${p}_test
  rc=0
  wait "${!pid_var}" || rc=$?
  sort -k2 "$tmp/$p.out" | grep -E '^(PASS|FAIL)' || true
  passed=$((passed + $(grep -c '^PASS' "$tmp/$p.out" || true)))
  failed=$((failed + $(grep -c '^FAIL' "$tmp/$p.out" || true)))
  if ((rc != 0)) && ! grep -q '^FAIL' "$tmp/$p.out"; then
    fail "$p: the test client exited $rc: $(tail -3 "$tmp/$p.out")"
  fi
done

rc=0
wait "$browser_test" || rc=$?
if ((rc == 0)) && grep -q '^# pass 1$' "$tmp/browser.out"; then
  pass "nginx: the page in Chromium over https: two people chat over wss"
else
  fail "nginx: the page in Chromium over https (exit $rc):"
  grep -E '^not ok|error:|Error|expected|actual' "$tmp/browser.out" | head -20 || true
fi

if ((failed)); then
  for f in nginx-error.log caddy.log nginx-server.log caddy-server.log; do
    echo "--- $f (last lines)"; tail -15 "$tmp/$f" 2>/dev/null || true
  done
fi
echo "($((SECONDS - started)) s)"
echo "proxy: $passed passed, $failed failed"
((failed == 0))
