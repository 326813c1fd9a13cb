#!/usr/bin/env bash
# Installs ws2sip as the README tells a newcomer: the web phone's JsSIP bundle from the npm lock,
# then a brand-new virtualenv (default .venv, or the path given) holding exactly the versions in
# deploy/requirements.lock, and ws2sip itself built against them (setup.py: the compiled modules
# are type-checked against these very libraries, hence --no-build-isolation). Ends with
# `ws2sip selfcheck`, which imports every compiled module and creates each compiled class, so a
# broken build stops here rather than at the first call.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(realpath -m "${1:-$repo_root/.venv}")"
say() { printf '[install] %s\n' "$*"; }

bash "$repo_root/deploy/apt-install.sh"
command -v npm >/dev/null 2>&1 || { say "npm not found: install Node.js 20 with npm" >&2; exit 1; }

say "npm ci in gateway/webphone (bundles JsSIP and the phone with esbuild)"
npm ci --prefix "$repo_root/gateway/webphone" --no-audit --no-fund --loglevel=error

if [[ -e "$venv" ]]; then
    [[ -f "$venv/pyvenv.cfg" ]] || { say "$venv exists and is not a virtualenv" >&2; exit 1; }
    say "replacing the virtualenv $venv"
    rm -rf "$venv"
fi
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
say "pip install -r deploy/requirements.lock (exact versions, hashes checked)"
"${pip[@]}" install --quiet --require-hashes -r "$repo_root/deploy/requirements.lock"
say "pip install . (compiles the signalling and media paths; a minute or two)"
# The build's whole output goes to a log in the venv; setup.py's own lines (compiled or not,
# and why) are shown.
build_log="$venv/ws2sip-build.log"
if ! "${pip[@]}" install --verbose --no-deps --no-build-isolation "$repo_root" >"$build_log" 2>&1
then
    tail -n 40 "$build_log" >&2
    say "the build failed; its whole output is in $build_log" >&2
    exit 1
fi
sed -n 's/^ *\(ws2sip setup:\)/\1/p' "$build_log" | awk '!seen[$0]++'
"$venv/bin/ws2sip" selfcheck
say "installed: $venv/bin/ws2sip"
