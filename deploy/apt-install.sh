#!/usr/bin/env bash
# Installs the Debian packages named as BINARY=PACKAGE arguments whose binary is not on PATH
# (as root, or through sudo), plus python3-venv where `python3 -m venv` cannot make a virtualenv.
# Shared by deploy/install.sh and tests/bootstrap.sh; quick when everything is there.
set -euo pipefail
missing=()
for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}")
done
# Debian's python3 makes virtualenvs only with python3-venv (ensurepip) installed.
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
((${#missing[@]} == 0)) && exit 0
as_root=()
[[ $(id -u) -eq 0 ]] || as_root=(sudo)
echo "[apt] installing ${missing[*]}"
"${as_root[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
