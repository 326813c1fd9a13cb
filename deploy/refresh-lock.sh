#!/usr/bin/env bash
# Refreshes the locks of exact versions with hashes that every install of ws2sip uses:
#   deploy/requirements.lock  - what the gateway runs on, plus what builds it (setuptools, mypy:
#                               the compiled modules are type-checked against these very versions)
#   tests/requirements.lock   - the same versions, plus the test extra
# pyproject.toml keeps its ranges for people who embed the package; the locks pick one version in
# them. After refreshing, the whole suite runs on the new lock (in a brand-new virtualenv), so a
# lock that breaks anything is never committed: commit the two files only if this exits 0.
# tests/gateway/test_private_internals.py then names any library attribute the fast paths rely on
# that the new versions changed.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

uv_version=0.13.9   # the resolver; pinned so that two refreshes of the same inputs agree
tool_dir="$(mktemp -d)"
trap 'rm -rf "$tool_dir"' EXIT
python3 -m venv "$tool_dir/venv"
"$tool_dir/venv/bin/pip" install --quiet "uv==$uv_version"
uv="$tool_dir/venv/bin/uv"

# Build requirements come from pyproject's [build-system] table, so the lock holds exactly what
# `pip install --no-build-isolation` then builds with.
python3 - >"$tool_dir/build.in" <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
PY

compile=("$uv" pip compile --quiet --generate-hashes --universal --python-version 3.11
         --no-header)
"${compile[@]}" pyproject.toml "$tool_dir/build.in" --extra test -o tests/requirements.lock
# The runtime lock is the test lock's versions, without the test extra.
"${compile[@]}" pyproject.toml "$tool_dir/build.in" -c tests/requirements.lock \
    -o deploy/requirements.lock
# Name the build requirements' source instead of the temporary file, so that two refreshes of
# the same inputs write the same text.
sed -i "s|-r $tool_dir/build.in|pyproject.toml [build-system] requires|" \
    tests/requirements.lock deploy/requirements.lock

if [[ "${1:-}" == "--locks-only" ]]; then  # to try the resolver; never commit such a lock
    echo "[refresh-lock] locks written; the suite has NOT run on them"
    exit 0
fi
echo "[refresh-lock] locks written; running the suite on them"
bash tests/bootstrap.sh && .venv-test/bin/python -m pytest
