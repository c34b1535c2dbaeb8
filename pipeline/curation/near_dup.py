"""Near-duplicates: datatrove's MinHash LSH finds candidates, a similarity check decides.

The LSH bands are tuned to catch pairs well below the threshold (cheap, recall-oriented); each candidate
is then verified with the recipe's measure: `edit`, the normalised word-level Levenshtein similarity of the
datatrove-normalised words (what an edit rate means), or `jaccard`, the signatures' estimated Jaccard.
Records are taken in input order and one is dropped only when it is similar to a record already kept, so
each cluster is its kept record plus what duplicates it, and no chain of small edits drifts a cluster.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import ngrams, simplify_text
from rapidfuzz.distance import Levenshtein

from pipeline.curation.records import Record
from pipeline.recipe import NearDupRecipe as NearDupConfig


def record_text(rec: Record) -> str:
    return "\n".join(m["content"] for m in rec["messages"])


def answer_text(rec: Record) -> str:
    return "\n".join(m["content"] for m in rec["messages"] if m["role"] == "assistant")


def datatrove_config(config: NearDupConfig) -> MinhashConfig:
    # sha1, not datatrove's default xxhash: xxhash>=4 refuses the str shingles datatrove 0.10 passes it
    return MinhashConfig(n_grams=config.shingle_size, num_buckets=config.bands, hashes_per_bucket=config.rows,
                         seed=config.seed, hash_config=HashConfig(precision=64, hash_fc="sha1"))


class MinhashIndex:
    """Normalised words, MinHash signatures and LSH band keys of many texts, and the similarity of two."""

    def __init__(self, config: NearDupConfig, texts: list[str], answers: list[str] | None = None):
        self.config = config
        # datatrove's signature step used in memory; its output folder is never written as `run` is never called
        sig = MinhashDedupSignature(output_folder="memory://unused", config=datatrove_config(config))
        vocab: dict[str, int] = {}
        # datatrove's normalisation already lowercases and strips punctuation, so splitting on whitespace gives
        # the words spaCy would, at a fraction of the cost
        def words(text: str) -> list[int]:
            return [vocab.setdefault(w, len(vocab)) for w in simplify_text(text, sig.config.norm_config).split()]

        self.words = [words(t) for t in texts]
        self.answers = [words(a) for a in answers] if answers is not None and config.min_answer_similarity else None
        names = {i: w for w, i in vocab.items()}
        width = config.bands * config.rows
        self.sigs = np.full((len(texts), width), -1, dtype=np.int64)  # no shingles: a row of -1, in no bucket
        for i, words in enumerate(self.words):
            # the same shingle hashes as datatrove's get_shingles, each distinct shingle hashed once
            grams = {" ".join(names[w] for w in g) for g in ngrams(words, config.shingle_size)}
            if grams:
                shingles = np.fromiter((sig._hash_func(g) for g in sorted(grams)), dtype=np.uint64).reshape((-1, 1))
                self.sigs[i] = np.concatenate([np.asarray(b, dtype=np.int64) for b in sig.get_signature(shingles)])
        rows = config.rows
        self.keys = [[self.sigs[i, b * rows:(b + 1) * rows].tobytes() for b in range(config.bands)]
                     if self.sigs[i, 0] >= 0 else [] for i in range(len(texts))]

    def similarity(self, a: int, b: int) -> float:
        """Similarity of texts a and b by the recipe's measure; 0 when their answers differ too much."""
        if self.config.similarity == "jaccard":
            value = float(np.mean(self.sigs[a] == self.sigs[b]))
        else:
            # below the cut-off rapidfuzz stops early and returns 0; at or above it the value is exact
            value = Levenshtein.normalized_similarity(self.words[a], self.words[b], score_cutoff=self.config.threshold)
        if value and self.answers is not None and Levenshtein.normalized_similarity(
                self.answers[a], self.answers[b]) < self.config.min_answer_similarity:
            return 0.0
        return value


class CandidateBuckets:
    """LSH buckets of indexed texts; each bucket holds at most `cap` of them, so a boilerplate family that
    lands in one bucket costs at most `cap` comparisons per record instead of all pairs."""

    def __init__(self, index: MinhashIndex, cap: int):
        self.index, self.cap = index, cap
        self.buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(index.config.bands)]

    def add(self, i: int) -> None:
        for band, key in enumerate(self.index.keys[i]):
            members = self.buckets[band][key]
            if len(members) < self.cap:
                members.append(i)

    def candidates(self, i: int) -> list[int]:
        """Bucket mates of text i, most shared bands (highest estimated similarity) first, at most `cap`."""
        shared: Counter = Counter()
        for band, key in enumerate(self.index.keys[i]):
            shared.update(self.buckets[band].get(key, ()))
        return [j for j, _ in sorted(shared.items(), key=lambda kv: (-kv[1], kv[0]))[:self.cap]]


@dataclass
class NearDupResult:
    kept: list[Record]
    dropped: list[tuple[Record, str]]
    clusters: list[list[str]]  # ids per cluster, first one kept


def near_duplicate_clusters(texts: list[str], config: NearDupConfig, answers: list[str] | None = None) -> dict[int, list[int]]:
    """Clusters of text indices (kept index -> members, kept first): a text joins the first earlier kept text,
    in candidate order, whose similarity reaches the threshold; otherwise it is kept."""
    index = MinhashIndex(config, texts, answers)
    buckets = CandidateBuckets(index, config.max_candidates)
    clusters: dict[int, list[int]] = {}
    for i in range(len(texts)):
        match = next((j for j in buckets.candidates(i) if index.similarity(i, j) >= config.threshold), None)
        if match is None:
            buckets.add(i)  # only kept texts are indexed: a record is dropped for resembling what stays
        else:
            clusters.setdefault(match, [match]).append(i)
    return clusters


def drop_near_duplicates(records: list[Record], config: NearDupConfig) -> NearDupResult:
    """Keep the first record of every near-duplicate cluster (input order), drop the rest."""
    clusters = near_duplicate_clusters([record_text(r) for r in records], config, [answer_text(r) for r in records])
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
    """Index of each record with a near-duplicate in `reference` -> (the most similar reference id, similarity)."""
    if not records or not reference:
        return {}
    index = MinhashIndex(config, [record_text(r) for r in reference + records], [answer_text(r) for r in reference + records])
    buckets = CandidateBuckets(index, config.max_candidates)
    for j in range(len(reference)):
        buckets.add(j)
    hits: dict[int, tuple[str, float]] = {}
    for i in range(len(reference), len(reference) + len(records)):
        scored = [(index.similarity(i, j), -j) for j in buckets.candidates(i)]
        best = max(scored, default=None)
        if best and best[0] >= config.threshold:
            hits[i - len(reference)] = (reference[-best[1]]["id"], best[0])
    return hits
