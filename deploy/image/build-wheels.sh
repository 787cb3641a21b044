#!/bin/sh
# The image's builder step, also run by .ci/deploy-checks: wheels of the package and of every dependency it
# installs, at the versions of the lock (requirements/dev.txt holds the production set as a subset).
# Usage: build-wheels.sh SOURCE_DIR WHEEL_DIR [EXTRAS]   (EXTRAS e.g. "sim"; empty = production only)
set -eu
src=$1
wheels=$2
extras=${3:-}
target=$src
[ -n "$extras" ] && target="$src[$extras]"
pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir "$wheels" \
  --constraint "$src/requirements/dev.txt" "$target"
