#!/usr/bin/env bash
# On a GPU machine without network access: install the wheels carried in .whl/ (trl, datasets, peft, transformers,
# deepspeed, pydantic, ...) over the machine's own torch, into /tmp/site. Source it: it exports PYTHONPATH.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl trl==1.16.0 datasets==5.2.0 ...
#   pip wheel --no-deps deepspeed -w .whl        # deepspeed ships only an sdist
# compiled to bytecode once here, as any pip install does: without it every process of a benchmark compiles
# transformers' sources again on import (seconds each)
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# Bytecode as an installation has it: the lent machine sets PYTHONDONTWRITEBYTECODE=1 and its torch ships without
# __pycache__, so every process of both runners would compile torch's (and the standard library's) sources again
# on import, where a pip or distribution install reads bytecode. Written once here for everything importable, into
# a prefix folder (Python then reads bytecode only from there); BENCH_KEEP_NO_BYTECODE=1 keeps the machine's way.
if [ "${BENCH_KEEP_NO_BYTECODE:-0}" != 1 ]; then
  unset PYTHONDONTWRITEBYTECODE
  export PYTHONPYCACHEPREFIX=/tmp/pycache
  started=$(date +%s)
  python3 -m compileall -q -j 0 $(python3 -c 'import site, sysconfig; print(*{*site.getsitepackages(), sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")})') /tmp/site "$PWD" > /tmp/compileall.log 2>&1
  echo "bytecode written to $PYTHONPYCACHEPREFIX in $(( $(date +%s) - started )) s ($(find /tmp/pycache -name '*.pyc' | wc -l) files)"
fi
python3 - <<'PY'
import importlib.metadata as md
import torch
def version(package):
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "absent"
print("gpu:", torch.cuda.get_device_name(), "x", torch.cuda.device_count(), "| torch", torch.__version__, "|",
      ", ".join(f"{p} {version(p)}" for p in ("transformers", "trl", "peft", "datasets", "accelerate", "pyarrow", "deepspeed")))
PY
