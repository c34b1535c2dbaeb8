"""What is live, read from the model registry: the alias -> version lookup and the download the watcher uses.
Takes the registry resource duck-typed (version_by_alias, download_adapter, client), so no Dagster import here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.serving.pool import VersionSpec

LIVE_ALIASES = ("champion", "canary")


def is_adapter(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


class RegistrySource:
    def __init__(self, registry: Any, model_name: str, base_sha256: str | None = None):
        self.registry, self.model_name, self.base_sha256 = registry, model_name, base_sha256

    def lookup(self) -> dict[str, str]:
        """alias -> version for the live aliases the registry holds now."""
        found = {}
        for alias in LIVE_ALIASES:
            version = self.registry.version_by_alias(self.model_name, alias)
            if version is not None:
                found[alias] = str(version.version)
        return found

    def fetch(self, version: str) -> VersionSpec:
        """Download a version's weights (adapter, or a whole model) and say which it is."""
        model_version = self.registry.client().get_model_version(self.model_name, version)
        trained_on = model_version.tags.get("base_model.sha256")
        if self.base_sha256 and trained_on and trained_on != self.base_sha256:
            raise ValueError(f"{self.model_name} v{version} was trained on base {trained_on[:12]}, not the served "
                             f"base {self.base_sha256[:12]}; it is not loaded")
        path = Path(self.registry.download_adapter(model_version))
        return VersionSpec(version=version, path=path, is_adapter=is_adapter(path))
