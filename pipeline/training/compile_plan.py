"""One run's compile plan: look up the compile cache, decide whether to compile, restore the cached kernels before
the first step and store what was built after training.

Every GPU run keeps the kernel folders it built (`compile_cache.kernel_folders`) under its key: an eager run its
Triton kernels (Liger's, built on first use), a compiled run Inductor's cache as well, beside PyTorch's portable
cache artifacts. So no job size pays for the same kernel builds twice on machines of one kind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.recipe import TrainingRecipe
from pipeline.training.compile_cache import (COMPILED, KERNELS, CompileCacheStore, cache_key, compile_counters,
                                             kernel_folders, pack_folders, persist_compile_cache, unpack_folders)
from pipeline.training.compile_policy import CompileDecision, decide_compile, expected_training_tokens
from pipeline.training.monitoring import Reporter


class CompilePlan:
    def __init__(self, decision: CompileDecision, store: CompileCacheStore | None, key: str | None,
                 cached: bytes | None, kernels: bytes | None = None, on_gpu: bool = False) -> None:
        self.decision, self.store, self.key, self._cached = decision, store, key, cached
        self._kernels, self._on_gpu = kernels, on_gpu
        self.loaded = False  # PyTorch's cache artifacts were loaded
        self.kernels_loaded = 0  # kernel files taken from the store
        self.cache_bytes_stored = 0
        self._started = time.time()  # kernel files written from here on are this run's

    @property
    def _keeps_kernels(self) -> bool:
        """Whether this run keeps its kernel folders in the store: on a GPU (a CPU run builds no Triton kernels;
        compiled, its C++ kernels are kept all the same), with a store."""
        return self.store is not None and (self._on_gpu or self.decision.compile)

    def restore(self, reporter: Reporter) -> None:
        """Put the stored kernels and artifacts in this process's caches, before the first step builds any."""
        kernels_restored = self._restore_kernels(reporter)
        if self.decision.compile:
            self._restore_compiled(reporter)
        if self.loaded and kernels_restored:
            _compile_in_process()

    def _restore_kernels(self, reporter: Reporter) -> bool:
        """Unpack the store's kernel archive (files already here are kept); whether there was one to unpack."""
        if not self._keeps_kernels or self._kernels is None:
            return False
        try:
            self.kernels_loaded = unpack_folders(self._kernels, kernel_folders(self.decision.compile))
        except Exception as e:  # a broken upload: the kernels are built again, as without a cache
            reporter(f"kernel cache {self.key} unreadable ({type(e).__name__}); building kernels", {})
            return False
        reporter(f"loaded {self.kernels_loaded} kernel files from {self.key} ({len(self._kernels) / 2**20:.1f} MiB)",
                 {})
        return True

    def _restore_compiled(self, reporter: Reporter) -> None:
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

    def persist(self, reporter: Reporter) -> dict[str, float]:
        """Store what this run built when the store did not have it; returns the seconds it took."""
        if self.store is None:
            return {}
        started = time.monotonic()
        stored = False
        if self.decision.compile and not self.loaded:
            self.cache_bytes_stored, message = persist_compile_cache(self.store, self.key)
            reporter(message, {})
            stored = True
        if self._keeps_kernels and self._kernels is None and not self.loaded:  # a cached compile builds no kernels
            size, message = self._persist_kernels()
            self.cache_bytes_stored += size
            reporter(message, {})
            stored = True
        return {"cache_store_s": time.monotonic() - started} if stored else {}

    def _persist_kernels(self) -> tuple[int, str]:
        try:
            packed = pack_folders(kernel_folders(self.decision.compile), since=self._started - 1.0)
            if packed is None:
                return 0, "no kernels built; nothing to cache"
            where = self.store.put(self.key, packed, kind=_kernel_kind(self.decision.compile))
        except Exception as e:  # the weights matter, the cache does not: report and go on
            return 0, f"kernel cache not stored ({type(e).__name__}: {str(e)[:120]})"
        return len(packed), f"stored kernels at {where} ({len(packed) / 2**20:.1f} MiB)"

    def summary(self) -> dict[str, Any]:
        counters = compile_counters() if self.decision.compile else {}
        return {"compile_counters": counters, "compiled": self.decision.compile, "compile_reason": self.decision.reason,
                "expected_tokens": self.decision.expected_tokens, "compile_cache_key": self.key,
                "compile_cache_hit": self.loaded, "kernel_files_loaded": self.kernels_loaded,
                "compile_cache_bytes_stored": self.cache_bytes_stored}


def plan_compile(base_path: Path, recipe: TrainingRecipe, lengths: list[int], cache_uri: str | None,
                 reporter: Reporter, on_gpu: bool | None = None) -> CompilePlan:
    """Decide from the expected tokens (`lengths`: the training examples' token counts) and whether the store holds
    a compile for this model, GPU and torch, and fetch the kernels stored under the same key for a run compiled (or
    eager) as this one will be."""
    import torch
    from transformers import AutoConfig

    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    store = key = cached = kernels = None
    if cache_uri:
        store = CompileCacheStore(cache_uri)
        key = cache_key(AutoConfig.from_pretrained(base_path).to_dict(), recipe)
    if store is not None and recipe.torch_compile is not False:
        cached = _fetch(store, key, COMPILED, reporter)
    tokens = expected_training_tokens(lengths, recipe) if recipe.torch_compile == "auto" else 0
    decision = decide_compile(recipe, tokens, cached is not None, on_gpu)
    reporter(decision.reason, {})
    if store is not None and (on_gpu or decision.compile):
        kernels = _fetch(store, key, _kernel_kind(decision.compile), reporter)
    return CompilePlan(decision, store, key, cached, kernels, on_gpu)


def _compile_in_process() -> None:
    """With the graphs and their kernels all cached, Inductor has nothing to build: loading them in this process
    spares starting its pool of compile workers (each imports torch) and stopping it at exit. Measured on the H200
    host before the float fix, a cached 1B LoRA run: 84.6 s with one compile thread against 91.7 s with the pool,
    exit 1.9 against 3.5 s (bench/results/ttm_diag_lora_1b_1k_warm_h200_s21.json, runs warm1 and warm)."""
    import torch._inductor.config

    torch._inductor.config.compile_threads = 1


def _kernel_kind(compiled: bool) -> str:
    """Compiled and eager runs of one key build different kernels, so each keeps its own archive."""
    return f"compiled.{KERNELS}" if compiled else f"eager.{KERNELS}"


def _fetch(store: CompileCacheStore, key: str, kind: str, reporter: Reporter) -> bytes | None:
    try:
        return store.fetch(key, kind)
    except Exception as e:  # an unreachable bucket must not stop training, only cost a compile
        reporter(f"compile cache unreachable ({type(e).__name__}: {str(e)[:120]})", {})
        return None
