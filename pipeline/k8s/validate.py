"""Check rendered Kubernetes manifests the way an API server would, without one.

Core kinds (Pod, Job, Deployment, Service, ConfigMap, Secret, RBAC, ...) against the Kubernetes OpenAPI schema of a
pinned release with `kubernetes-validate` (strict: unknown fields are errors). Custom resources against the
`openAPIV3Schema` of their CustomResourceDefinition with `jsonschema`; the CRDs live in `deploy/*/crds/`.

    from pipeline.k8s.validate import validate_manifest
    validate_manifest(manifest)  # raises ManifestInvalid naming the object and the failing field
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from pipeline.paths import PROJECT_ROOT

KUBERNETES_VERSION = "1.33.0"  # the release manifests are checked against; clusters older than this may differ
CRD_DIRS = [PROJECT_ROOT / "deploy" / "kubeflow-trainer" / "crds"]
# CEL rules (x-kubernetes-validations) are not evaluated by jsonschema; the one every custom resource here has:
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class ManifestInvalid(ValueError):
    """A manifest the API server would reject."""


def name_of(manifest: dict[str, Any]) -> str:
    return f"{manifest.get('kind', '?')}/{manifest.get('metadata', {}).get('name', '?')}"


@functools.cache
def crd_schemas() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) -> openAPIV3Schema, from every CRD file under CRD_DIRS."""
    schemas = {}
    for folder in CRD_DIRS:
        for path in sorted(folder.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    schemas[(spec["group"], version["name"], spec["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


def validate_custom(manifest: dict[str, Any]) -> None:
    """Validate a custom resource against its CRD's openAPIV3Schema (and its metadata.name as a DNS label)."""
    import jsonschema

    group, _, version = manifest.get("apiVersion", "").rpartition("/")
    schema = crd_schemas().get((group, version, manifest.get("kind")))
    if schema is None:
        raise ManifestInvalid(f"{name_of(manifest)}: no CRD for {manifest.get('apiVersion')} {manifest.get('kind')} "
                              f"under {[str(d) for d in CRD_DIRS]}")
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        details = "; ".join(f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:5])
        raise ManifestInvalid(f"{name_of(manifest)} does not match its CRD schema: {details}")
    name = manifest.get("metadata", {}).get("name", "")
    if not _DNS_LABEL.match(name) or len(name) > 63:
        raise ManifestInvalid(f"{name_of(manifest)}: metadata.name must be an RFC 1035 label of at most 63 characters")


def validate_core(manifest: dict[str, Any], version: str = KUBERNETES_VERSION) -> None:
    """Validate a built-in kind against the pinned Kubernetes release's schema, rejecting unknown fields."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(map(str, error.path)) or "(root)"
        raise ManifestInvalid(f"{name_of(manifest)} is invalid for Kubernetes {version}: {path}: {error.message}") from None
    except kubernetes_validate.SchemaNotFoundError as error:
        raise ManifestInvalid(f"{name_of(manifest)}: unknown kind for Kubernetes {version}: {error}") from None


def is_core(manifest: dict[str, Any]) -> bool:
    group = manifest.get("apiVersion", "").rpartition("/")[0]
    return group == "" or not group.count(".") or group.endswith(".k8s.io")


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Validate one manifest: core kinds by the Kubernetes schema, the rest by their CRD."""
    if not isinstance(manifest, dict) or "apiVersion" not in manifest or "kind" not in manifest:
        raise ManifestInvalid(f"not a Kubernetes object (apiVersion and kind are required): {str(manifest)[:120]}")
    (validate_core if is_core(manifest) else validate_custom)(manifest)


def validate_all(manifests: Iterable[dict[str, Any]]) -> int:
    """Validate every manifest; return how many."""
    count = 0
    for manifest in manifests:
        validate_manifest(manifest)
        count += 1
    return count


def load_manifests(path: Path) -> list[dict[str, Any]]:
    """Every object in a YAML file (multi-document), skipping empty documents."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
