"""MLflow tracking and model registry: SQLite and a local artifact folder by default, any MLflow server in production."""


import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.evaluation.gate import refuse_unless_gated
from pipeline.paths import resolve
from pydantic import PrivateAttr

CHALLENGER, CHAMPION, CANARY = "challenger", "champion", "canary"
MOVE_TAG_PREFIX = "alias_move."  # one version tag per alias move: alias_move.<UTC time>.<alias>


def _missing(error: Exception) -> bool:
    """MLflow's way of saying 'no such model or alias'; anything else (a server down, bad credentials) is real."""
    return getattr(error, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class ModelRegistry(dg.ConfigurableResource):
    """Set `tracking_uri` to `http(s)://...` for a server; credentials come from MLflow's own environment variables."""

    tracking_uri: str = "sqlite:///.store/mlflow/mlflow.db"
    artifact_root: str = ".store/mlflow/artifacts"  # used only when this resource creates the experiment
    ui_url: str | None = None  # where engineers open MLflow, for links in the Dagster UI

    _client = PrivateAttr(default=None)

    def _normalised_uri(self) -> str:
        if self.tracking_uri.startswith("sqlite:///") and not self.tracking_uri.startswith("sqlite:////"):
            path = resolve(self.tracking_uri[len("sqlite:///") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{path}"
        return self.tracking_uri

    @property
    def uri(self) -> str:
        return self._normalised_uri()

    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def experiment_id(self, name: str) -> str:
        existing = self.client().get_experiment_by_name(name)
        if existing:
            return existing.experiment_id
        location = self.artifact_root if "://" in self.artifact_root else resolve(self.artifact_root).as_uri()
        return self.client().create_experiment(name, artifact_location=location)

    def run_link(self, run_id: str) -> str | None:
        if not self.ui_url:
            return None
        run = self.client().get_run(run_id)
        return f"{self.ui_url.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.client().log_metric(run_id, key, float(value))

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client().set_tag(run_id, key, value)

    def register(self, model_name: str, run_id: str, adapter_dir: Path, tags: dict[str, str], description: str,
                 artifact_path: str = "adapter", extra_dirs: dict[str, Path] | None = None) -> str:
        """Log the weights (adapter, or full model under another `artifact_path`) and any extra folders (the merged
        model) to the run, create a model version from the weights with lineage tags; return the version."""
        client = self.client()
        client.log_artifacts(run_id, str(adapter_dir), artifact_path=artifact_path)
        for name, folder in (extra_dirs or {}).items():
            client.log_artifacts(run_id, str(folder), artifact_path=name)
        try:
            client.get_registered_model(model_name)
        except Exception:  # MLflow raises RestException(RESOURCE_DOES_NOT_EXIST); its type differs by backend
            client.create_registered_model(model_name, description="LLM fine-tuned by the Dagster pipeline")
        source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        version = client.create_model_version(model_name, source=source, run_id=run_id, tags=tags, description=description)
        return str(version.version)

    def version_by_alias(self, model_name: str, alias: str):
        """The version holding `alias`, or None when the model or the alias does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_model_version_by_alias(model_name, alias)
        except MlflowException as error:
            if _missing(error):
                return None
            raise

    def move_alias(self, model_name: str, alias: str, version: str, *, actor: str, reason: str,
                   evidence: dict[str, Any] | None = None) -> dict[str, Any]:
        """Point `alias` at `version`, refusing a version whose evaluation gate did not pass; the move (who, why,
        evidence, time, the version it replaced) is recorded as a tag on the version. Returns the record."""
        refuse_unless_gated(model_name, version, self.version_tags(model_name, version), f"moving '{alias}'")
        previous = self.version_by_alias(model_name, alias)
        self.client().set_registered_model_alias(model_name, alias, version)
        return self._record_move(model_name, version, alias, "set", actor, reason, evidence,
                                 previous=str(previous.version) if previous else None)

    def remove_alias(self, model_name: str, alias: str, *, actor: str, reason: str,
                     evidence: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Take `alias` off whichever version holds it, recording why on that version; None if nobody held it."""
        holder = self.version_by_alias(model_name, alias)
        if holder is None:
            return None
        self.client().delete_registered_model_alias(model_name, alias)
        return self._record_move(model_name, str(holder.version), alias, "removed", actor, reason, evidence, previous=None)

    def _record_move(self, model_name: str, version: str, alias: str, action: str, actor: str, reason: str,
                     evidence: dict[str, Any] | None, previous: str | None) -> dict[str, Any]:
        at = datetime.now(timezone.utc)
        record = {"alias": alias, "action": action, "version": version, "previous": previous, "by": actor,
                  "reason": reason, "evidence": evidence or {}, "at": at.isoformat(timespec="milliseconds")}
        key = f"{MOVE_TAG_PREFIX}{at.strftime('%Y%m%dT%H%M%S%fZ')}.{alias}"
        self.client().set_model_version_tag(model_name, version, key, json.dumps(record, sort_keys=True))
        return record

    def alias_history(self, model_name: str) -> list[dict[str, Any]]:
        """Every recorded alias move of the model, oldest first."""
        moves = []
        for version in self.client().search_model_versions(f"name='{model_name}'"):
            moves += [json.loads(v) for k, v in version.tags.items() if k.startswith(MOVE_TAG_PREFIX)]
        return sorted(moves, key=lambda m: m["at"])

    def download_adapter(self, model_version) -> Path:
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_version.source))

    def version_tags(self, model_name: str, version: str) -> dict[str, Any]:
        return dict(self.client().get_model_version(model_name, version).tags)
