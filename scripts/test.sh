#!/usr/bin/env bash
# Set up, then run the test suite (tiny models built in the tests; no GPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# PostgreSQL for the production-instance test (tests/test_deploy.py starts a throwaway server on a free port)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q postgresql
fi
exec .venv/bin/python -m pytest -q "$@"
