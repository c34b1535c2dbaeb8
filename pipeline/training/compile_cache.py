"""Compiled kernels that outlive the machine: PyTorch's compile artifacts (Inductor's FX graphs, AOTAutograd
graphs, Triton kernels) saved after a run and loaded before the next one, through the bucket; and, for eager runs,
the Triton kernel folder (Liger's fused norm, RoPE, SwiGLU and loss kernels are built on first use in every new
process that finds it empty, as each new pod does).

A cold compile of a ~1B model's decoder blocks costs ~20 s on an H200, a cached one ~3 s. The artifacts are valid
only for the torch and transformers that built them, the GPU they were tuned on, the model's shape and what the
recipe compiles (CUDA graphs or not), so those make the key; any other run starts from an empty cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

from pipeline.recipe import TrainingRecipe

# recipe fields that change the compiled graph (LoRA settings are added for adapter methods)
_GRAPH_FIELDS = ("method", "attn_implementation", "gradient_checkpointing", "packing", "padding_free",
                 "activation_memory_budget")
_NOT_SHAPE = ("_name_or_path", "transformers_version", "architectures")


def cache_key(model_config: dict[str, Any], recipe: TrainingRecipe, device: str | None = None) -> str:
    """`torch-<version>/<gpu>/<model type>-<hash>`: readable where it matters, hashed over everything else."""
    import torch
    import transformers

    device = device or (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    compiled = {f: getattr(recipe, f) for f in _GRAPH_FIELDS}
    compiled["cuda_graphs"] = recipe.wants_cuda_graphs  # Inductor's config differs, and so do its cached graphs
    if recipe.method != "full":
        compiled["lora"] = recipe.lora.model_dump()
    parts = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
             "liger": _version("liger-kernel") if recipe.liger_kernels else None, "device": device,
             "model": {k: v for k, v in model_config.items() if k not in _NOT_SHAPE}, "recipe": compiled}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return f"torch-{_slug(torch.__version__)}/{_slug(device)}/{_slug(str(model_config.get('model_type', 'model')))}-{digest}"


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-").lower()


COMPILED = "bin"  # torch.compiler's cache artifacts
KERNELS = "kernels.tar.gz"  # the kernel folders a run built (`kernel_folders`): Triton's, and Inductor's when compiled


class CompileCacheStore:
    """One object per key under `uri`: an `s3://bucket/prefix` (credentials from the AWS environment) or a local
    folder (the local bucket, or a shared volume)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")

    def _object(self, key: str, kind: str) -> str:
        return f"{key}.{kind}"

    def _s3_target(self, key: str, kind: str) -> tuple[str, str]:
        bucket, _, prefix = self.uri[len("s3://"):].partition("/")
        return bucket, f"{prefix}/{self._object(key, kind)}".lstrip("/")

    @property
    def _remote(self) -> bool:
        return self.uri.startswith("s3://")

    def _s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)

    def fetch(self, key: str, kind: str = COMPILED) -> bytes | None:
        """The stored artifacts of `kind` for `key`, or None when there are none."""
        if self._remote:
            from botocore.exceptions import ClientError

            bucket, name = self._s3_target(key, kind)
            try:
                return self._s3().get_object(Bucket=bucket, Key=name)["Body"].read()
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
                    return None
                raise
        path = Path(self.uri) / self._object(key, kind)
        return path.read_bytes() if path.is_file() else None

    def put(self, key: str, data: bytes, kind: str = COMPILED) -> str:
        """Store `data` of `kind` for `key` whole (a reader never sees half of it); returns where."""
        if self._remote:
            bucket, name = self._s3_target(key, kind)
            self._s3().put_object(Bucket=bucket, Key=name, Body=data)
            return f"s3://{bucket}/{name}"
        path = Path(self.uri) / self._object(key, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return str(path)


def persist_compile_cache(store: CompileCacheStore, key: str) -> tuple[int, str]:
    """Save what this process compiled under `key`; (bytes stored, what happened)."""
    import torch

    try:
        saved = torch.compiler.save_cache_artifacts()
    except Exception as e:  # the weights matter, the cache does not: report and go on
        return 0, f"compile cache not serialised ({type(e).__name__}: {str(e)[:120]})"
    if not saved or not saved[0]:
        return 0, "nothing compiled to cache"
    try:
        where = store.put(key, saved[0])
    except Exception as e:  # the weights matter, the cache does not: report and go on
        return 0, f"compile cache not stored ({type(e).__name__}: {str(e)[:120]})"
    return len(saved[0]), f"stored compile cache at {where} ({len(saved[0]) / 2**20:.1f} MiB)"


def compile_counters() -> dict[str, int]:
    """Frames compiled and cache hits and misses so far in this process (Dynamo, AOTAutograd, Inductor)."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    return {"frames_compiled": len(compilation_time_metrics.get("_compile.compile_inner", [])),
            **{f"{k}": v for k, v in counters["aot_autograd"].items() if "cache" in k},
            **{f"{k}": v for k, v in counters["inductor"].items() if "cache" in k}}


def compile_seconds() -> float:
    """Seconds this process has spent in torch.compile so far (tracing, graph compilation, kernel builds)."""
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))


def triton_cache_dir() -> Path:
    """Where Triton keeps the kernels it builds in this process (its own default unless TRITON_CACHE_DIR is set;
    under torch.compile Inductor sets it to a folder inside its own cache the first time it builds a kernel)."""
    return Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")


def kernel_folders(compiled: bool) -> dict[str, Path]:
    """The folders whose new files a run stores: Triton's for an eager run (Liger's kernels); for a compiled run also
    Inductor's cache, which holds the compiled graphs' code and kernels (on a CPU, their C++ libraries). PyTorch's
    portable cache artifacts skip Inductor's code generation but not those kernel builds: on this repo's 2-core CPU
    a cached compile of the tiny test model took 25.8 s with the artifacts alone (43 s cold) and 5.7 s with the
    folder restored as well."""
    triton = triton_cache_dir()
    if not compiled:
        return {"triton": triton}
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    inductor = Path(cache_dir())
    inside = inductor == triton or inductor in triton.parents
    return {"inductor": inductor} if inside else {"inductor": inductor, "triton": triton}


def pack_folders(folders: dict[str, Path], since: float = 0.0) -> bytes | None:
    """The files of each folder written at or after `since` (a time.time()), as one gzipped tar whose top-level
    names are the dict's keys; None when there are none. Files a run only read (built by an earlier run on this
    machine) are left out: a long-lived machine's caches hold other models' kernels too."""
    buffer = io.BytesIO()
    added = 0
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for root, folder in folders.items():
            files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
            for path in files:
                if path.stat().st_mtime >= since:
                    tar.add(path, arcname=f"{root}/{path.relative_to(folder)}")
                    added += 1
    return buffer.getvalue() if added else None


def unpack_folders(data: bytes, folders: dict[str, Path]) -> int:
    """Unpack a `pack_folders` archive, each top-level name into its folder, keeping files already there; returns
    the files added. Only plain files inside their folder are taken (tarfile's `data` filter refuses links and
    paths that leave it); names without a folder here are skipped."""
    added = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            root, _, relative = member.name.partition("/")
            if not member.isfile() or root not in folders or not relative:
                continue
            folder = folders[root]
            folder.mkdir(parents=True, exist_ok=True)
            if (folder / relative).exists():
                continue
            member.name = relative
            tar.extract(member, folder, filter="data")
            added += 1
    return added
