"""The model pool: the base loaded once, each live version's adapter on it (PEFT multi-adapter) or a fully
fine-tuned version as its own model, and the hot swap: load the new version, then point the alias at it in one
assignment. A version leaves memory only when no request holds it, so requests in flight never fail."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionSpec:
    """What the registry says an alias points at, with its weights downloaded to `path`."""

    version: str
    path: Path
    is_adapter: bool


@dataclass(frozen=True)
class Lease:
    """One request's hold on a live version; the version stays loaded until every lease is returned."""

    alias: str
    version: str


@dataclass
class _Loaded:
    spec: VersionSpec
    model: Any  # the shared PeftModel for adapters, its own model for a full version
    tokenizer: Any
    adapter: str | None


@dataclass(frozen=True)
class Generated:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class ModelPool:
    def __init__(self, base_path: Path, dtype: str = "float32", threads: int = 0):
        import torch
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.dtype = getattr(torch, dtype)
        self.base_path = Path(base_path)
        self.tokenizer = self._tokenizer(self.base_path)
        self.base = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=self.dtype).eval()
        self._peft = None  # the base wrapped once the first adapter arrives
        self._loaded: dict[str, _Loaded] = {}
        self._aliases: dict[str, str] = {}  # alias -> version; replaced whole on a swap
        self._leases: dict[str, int] = {}
        self._gen_lock = threading.Lock()  # one forward pass at a time: adapters share the base's modules
        self._book_lock = threading.Lock()
        self._reap_lock = threading.Lock()
        self.swaps = 0

    @staticmethod
    def _tokenizer(path: Path):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    # --- what is live ---------------------------------------------------------------------------------------
    def live(self) -> dict[str, str]:
        """alias -> version now answering."""
        return dict(self._aliases)

    def spec(self, version: str) -> VersionSpec | None:
        """The spec of a loaded version (no second download), None when it is not loaded."""
        loaded = self._loaded.get(version)
        return loaded.spec if loaded else None

    def loaded_versions(self) -> list[str]:
        return sorted(self._loaded)

    def sync(self, wanted: dict[str, VersionSpec]) -> list[str]:
        """Make the aliases point at `wanted`: new versions are loaded first, then all aliases swap at once.
        An alias missing from `wanted` keeps its version (the server never goes without a model)."""
        with self._reap_lock:  # a version being unloaded is not reused half-gone
            for spec in wanted.values():
                if spec.version not in self._loaded:
                    self._load(spec)
            target = {**self._aliases, **{alias: spec.version for alias, spec in wanted.items()}}
            changes = [f"{a}: v{self._aliases.get(a, '-')} -> v{v}" for a, v in target.items() if self._aliases.get(a) != v]
            if "canary" in self._aliases and "canary" not in wanted:  # a removed canary stops taking traffic
                target.pop("canary")
                changes.append(f"canary: v{self._aliases['canary']} -> -")
            with self._book_lock:
                self._aliases = target  # the swap: one assignment, seen whole by every later request
                if changes:
                    self.swaps += 1
        self._reap()
        for change in changes:
            log.info("swapped %s", change)
        return changes

    def _load(self, spec: VersionSpec) -> None:
        from transformers import AutoModelForCausalLM

        if not spec.is_adapter:  # a full fine-tuned version: its own weights, loaded outside the lock
            model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=self.dtype).eval()
            tokenizer = self._tokenizer(spec.path) if (spec.path / "tokenizer_config.json").exists() else self.tokenizer
            self._loaded[spec.version] = _Loaded(spec, model, tokenizer, None)
            return
        from peft import PeftModel

        name = f"v{spec.version}"
        with self._gen_lock:  # adding LoRA modules to the shared base must not race a forward pass
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.base, str(spec.path), adapter_name=name).eval()
            else:
                self._peft.load_adapter(str(spec.path), adapter_name=name)
        self._loaded[spec.version] = _Loaded(spec, self._peft, self.tokenizer, name)

    def _reap(self) -> None:
        """Unload versions that no alias names and no request holds."""
        with self._reap_lock:
            with self._book_lock:
                idle = [v for v in self._loaded if v not in self._aliases.values() and not self._leases.get(v)]
            for version in idle:
                self._unload(version)

    def _unload(self, version: str) -> None:
        loaded = self._loaded[version]
        if loaded.adapter is not None:
            with self._gen_lock:
                if len(self._peft.peft_config) == 1:
                    return  # PEFT keeps at least one adapter; it is unused and small
                self._peft.delete_adapter(loaded.adapter)
        del self._loaded[version]
        log.info("unloaded v%s", version)

    @contextmanager
    def lease(self, alias: str) -> Iterator[Lease]:
        """Hold the version `alias` points at now for the length of one request."""
        with self._book_lock:
            version = self._aliases.get(alias)
            if version is None:
                raise KeyError(alias)
            self._leases[version] = self._leases.get(version, 0) + 1
        try:
            yield Lease(alias, version)
        finally:
            with self._book_lock:
                self._leases[version] -= 1
            self._reap()

    # --- generation -----------------------------------------------------------------------------------------
    def prompt_ids(self, lease: Lease, messages: list[dict[str, str]]):
        tokenizer = self._loaded[lease.version].tokenizer
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)

    def _generate_kwargs(self, loaded: _Loaded, inputs, max_new_tokens: int, temperature: float, top_p: float,
                         seed: int | None) -> dict[str, Any]:
        sample = temperature > 0
        if seed is not None:
            self._torch.manual_seed(seed)
        return {**inputs, "max_new_tokens": max_new_tokens, "do_sample": sample,
                "temperature": temperature if sample else None, "top_p": top_p if sample else None, "top_k": None,
                "pad_token_id": loaded.tokenizer.pad_token_id}

    def _select(self, loaded: _Loaded):
        if loaded.adapter is not None:
            loaded.model.set_adapter(loaded.adapter)
        return loaded.model

    def generate(self, lease: Lease, messages: list[dict[str, str]], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> Generated:
        loaded = self._loaded[lease.version]
        inputs = self.prompt_ids(lease, messages)
        prompt_len = inputs["input_ids"].shape[1]
        with self._gen_lock, self._torch.inference_mode():
            model = self._select(loaded)
            out = model.generate(**self._generate_kwargs(loaded, inputs, max_new_tokens, temperature, top_p, seed))
        new = out[0, prompt_len:].tolist()
        eos = loaded.tokenizer.eos_token_id
        finish = "stop" if new and new[-1] == eos or len(new) < max_new_tokens else "length"
        text = loaded.tokenizer.decode(new, skip_special_tokens=True)
        return Generated(text, prompt_len, len(new), finish)

    def stream(self, lease: Lease, messages: list[dict[str, str]], max_new_tokens: int, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None) -> Iterator[str | Generated]:
        """Text pieces as they are decoded, then the whole `Generated` last."""
        from transformers import TextIteratorStreamer

        loaded = self._loaded[lease.version]
        inputs = self.prompt_ids(lease, messages)
        prompt_len = inputs["input_ids"].shape[1]
        streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with self._gen_lock, self._torch.inference_mode():
                    model = self._select(loaded)
                    kwargs = self._generate_kwargs(loaded, inputs, max_new_tokens, temperature, top_p, seed)
                    result["out"] = model.generate(**kwargs, streamer=streamer)
            except Exception as error:  # surfaced to the consumer below, after the streamer is ended
                result["error"] = error
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        pieces = []
        for piece in streamer:
            if piece:
                pieces.append(piece)
                yield piece
        thread.join()
        if "error" in result:
            raise result["error"]
        new = result["out"][0, prompt_len:].tolist()
        finish = "stop" if len(new) < max_new_tokens or (new and new[-1] == loaded.tokenizer.eos_token_id) else "length"
        yield Generated("".join(pieces), prompt_len, len(new), finish)
