#!/usr/bin/env bash
# The browser tests: headless Chromium against the real server. CI calls
# this from the repository's root as `bash e2e/run.sh`; it installs what a
# fresh Debian machine lacks (Chromium, Node.js) and needs Go on the PATH.
set -euo pipefail
cd "$(dirname "$0")"

command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
command -v npm >/dev/null || (apt-get update && apt-get install -y nodejs npm)
npm ci --no-audit --no-fund

# Each test has its own timeout; this bounds the whole run (about 40 s on
# two cores), servers and browsers included: they are in its process group.
# A browser test that fails is run once more, whole, and must pass then:
# one rare failure in a dozen runs here was never reproduced (not even with
# the other core kept busy); its name is printed so that it can be found.
first=$(mktemp)
timeout 240 node --test 2>&1 | tee "$first" || true
if ! grep -q '^# fail 0$' "$first"; then
  echo "browser tests failed on the first run:"; grep '^not ok' "$first" || true
  echo "running them once more"
  timeout 240 node --test
fi
