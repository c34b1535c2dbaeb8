"""One run's compile plan: look up the compile cache, decide whether to compile, load the cache before the first
step and store what was compiled after training."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from pipeline.recipe import TrainingRecipe
from pipeline.training.compile_cache import CompileCacheStore, cache_key, compile_counters, persist_compile_cache
from pipeline.training.compile_policy import CompileDecision, decide_compile, expected_training_tokens


class CompilePlan:
    def __init__(self, decision: CompileDecision, store: CompileCacheStore | None, key: str | None,
                 cached: bytes | None) -> None:
        self.decision, self.store, self.key, self._cached = decision, store, key, cached
        self.loaded = False
        self.cache_bytes_stored = 0

    def restore(self, reporter: Callable[[str, dict], None]) -> None:
        """Load the cached artifacts into this process's compile caches (before the blocks first run)."""
        if self._cached is None:
            if self.store is not None:
                reporter(f"no compile cache for {self.key}; compiling from scratch", {})
            return
        import torch

        try:
            self.loaded = torch.compiler.load_cache_artifacts(self._cached) is not None
        except Exception as e:  # a cache from a broken upload: compile from scratch instead
            reporter(f"compile cache {self.key} unreadable ({type(e).__name__}); compiling from scratch", {})
            return
        reporter(f"loaded compile cache {self.key} ({len(self._cached) / 2**20:.1f} MiB)", {})

    def persist(self, reporter: Callable[[str, dict], None]) -> dict[str, float]:
        """Store this run's artifacts when it compiled without a cache; returns the seconds it took."""
        if self.store is None or self.loaded:
            return {}
        started = time.monotonic()
        self.cache_bytes_stored, message = persist_compile_cache(self.store, self.key)
        reporter(message, {})
        return {"cache_store_s": time.monotonic() - started}

    def summary(self) -> dict[str, Any]:
        counters = compile_counters() if self.decision.compile else {}
        return {"compile_counters": counters, "compiled": self.decision.compile, "compile_reason": self.decision.reason,
                "expected_tokens": self.decision.expected_tokens, "compile_cache_key": self.key,
                "compile_cache_hit": self.loaded, "compile_cache_bytes_stored": self.cache_bytes_stored}


def plan_compile(base_path: Path, recipe: TrainingRecipe, rows: list[dict[str, Any]], tokenizer: Any,
                 cache_uri: str | None, reporter: Callable[[str, dict], None]) -> CompilePlan:
    """Decide from the expected tokens and whether the store holds a compile for this model, GPU and torch."""
    import torch
    from transformers import AutoConfig

    store = key = cached = None
    if cache_uri and recipe.torch_compile is not False:
        store = CompileCacheStore(cache_uri)
        key = cache_key(AutoConfig.from_pretrained(base_path).to_dict(), recipe)
        try:
            cached = store.fetch(key)
        except Exception as e:  # an unreachable bucket must not stop training, only cost a compile
            reporter(f"compile cache unreachable ({type(e).__name__}: {str(e)[:120]})", {})
    tokens = expected_training_tokens(rows, tokenizer, recipe) if recipe.torch_compile == "auto" else 0
    decision = decide_compile(recipe, tokens, cached is not None, torch.cuda.is_available())
    reporter(decision.reason, {})
    return CompilePlan(decision, store, key, cached)
