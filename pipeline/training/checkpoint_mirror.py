"""Checkpoints mirrored to `s3://`, so a retry on another machine (a lost pod) can resume.

Each complete local checkpoint is uploaded with its completion marker last, so a remote checkpoint without the
marker is a half-uploaded one and is never restored. Rotation follows the local folder.

Across machines with no shared disk (a multi-node TrainJob) no machine holds a whole checkpoint: each rank writes
its own FSDP shards, optimizer slices and RNG state to its own disk. So every machine's first process uploads what
its machine wrote, all ranks wait, and only then does rank 0 upload the marker; a restore downloads the union.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from pipeline.training.checkpoints import _CHECKPOINT, COMPLETE_MARKER, is_complete, latest_complete


def _split(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix.rstrip("/")


def _s3():
    import boto3

    return boto3.client("s3")  # endpoint and credentials from the AWS environment (AWS_ENDPOINT_URL for MinIO)


def upload_checkpoint(folder: Path, uri: str, marker: bool = True) -> None:
    """Upload one checkpoint under `uri/<name>/`: every file but the marker, then (with `marker`) the marker last."""
    bucket, prefix = _split(uri)
    client = _s3()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)
    for path in [*files, *([folder / COMPLETE_MARKER] if marker else [])]:
        client.upload_file(str(path), bucket, f"{prefix}/{folder.name}/{path.relative_to(folder).as_posix()}")


def upload_checkpoint_marker(folder: Path, uri: str) -> None:
    bucket, prefix = _split(uri)
    _s3().upload_file(str(folder / COMPLETE_MARKER), bucket, f"{prefix}/{folder.name}/{COMPLETE_MARKER}")


def remote_checkpoints(uri: str) -> dict[str, set[str]]:
    """Remote checkpoint name -> its object names (relative to the checkpoint)."""
    bucket, prefix = _split(uri)
    found: dict[str, set[str]] = {}
    for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            name, _, rest = obj["Key"][len(prefix) + 1:].partition("/")
            if _CHECKPOINT.match(name) and rest:
                found.setdefault(name, set()).add(rest)
    return found


def prune_remote(uri: str, keep: set[str]) -> None:
    bucket, prefix = _split(uri)
    client = _s3()
    for name, objects in remote_checkpoints(uri).items():
        if name not in keep:
            for rest in objects:
                client.delete_object(Bucket=bucket, Key=f"{prefix}/{name}/{rest}")


def restore_latest(uri: str, local_dir: Path) -> Path | None:
    """Download the newest remote checkpoint that has its marker; return it if it is complete locally."""
    bucket, prefix = _split(uri)
    client = _s3()
    remote = {n: objs for n, objs in remote_checkpoints(uri).items() if COMPLETE_MARKER in objs}
    local = latest_complete(local_dir)
    for name in sorted(remote, key=lambda n: int(_CHECKPOINT.match(n).group(1)), reverse=True):
        if local is not None and int(_CHECKPOINT.match(local.name).group(1)) >= int(_CHECKPOINT.match(name).group(1)):
            return local  # the local copy is as new as anything remote
        target = local_dir / name
        for rest in sorted(remote[name] - {COMPLETE_MARKER}) + [COMPLETE_MARKER]:
            (target / rest).parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, f"{prefix}/{name}/{rest}", str(target / rest))
        if is_complete(target):
            return target
    return local


def mirror_callback(uri: str):
    """A TrainerCallback that uploads each checkpoint once it is marked complete, and prunes rotated ones."""
    from transformers import TrainerCallback

    class CheckpointMirror(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            import torch

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_local_process_zero and folder.is_dir():  # what this machine's ranks wrote
                upload_checkpoint(folder, uri, marker=False)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()  # every machine's part is in the store before the marker
            if state.is_world_process_zero and is_complete(folder):
                upload_checkpoint_marker(folder, uri)
                prune_remote(uri, {p.name for p in Path(args.output_dir).iterdir() if is_complete(p)})

    return CheckpointMirror()


def resume_point(checkpoint_dir: Path, uri: str | None, report, args=None) -> Path | None:
    """The checkpoint a retried attempt continues from: restored from the store first when mirrored, then the
    latest complete one on disk; says so through `report(message, metrics)`.

    With several processes (`args`, the TrainingArguments), each machine's first process restores while the
    others wait, then all of them pick the same checkpoint from the now complete local copy."""
    if uri:
        first = args.main_process_first(local=True, desc="checkpoint restore") if args else nullcontext()
        with first:
            restore_latest(uri, checkpoint_dir)
    resume = latest_complete(checkpoint_dir)
    if resume is not None:
        report(f"resuming from {resume.name} (a previous attempt's latest complete checkpoint)", {})
    return resume
