"""MinHash near-duplicates with datatrove's shingling and signatures, LSH banding and a similarity check.

datatrove's own MinHash pipeline is four file-based stages; here its signature step runs in-process on the
records we already hold, and candidate pairs from the LSH bands are confirmed by the signature's estimated
Jaccard similarity, so the configured threshold is the real cut-off rather than the S-curve of bands x rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.hashing import HashConfig

from pipeline.curation.records import Record
from pipeline.recipe import NearDupRecipe as NearDupConfig


def record_text(rec: Record) -> str:
    return "\n".join(m["content"] for m in rec["messages"])


def datatrove_config(config: NearDupConfig) -> MinhashConfig:
    # sha1, not datatrove's default xxhash: xxhash>=4 refuses the str shingles datatrove 0.10 passes it
    return MinhashConfig(n_grams=config.shingle_size, num_buckets=config.bands, hashes_per_bucket=config.rows,
                         seed=config.seed, hash_config=HashConfig(precision=64, hash_fc="sha1"))


class _WhitespaceWords:
    def word_tokenize(self, text: str) -> list[str]:
        return text.split()


class MinhashIndex:
    """Signatures of many texts, their LSH candidate pairs and the pairs that pass the threshold."""

    def __init__(self, config: NearDupConfig):
        self.config = config
        # the in-memory signature step; its output folder is never written because `run` is never called
        self._sig = MinhashDedupSignature(
            output_folder="memory://unused",
            config=datatrove_config(config),
        )
        # datatrove's text normalisation already lowercases and strips punctuation, so splitting on whitespace
        # gives the words spaCy would; it is what keeps all curation steps within 1.5x of the dedup alone
        self._sig.word_tokenizer = _WhitespaceWords()

    def signatures(self, texts: list[str]) -> np.ndarray:
        """One row of bands*rows min-hashes per text; a text with no shingles gets a row of -1 (matches nothing)."""
        width = self.config.bands * self.config.rows
        out = np.full((len(texts), width), -1, dtype=np.int64)
        for i, text in enumerate(texts):
            shingles = self._sig.get_shingles(text)
            if shingles.size:
                out[i] = np.concatenate([np.asarray(b, dtype=np.int64) for b in self._sig.get_signature(shingles)])
        return out

    def similar_pairs(self, sigs: np.ndarray, left: range, right: range | None = None) -> list[tuple[int, int, float]]:
        """Pairs (i, j, similarity) with i < j that share a band and whose estimated Jaccard >= threshold.

        With `right`, only pairs with one side in `left` and the other in `right` are returned (i in left).
        """
        rows = self.config.rows
        candidates: set[tuple[int, int]] = set()
        indices = list(left) + (list(right) if right is not None else [])
        in_left = set(left)
        for band in range(self.config.bands):
            buckets: dict[bytes, list[int]] = defaultdict(list)
            for i in indices:
                if sigs[i, 0] >= 0:
                    buckets[sigs[i, band * rows:(band + 1) * rows].tobytes()].append(i)
            for members in buckets.values():
                if len(members) < 2:
                    continue
                for a_pos, a in enumerate(members):
                    for b in members[a_pos + 1:]:
                        if right is None:
                            candidates.add((min(a, b), max(a, b)))
                        elif (a in in_left) != (b in in_left):
                            candidates.add((a, b) if a in in_left else (b, a))
        pairs = []
        for a, b in sorted(candidates):
            similarity = float(np.mean(sigs[a] == sigs[b]))
            if similarity >= self.config.threshold:
                pairs.append((a, b, similarity))
        return pairs


def _clusters(n: int, pairs: list[tuple[int, int, float]]) -> dict[int, list[int]]:
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the smallest index is the root: the earliest record is kept
    clusters: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        clusters[root(i)].append(i)
    return {r: m for r, m in clusters.items() if len(m) > 1}


@dataclass
class NearDupResult:
    kept: list[Record]
    dropped: list[tuple[Record, str]]
    clusters: list[list[str]]  # ids per cluster, first one kept


def drop_near_duplicates(records: list[Record], config: NearDupConfig) -> NearDupResult:
    """Keep the first record of every near-duplicate cluster (input order), drop the rest."""
    index = MinhashIndex(config)
    sigs = index.signatures([record_text(r) for r in records])
    clusters = _clusters(len(records), index.similar_pairs(sigs, range(len(records))))
    return keep_first_of_clusters(records, clusters)


def keep_first_of_clusters(records: list[Record], clusters: dict[int, list[int]]) -> NearDupResult:
    """Clusters of record indexes (root -> members, earliest first) to kept and dropped records; each drop
    names the record it duplicates."""
    root_of = {i: root for root, members in clusters.items() for i in members}
    drop = {i for members in clusters.values() for i in members[1:]}
    return NearDupResult(
        kept=[r for i, r in enumerate(records) if i not in drop],
        dropped=[({**r, "meta": {**r["meta"], "near_duplicate_of": records[root_of[i]]["id"]}}, "near_duplicate")
                 for i, r in enumerate(records) if i in drop],
        clusters=[[records[i]["id"] for i in members] for _, members in sorted(clusters.items())],
    )


def near_duplicates_of(records: list[Record], reference: list[Record], config: NearDupConfig) -> dict[int, tuple[str, float]]:
    """Index of each record with a near-duplicate in `reference` -> (that reference id, similarity)."""
    if not records or not reference:
        return {}
    index = MinhashIndex(config)
    sigs = index.signatures([record_text(r) for r in records + reference])
    hits: dict[int, tuple[str, float]] = {}
    for a, b, similarity in index.similar_pairs(sigs, range(len(records)), range(len(records), len(sigs))):
        if a not in hits or similarity > hits[a][1]:
            hits[a] = (reference[b - len(records)]["id"], similarity)
    return hits
