#!/usr/bin/env bash
# Install what the tests need into ./.venv, then run the linters and the whole suite.
# Tests that need PostgreSQL or MariaDB skip with the reason when a server is down,
# unless DBGUARD_REQUIRE_SERVERS=1 (CI sets it), which turns those skips into failures.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e '.[test]'
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
# pytest exits 5 when it collects nothing; set -e makes that a failure, not a pass.
exec "$VENV/bin/pytest" "$@"
