"""The bucket: a local folder by default, an `s3://bucket/prefix` through boto3 when configured."""


import os
import shutil
from pathlib import Path

import dagster as dg

from pipeline.paths import resolve
from pydantic import PrivateAttr


class Bucket(dg.ConfigurableResource):
    """Where assets, quarantine files, models and checkpoints are kept."""

    root: str = "./.store"
    endpoint_url: str | None = None  # S3-compatible stores (MinIO, Ceph); credentials come from the AWS environment
    cache_dir: str = "~/.cache/llm-pipeline"  # local copies of remote objects that need a file path (models)
    max_attempts: int = 8  # per S3 request, the first included: boto3's `standard` retries (throttling, 5xx, dropped connections), with backoff

    _client = PrivateAttr(default=None)

    @property
    def is_remote(self) -> bool:
        return self.root.startswith("s3://")

    def _split(self, key: str) -> tuple[str, str]:
        bucket, _, prefix = self.root[len("s3://") :].partition("/")
        return bucket, f"{prefix.rstrip('/')}/{key}".lstrip("/")

    def _s3(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            retries = Config(retries={"mode": "standard", "total_max_attempts": self.max_attempts}, connect_timeout=10, read_timeout=60)
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, config=retries)
        return self._client

    def uri(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}" if self.is_remote else str(self.local_path(key))

    def local_path(self, key: str) -> Path:
        """A file-system path for `key`: the object itself for a local bucket, a cache copy for S3."""
        if self.is_remote:
            bucket, path = self._split(key)
            return Path(os.path.expanduser(self.cache_dir)) / bucket / path
        return resolve(self.root) / key

    def write_bytes(self, key: str, data: bytes) -> str:
        if self.is_remote:
            bucket, path = self._split(key)
            self._s3().put_object(Bucket=bucket, Key=path, Body=data)
        else:
            target = self.local_path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)  # readers never see a half-written file
        return self.uri(key)

    def read_bytes(self, key: str) -> bytes:
        if self.is_remote:
            bucket, path = self._split(key)
            return self._s3().get_object(Bucket=bucket, Key=path)["Body"].read()
        return self.local_path(key).read_bytes()

    def exists(self, key: str) -> bool:
        """Whether an object with exactly this key exists: a file locally, an object on S3. A folder or a mere
        prefix ("a/b.js" of "a/b.json") is not one on either."""
        if self.is_remote:
            from botocore.exceptions import ClientError

            bucket, path = self._split(key)
            try:
                self._s3().head_object(Bucket=bucket, Key=path)
                return True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return self.local_path(key).is_file()

    def list_objects(self, prefix: str) -> list[tuple[str, str]]:
        """(key, tag) of every object under `prefix`, keys relative to the root; the tag is the S3 ETag, or the
        modification time and size of a local file, so a rewritten object reads as changed."""
        if self.is_remote:
            bucket, path = self._split(prefix)
            root = path[: len(path) - len(prefix)]
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=path)
            return [(o["Key"][len(root):], o["ETag"].strip('"')) for page in pages for o in page.get("Contents", [])]
        base = resolve(self.root)
        folder = base / prefix
        if not folder.exists():
            return []
        found = []
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.endswith(".tmp"):
                stat = path.stat()
                found.append((path.relative_to(base).as_posix(), f"{stat.st_mtime_ns}-{stat.st_size}"))
        return found

    def upload_dir(self, local: Path, key: str) -> str:
        """Copy a local folder under `key` (a no-op when it already is that folder)."""
        if not self.is_remote:
            target = self.local_path(key)
            if target.resolve() != local.resolve():
                shutil.copytree(local, target, dirs_exist_ok=True)
            return str(target)
        bucket, prefix = self._split(key)
        for path in sorted(local.rglob("*")):
            if path.is_file():
                self._s3().upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
        return self.uri(key)

    def download_dir(self, key: str) -> Path:
        """A local folder with the objects under `key`."""
        target = self.local_path(key)
        if not self.is_remote:
            return target
        bucket, prefix = self._split(key)
        paginator = self._s3().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                dest = target / obj["Key"][len(prefix) + 1 :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                self._s3().download_file(bucket, obj["Key"], str(dest))
        return target
