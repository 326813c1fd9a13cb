#!/usr/bin/env bash
# Installs everything the test suite starts for real, as a newcomer's machine would get it:
# redis-server, SIPp, Chromium, rtpengine, coturn, HAProxy and nftables from Debian; a brand-new
# virtualenv .venv-test (no system site-packages, nothing kept from an earlier run but pip's and
# npm's download caches)
# holding exactly tests/requirements.lock, with ws2sip built in place against it (setup.py);
# the JsSIP / SIP.js clients and the web phone from their npm locks.
# Never downloads a browser: Playwright drives Debian's /usr/bin/chromium.
# Then: .venv-test/bin/python -m pytest (the README's test command).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
say() { printf '[bootstrap] %s\n' "$*"; }
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PUPPETEER_SKIP_DOWNLOAD=1

bash deploy/apt-install.sh redis-server=redis-server sipp=sip-tester chromium=chromium \
    rtpengine=rtpengine-daemon turnserver=coturn haproxy=haproxy nft=nftables
command -v npm >/dev/null 2>&1 || { say "npm not found: install Node.js 20 with npm" >&2; exit 1; }

venv="$repo_root/.venv-test"
say "brand-new virtualenv $venv from tests/requirements.lock"
rm -rf "$venv"
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install --require-hashes -r tests/requirements.lock
# In place (editable), so that the tests run the compiled modules of this very tree; against
# the venv's locked libraries (setup.py explains why there is no build isolation).
say "pip install -e . (compiles the signalling and media paths)"
rm -rf build
"${pip[@]}" install --no-deps --no-build-isolation -e .

for js_dir in tests/js gateway/webphone; do   # the web phone's postinstall builds its bundle
    say "npm ci in $js_dir"
    npm ci --prefix "$js_dir" --no-audit --no-fund --loglevel=error
done
say "building the JsSIP / SIP.js browser bundles"
npm run --prefix tests/js --silent build
say "done: run .venv-test/bin/python -m pytest"
