"""Store asset values in the bucket as readable JSON: record lists as JSONL, descriptions as JSON."""


import json

import dagster as dg

from resources.bucket import Bucket


class BucketJsonIOManager(dg.ConfigurableIOManager):
    """JSON, not pickle: an engineer can open any asset's value, and nothing executable is stored."""

    bucket: dg.ResourceDependency[Bucket]
    prefix: str = "assets"

    def _key(self, context: dg.OutputContext | dg.InputContext, partition: str | None = None) -> str:
        parts = list(context.asset_key.path)
        if partition is not None:
            parts.append(partition)
        elif context.has_asset_partitions:
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
        if (context.definition_metadata or {}).get("by_partition"):
            # a window of partitions: {partition: value} for those stored, the missing ones left for the asset to report
            found = {}
            for partition in context.asset_partition_keys:
                key = self._key(context, partition)
                if self.bucket.exists(key + ".json") or self.bucket.exists(key + ".jsonl"):
                    found[partition] = self._read(key)
            return found
        if (context.definition_metadata or {}).get("optional") and not self.bucket.exists(self._key(context) + ".json"):
            return None  # declared optional by the consumer, which says so in its metadata
        return self._read(self._key(context))

    def _read(self, key: str):
        if self.bucket.exists(key + ".jsonl"):
            return [json.loads(line) for line in self.bucket.read_bytes(key + ".jsonl").decode().splitlines() if line]
        return json.loads(self.bucket.read_bytes(key + ".json"))
