#!/bin/sh
# The image's runtime step, also run by .ci/deploy-checks: a fresh venv with the package from the built wheels
# only (no index, no source tree), so what the roles need must be in the wheel's dependencies.
# Usage: install.sh WHEEL_DIR VENV_DIR [EXTRAS]
set -eu
wheels=$1
venv=$2
extras=${3:-}
requirement=ai-admin
[ -n "$extras" ] && requirement="ai-admin[$extras]"
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --disable-pip-version-check --no-index --find-links "$wheels" "$requirement"
# pip and setuptools are build tools: the running image needs neither.
"$venv/bin/pip" uninstall --yes --quiet pip setuptools 2>/dev/null || true
