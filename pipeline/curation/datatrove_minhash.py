"""Near-duplicates through datatrove's own four-stage MinHash pipeline (signatures, buckets, clusters on disk).

The file-based stages are what datatrove scales out: they run under its LocalPipelineExecutor or, with
`executor: ray`, its RayPipelineExecutor. Unlike the in-process index, every pair sharing an LSH band counts
as a duplicate (no similarity check), so the bands x rows S-curve is the threshold.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections import defaultdict
from pathlib import Path

from pipeline.curation.near_dup import NearDupConfig, NearDupResult, datatrove_config, keep_first_of_clusters, record_text
from pipeline.curation.records import Record


def _ray():
    """Ray, initialised for the recipe; a clear error when the extra is not installed."""
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("data.near_dup.executor is `ray` but Ray is not installed: pip install "
                           "'llm-finetune-pipeline[ray]' (or `pip install ray`), or use executor: local") from e
    return ray


def run_stage(pipeline: list, tasks: int, config: NearDupConfig, logs: Path) -> None:
    """One datatrove stage under the recipe's executor; raises when any of its tasks did not complete."""
    if config.executor == "ray":
        ray = _ray()
        from datatrove.executor.ray import RayPipelineExecutor

        if not ray.is_initialized():
            ray.init(address=config.ray_address, num_cpus=None if config.ray_address else config.workers,
                     include_dashboard=False, log_to_driver=False)
        executor = RayPipelineExecutor(pipeline, tasks=tasks, workers=config.workers, logging_dir=str(logs),
                                       mem_per_cpu_gb=0.5)
    else:
        from datatrove.executor import LocalPipelineExecutor

        executor = LocalPipelineExecutor(pipeline, tasks=tasks, workers=config.workers, logging_dir=str(logs))
    executor.run()
    # Ray's executor only warns when tasks fail; a half-run stage would silently keep duplicates
    if missing := executor.get_incomplete_ranks(range(tasks)):
        raise RuntimeError(f"datatrove stage in {logs} left tasks {missing} incomplete; see its logs")


def minhash_clusters_with_datatrove(texts: list[str], config: NearDupConfig, workdir: Path) -> dict[int, list[int]]:
    """Clusters of text indices (size > 1) found by datatrove's pipeline, each sorted."""
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupSignature
    from datatrove.pipeline.readers import JsonlReader

    (workdir / "in").mkdir(parents=True)
    with open(workdir / "in/data.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": text}) + "\n")
    mh = datatrove_config(config)
    for name, pipeline, tasks in [
        ("signatures", [JsonlReader(str(workdir / "in")), MinhashDedupSignature(str(workdir / "sigs"), config=mh)], 1),
        ("buckets", [MinhashDedupBuckets(str(workdir / "sigs"), str(workdir / "buckets"), config=mh)], mh.num_buckets),
        ("clusters", [MinhashDedupCluster(str(workdir / "buckets"), str(workdir / "clusters"), config=mh,
                                          save_cluster_id=True)], 1),
    ]:
        run_stage(pipeline, tasks, config, workdir / "logs" / name)

    members: dict[int, list[int]] = defaultdict(list)
    path = workdir / "clusters/000000.clusters"  # one input file -> file id 0; (doc index, cluster id) pairs
    data = path.read_bytes() if path.exists() else b""
    for doc, cluster in struct.iter_unpack("<2I", data):
        members[cluster].append(doc)
    return {min(m): sorted(m) for m in members.values() if len(m) > 1}


def drop_near_duplicates_with_datatrove(records: list[Record], config: NearDupConfig) -> NearDupResult:
    """Same contract as `drop_near_duplicates`: the earliest record of each cluster is kept."""
    if config.scratch_dir:
        Path(config.scratch_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="minhash-", dir=config.scratch_dir) as tmp:
        clusters = minhash_clusters_with_datatrove([record_text(r) for r in records], config, Path(tmp))
    return keep_first_of_clusters(records, clusters)
