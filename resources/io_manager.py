"""Store asset values in the bucket as readable JSON: record lists as JSONL, descriptions as JSON."""


import json

import dagster as dg

from resources.bucket import Bucket


class BucketJsonIOManager(dg.ConfigurableIOManager):
    """JSON, not pickle: an engineer can open any asset's value, and nothing executable is stored."""

    bucket: dg.ResourceDependency[Bucket]
    prefix: str = "assets"

    def _key(self, context: dg.OutputContext | dg.InputContext) -> str:
        parts = list(context.asset_key.path)
        if context.has_asset_partitions:
            parts.append(context.asset_partition_key)
        return "/".join([self.prefix, *parts])

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        key = self._key(context)
        if isinstance(obj, list):
            body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in obj)
            uri = self.bucket.write_bytes(key + ".jsonl", body.encode())
        else:
            uri = self.bucket.write_bytes(key + ".json", json.dumps(obj, indent=2, sort_keys=True).encode())
        context.add_output_metadata({"stored_at": dg.MetadataValue.path(uri)})

    def load_input(self, context: dg.InputContext):
        key = self._key(context)
        if self.bucket.exists(key + ".jsonl"):
            return [json.loads(line) for line in self.bucket.read_bytes(key + ".jsonl").decode().splitlines() if line]
        return json.loads(self.bucket.read_bytes(key + ".json"))
