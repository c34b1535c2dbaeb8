#!/usr/bin/env bash
# Set up, then materialize the whole asset graph on the embedded default (CPU, real SmolLM2-135M base).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pipeline demo
