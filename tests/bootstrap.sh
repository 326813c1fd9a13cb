#!/usr/bin/env bash
# Installs everything the test-suite starts for real: redis-server, sipp, chromium and rtpengine
# from Debian, the Python package with its test extra (which compiles the SIP parser with mypyc,
# see setup.py), and the JsSIP / SIP.js clients from npm.
# Idempotent and quick on a machine where all of it is already there. Never downloads a browser:
# Playwright drives Debian's /usr/bin/chromium.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

say() { printf '[bootstrap] %s\n' "$*"; }

export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
export PUPPETEER_SKIP_DOWNLOAD=1

# --- Debian packages -------------------------------------------------------------------------
declare -A package_of_binary=([redis-server]=redis-server [sipp]=sip-tester [chromium]=chromium
                              [rtpengine]=rtpengine-daemon)
missing_packages=()
for binary in "${!package_of_binary[@]}"; do
    if ! command -v "$binary" >/dev/null 2>&1; then
        missing_packages+=("${package_of_binary[$binary]}")
    fi
done
if ! python3 -m pip --version >/dev/null 2>&1; then
    missing_packages+=(python3-pip)
fi
if ((${#missing_packages[@]} > 0)); then
    as_root=()
    if [[ $(id -u) -ne 0 ]]; then
        as_root=(sudo)
    fi
    say "apt-get install ${missing_packages[*]}"
    "${as_root[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y --no-install-recommends \
        "${missing_packages[@]}"
else
    say "redis-server, sipp, chromium, rtpengine and pip already installed"
fi

# --- Python ----------------------------------------------------------------------------------
# Debian's own python3 refuses system-wide pip installs (PEP 668); the README's test command runs
# that same python3, so outside a virtualenv the install has to go where it will be imported from.
stdlib_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
in_virtualenv="$(python3 -c 'import sys; print(int(sys.prefix != sys.base_prefix))')"
if [[ -f "$stdlib_dir/EXTERNALLY-MANAGED" && "$in_virtualenv" == 0 ]]; then
    say "python3 is externally managed and no virtualenv is active: installing system-wide"
    export PIP_BREAK_SYSTEM_PACKAGES=1
fi
# Always run: it also rebuilds the compiled parser modules from the current sources.
say "pip install -e '.[test]'"
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

# --- Node clients (JsSIP, SIP.js) -------------------------------------------------------------
if ! command -v npm >/dev/null 2>&1; then
    say "npm not found: install Node.js 20 (with npm) first" >&2
    exit 1
fi
js_dir="$repo_root/tests/js"
installed_lock="$js_dir/node_modules/.package-lock.json"
# npm ci wipes node_modules, which would pull the clients from under a concurrent test run;
# only reinstall when the lock file changed since the last install.
if [[ -f "$installed_lock" && "$installed_lock" -nt "$js_dir/package-lock.json" ]]; then
    say "tests/js/node_modules is up to date"
else
    say "npm ci in tests/js"
    (cd "$js_dir" && npm ci --no-audit --no-fund)
fi
say "building the JsSIP / SIP.js browser bundles"
(cd "$js_dir" && npm run --silent build)

# --- The web phone the gateway serves (JsSIP bundled by its postinstall) ----------------------
phone_dir="$repo_root/gateway/webphone"
if [[ -f "$phone_dir/node_modules/.package-lock.json" &&
      "$phone_dir/node_modules/.package-lock.json" -nt "$phone_dir/package-lock.json" ]]; then
    say "gateway/webphone/node_modules is up to date; rebuilding the bundle"
    (cd "$phone_dir" && npm run --silent build)
else
    say "npm ci in gateway/webphone (builds the phone bundle)"
    (cd "$phone_dir" && npm ci --no-audit --no-fund)
fi

say "done"
