#!/usr/bin/env bash
# Build .unsloth/site.tar.gz: Unsloth and the versions it pins (trl<=1.15, datasets<5), for bench/time_to_model.py's
# unsloth* runs on a GPU machine without network access (transformers 5.17, torch and the rest are the machine's).
# Unsloth's wheel is 28.6 MB because it ships its Studio web app; only the `unsloth` and `unsloth_zoo` packages are
# kept, and of bitsandbytes (which Unsloth's model patching imports even for 16-bit LoRA) only the CUDA 13.0 library
# of its seven builds (43 MB wheel), so the tarball (16.6 MB) fits a device call beside .whl/ and .bench_assets/.
# On the GPU machine:  mkdir -p /tmp/usite && tar -xzf .unsloth/site.tar.gz -C /tmp/usite &&
#   python3 -m pip install -q --no-index --no-deps --target /tmp/usite .whl/pydantic* .whl/pydantic_core* \
#     .whl/annotated_types* .whl/typing_inspection* .whl/peft* .whl/dill* .whl/multiprocess*
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$work/wheels" \
  unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 tyro docstring_parser typeguard shtab \
  msgspec cut_cross_entropy torchao structlog json5 nest_asyncio hf_transfer bitsandbytes==0.50.2
python3 -m pip install -q --no-deps --no-compile --target "$work/site" --python-version 3.12 --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 "$work"/wheels/*.whl
rm -rf "$work/site/studio" "$work/site/unsloth_cli" "$work/site/test" "$work/site/bin"
find "$work/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cuda130.so' -delete
mkdir -p .unsloth
tar -czf .unsloth/site.tar.gz -C "$work/site" .
ls -la .unsloth/site.tar.gz
