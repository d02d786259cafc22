#!/usr/bin/env bash
# Set up dbguard in ./.venv and run the demo: a destructive test run through a shim,
# the backup dbguard took first, and a restore that brings the rows back.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e . pytest
exec "$VENV/bin/python" -m dbguard.demo "$@"
