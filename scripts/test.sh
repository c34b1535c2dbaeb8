#!/usr/bin/env bash
# Set up, then run the test suite (tiny models built in the tests; no GPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
