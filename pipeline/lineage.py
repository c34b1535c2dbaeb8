"""What a model is made of: the facts recorded as tags on its registry version, and read back on call."""

from __future__ import annotations

import subprocess

from pipeline.paths import PROJECT_ROOT


def code_version() -> str:
    """The git commit of the code that ran, with `-dirty` when the work tree had changes; `unknown` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


LINEAGE_ORDER = [
    "base_model.name", "base_model.source", "base_model.source_sha256", "base_model.sha256",
    "data.seed_examples", "data.quarantined_examples", "data.deduped_examples", "data.train_split", "data.heldout_split", "data.sources",
    "recipe.name", "recipe.fingerprint", "code.version", "gate.passed", "gate.checks", "gate.eval_report_version",
    "dagster.run_id", "dagster.job", "mlflow.run_id",
    "eval.base_rouge_l", "eval.candidate_rouge_l", "eval.rouge_l_gain", "eval.base_loss", "eval.candidate_loss", "eval.win_rate_vs_base",
]


def format_lineage(model_name: str, version: str, aliases: list[str], tags: dict[str, str]) -> str:
    """A readable lineage sheet: the known keys in a fixed order, then anything else recorded."""
    lines = [f"{model_name} version {version}" + (f"  (aliases: {', '.join(sorted(aliases))})" if aliases else "")]
    width = max([len(k) for k in tags] + [10])
    for key in LINEAGE_ORDER + sorted(k for k in tags if k not in LINEAGE_ORDER and k != "recipe.values"):
        if key in tags:
            lines.append(f"  {key.ljust(width)}  {tags[key]}")
    if "recipe.values" in tags:
        lines.append(f"  {'recipe.values'.ljust(width)}  {tags['recipe.values']}")
    return "\n".join(lines)
