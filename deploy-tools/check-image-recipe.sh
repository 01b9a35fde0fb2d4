#!/usr/bin/env bash
# Replay the Dockerfile's build stage without a Docker engine (CI has none): in a scratch directory,
# with this machine's python3 (it must be CPython 3.11, the image's), install requirements.lock
# exactly as the image does (hash-checked, binary wheels only), build and install the project's
# wheel with the pinned setuptools, drop pip and setuptools, then check that the dependency set is
# consistent and that both console scripts start.
#
#   deploy-tools/check-image-recipe.sh
#
# Needs PyPI. What it cannot check: the base image itself, and the runtime stage (a plain copy).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PY=${PYTHON:-python3}
ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$ver" != "3.11" ]; then
  echo "check-image-recipe: $PY is Python $ver; the image runs 3.11, so the lock is only checked there" >&2
  exit 0
fi
setuptools_pin=$(sed -n 's/.*pip install --no-cache-dir \(setuptools==[0-9.]*\).*/\1/p' Dockerfile)
if [ -z "$setuptools_pin" ]; then
  echo "check-image-recipe: cannot find the pinned setuptools in the Dockerfile" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The build context, as .dockerignore lets it through.
mkdir -p "$work/src"
cp requirements.lock pyproject.toml README.md "$work/src/"
for pkg in vcplugin nodeagent vgpupool_testing; do
  (cd "$root" && git ls-files -co --exclude-standard "$pkg") | while read -r f; do
    case "$f" in *__pycache__*|*.pyc) continue ;; esac
    mkdir -p "$work/src/$(dirname "$f")"
    cp "$f" "$work/src/$f"
  done
done
cd "$work/src"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONFIG_FILE=/dev/null
"$PY" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --no-cache-dir --require-hashes --only-binary=:all: -r requirements.lock
"$PY" -m venv "$work/buildenv"
"$work/buildenv/bin/pip" install -q --no-cache-dir "$setuptools_pin"
"$work/buildenv/bin/pip" wheel -q --no-cache-dir --no-deps --no-build-isolation --wheel-dir "$work/wheels" .
"$work/venv/bin/pip" install -q --no-cache-dir --no-deps --no-index --find-links "$work/wheels" vgpu-pool
"$work/venv/bin/pip" check
"$work/venv/bin/pip" uninstall -q --yes pip setuptools
"$work/venv/bin/vcplugin" --help >/dev/null
"$work/venv/bin/nodeagent" --help >/dev/null
"$work/venv/bin/python" -c 'import vcplugin.sidecar.service, nodeagent.agent, nodeagent.deviceplugin.server, pynvml, uvloop'
echo "check-image-recipe: ok ($(ls "$work/wheels"))"
