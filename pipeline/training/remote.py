"""A training job without a shared disk (a Kubernetes pod): the spec from an environment variable, inputs fetched
from `s3://`, outputs published there.

The launcher rewrites a spec's local paths to object-store URIs (`remote_spec`); the pod turns them back into
paths on its own disk (`stage_inputs`) and, on rank 0, uploads the weights it made (`publish_outputs`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

SPEC_ENV = "PIPELINE_TRAINING_SPEC"
# Linux caps one environment string at 128 KiB (MAX_ARG_STRLEN); a spec is a few kilobytes
MAX_SPEC_BYTES = 100_000
OUTPUT_KEYS = ("adapter_path", "model_path")


def _s3():
    import boto3

    return boto3.client("s3")  # endpoint and credentials from the AWS environment (AWS_ENDPOINT_URL for MinIO)


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key.rstrip("/")


def is_remote(path: str | None) -> bool:
    return bool(path) and path.startswith("s3://")


def spec_from_env(name: str = SPEC_ENV) -> str:
    """The spec JSON the launcher put in the environment; a clear error when it is missing."""
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"--spec-env {name}: the variable is not set or empty; the launcher puts the spec there")
    return value


def encode_spec(spec: dict[str, Any]) -> str:
    """The spec as the value of SPEC_ENV; refuses one too large for an environment variable."""
    text = json.dumps(spec, separators=(",", ":"))
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise ValueError(f"training spec is {len(text.encode()):,} bytes; at most {MAX_SPEC_BYTES:,} fit in "
                         f"{SPEC_ENV}. Keep data and results out of the spec (it carries URIs, not contents).")
    return text


# -- launcher side: local paths -> URIs ------------------------------------------------------------------------

def upload_path(local: Path, uri: str) -> str:
    """Upload a file or a folder to `uri` (folder contents under it); return `uri`."""
    bucket, key = split_uri(uri)
    client = _s3()
    if local.is_file():
        client.upload_file(str(local), bucket, key)
        return uri
    files = sorted(p for p in local.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{local}: nothing to upload (missing or empty folder)")
    for path in files:
        client.upload_file(str(path), bucket, f"{key}/{path.relative_to(local).as_posix()}")
    return uri


def remote_spec(spec: dict[str, Any], prefix: str, work_dir: str,
                upload: Callable[[Path, str], str] = upload_path) -> dict[str, Any]:
    """The spec a pod can run: every input a URI (uploaded under `prefix/inputs/` unless the spec already names
    one: `base_uri`, an SFT result's `adapter_uri`/`model_uri`), the output folder on the pod's own disk
    (`work_dir`) and `output_uri` where rank 0 publishes the weights."""
    if not is_remote(prefix):
        raise ValueError(f"a pod needs an s3:// prefix to exchange files through; got {prefix!r}")
    out = json.loads(json.dumps(spec))  # a deep copy of plain JSON
    train = out["train_path"]
    out["train_path"] = train if is_remote(train) else upload(Path(train), f"{prefix}/inputs/{Path(train).name}")
    base_uri = out.pop("base_uri", None)
    base = out["base_path"]
    out["base_path"] = base_uri or (base if is_remote(base) else upload(Path(base), f"{prefix}/inputs/base"))
    if out.get("sft_result"):
        sft = out["sft_result"]
        for key in OUTPUT_KEYS:
            uri = sft.get(key.replace("_path", "_uri"))
            if sft.get(key) and not is_remote(sft[key]):
                sft[key] = uri or upload(Path(sft[key]), f"{prefix}/inputs/sft-{Path(sft[key]).name}")
    out["output_dir"] = work_dir
    out["output_uri"] = prefix
    return out


# -- pod side: URIs -> local paths, and the outputs back -------------------------------------------------------

def download(uri: str, target: Path) -> Path:
    """Download one object, or every object under a prefix, to `target`."""
    bucket, key = split_uri(uri)
    client = _s3()
    objects = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
               for o in page.get("Contents", [])]
    if key in objects:  # a single object
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))
        return target
    inside = [o for o in objects if o.startswith(key + "/")]
    if not inside:
        raise FileNotFoundError(f"{uri}: no such object or prefix")
    for name in inside:
        dest = target / name[len(key) + 1:]
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, name, str(dest))
    return target


def stage_inputs(spec: dict[str, Any]) -> dict[str, Any]:
    """Replace the spec's input URIs with local copies under `output_dir/inputs/`.

    Every process of a node runs this; a file lock lets the first download while the others wait, and a marker
    makes a retried pod (same disk) skip what it already has."""
    from filelock import FileLock

    wanted = {"train": spec["train_path"], "base": spec["base_path"]}
    sft = spec.get("sft_result") or {}
    # DPO continues the SFT adapter when there is one (its merged model is not needed), else the full model
    key = "adapter_path" if sft.get("adapter_path") else "model_path"
    if is_remote(sft.get(key)):
        wanted[f"sft-{key}"] = sft[key]
    if not any(is_remote(uri) for uri in wanted.values()):
        return spec
    root = Path(spec["output_dir"], "inputs")
    root.mkdir(parents=True, exist_ok=True)
    local = {}
    with FileLock(str(root / ".lock")):
        for name, uri in wanted.items():
            if not is_remote(uri):
                local[name] = uri
                continue
            target = root / name
            if not (root / f"{name}.done").exists():
                download(uri, target)
                (root / f"{name}.done").write_text(uri)
            local[name] = str(target)
    staged = {**spec, "train_path": local["train"], "base_path": local["base"]}
    if spec.get("sft_result"):
        staged["sft_result"] = {**spec["sft_result"], **{k: local[f"sft-{k}"] for k in OUTPUT_KEYS
                                                          if f"sft-{k}" in local}}
    return staged


def publish_outputs(result: dict[str, Any], output_uri: str) -> dict[str, Any]:
    """Upload the adapter and model folders under `output_uri/<folder name>`; add their `*_uri` to the result."""
    published = dict(result)
    for key in OUTPUT_KEYS:
        if result.get(key):
            folder = Path(result[key])
            published[key.replace("_path", "_uri")] = upload_path(folder, f"{output_uri.rstrip('/')}/{folder.name}")
    return published
