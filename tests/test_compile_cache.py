"""Paying compilation once: the compile cache's key and round trip through the bucket, and the compile decision."""

import json
import os
from pathlib import Path

import pytest
import torch

from pipeline.recipe import COMPILE_MIN_TOKENS, COMPILE_MIN_TOKENS_CACHED, TrainingRecipe
from pipeline.training.compile_cache import CompileCacheStore, cache_key, persist_compile_cache
from pipeline.training.compile_plan import plan_compile
from pipeline.training.compile_policy import decide_compile, expected_training_tokens

LLAMA = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "_name_or_path": "/models/a",
         "transformers_version": "5.24.0"}


def test_cache_key_follows_shape_and_compiled_recipe_not_the_model_path():
    lora = TrainingRecipe()
    key = cache_key(LLAMA, lora, device="NVIDIA H200")
    assert key.startswith(f"torch-{torch.__version__}/nvidia-h200/llama-".lower())
    assert cache_key({**LLAMA, "_name_or_path": "/elsewhere"}, lora, device="NVIDIA H200") == key
    assert cache_key({**LLAMA, "hidden_size": 4096}, lora, device="NVIDIA H200") != key
    assert cache_key(LLAMA, lora, device="NVIDIA H100 80GB HBM3") != key
    assert cache_key(LLAMA, TrainingRecipe(lora={"r": 32}), device="NVIDIA H200") != key
    assert cache_key(LLAMA, TrainingRecipe(method="full"), device="NVIDIA H200") != key
    # what does not change the graph shares the cache
    assert cache_key(LLAMA, TrainingRecipe(learning_rate=1e-5, seed=7), device="NVIDIA H200") == key


def test_local_store_round_trip_is_whole_and_misses_cleanly(tmp_path):
    store = CompileCacheStore(str(tmp_path / "cache"))
    assert store.fetch("torch-2/gpu/llama-abc") is None
    store.put("torch-2/gpu/llama-abc", b"first")
    store.put("torch-2/gpu/llama-abc", b"second")
    assert store.fetch("torch-2/gpu/llama-abc") == b"second"
    assert [p.name for p in (tmp_path / "cache/torch-2/gpu").iterdir()] == ["llama-abc.bin"]  # no temp file left


def test_s3_store_round_trip(monkeypatch):
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="models")
        store = CompileCacheStore("s3://models/compile-cache/")
        assert store.fetch("k/llama-1") is None
        assert store.put("k/llama-1", b"artifacts") == "s3://models/compile-cache/k/llama-1.bin"
        assert store.fetch("k/llama-1") == b"artifacts"


class FakeCompiler:
    """Stands in for torch.compiler's artifact calls: compiling a real graph on CPU takes a minute here."""

    def __init__(self, monkeypatch, inductor_dir: Path, produced: bytes = b"compiled kernels") -> None:
        self.produced, self.loaded = produced, []
        # a compiled run also keeps Inductor's folder: an empty one of its own, not this machine's
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor_dir))
        monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (self.produced, object()))
        monkeypatch.setattr(torch.compiler, "load_cache_artifacts", self._load)

    def _load(self, data: bytes):
        if data == b"garbage":
            raise ValueError("bad artifact")
        self.loaded.append(data)
        return object()


@pytest.fixture(autouse=True)
def four_compile_threads():
    """A restored compile sets Inductor's compile threads for the process; here they are restored after each test
    (with torch's own patch: pytest's monkeypatch deletes config entries on undo)."""
    import torch._inductor.config

    with torch._inductor.config.patch(compile_threads=4):
        yield


def test_a_compile_is_stored_after_the_first_run_and_loaded_by_the_next(tiny_model_dir, tmp_path, monkeypatch):
    compiler = FakeCompiler(monkeypatch, tmp_path / "inductor")
    recipe = TrainingRecipe(torch_compile=True)
    messages = []
    report = lambda m, x: messages.append(m)  # noqa: E731
    uri = str(tmp_path / "bucket/compile-cache")

    first = plan_compile(tiny_model_dir, recipe, [100] * 4, uri, report)
    first.restore(report)
    assert first.decision.compile and not first.loaded and compiler.loaded == []
    assert "cache_store_s" in first.persist(report)
    assert first.cache_bytes_stored == len(b"compiled kernels")

    second = plan_compile(tiny_model_dir, recipe, [100] * 4, uri, report)
    assert second.key == first.key and second.decision.cached
    second.restore(report)
    assert second.loaded and compiler.loaded == [b"compiled kernels"]
    assert second.persist(report) == {}  # a cache hit is not written back
    assert second.summary()["compile_cache_hit"] is True
    assert any(m.startswith("loaded compile cache") for m in messages)


def test_an_unreadable_cache_means_a_compile_from_scratch(tiny_model_dir, tmp_path, monkeypatch):
    compiler = FakeCompiler(monkeypatch, tmp_path / "inductor")
    recipe = TrainingRecipe(torch_compile=True)
    uri = str(tmp_path / "cache")
    key = plan_compile(tiny_model_dir, recipe, [100] * 4, uri, lambda m, x: None).key
    CompileCacheStore(uri).put(key, b"garbage")
    messages = []
    plan = plan_compile(tiny_model_dir, recipe, [100] * 4, uri, lambda m, x: messages.append(m))
    plan.restore(lambda m, x: messages.append(m))
    assert not plan.loaded and "unreadable" in messages[-1]
    plan.persist(lambda m, x: None)  # the fresh compile replaces the broken one
    assert CompileCacheStore(uri).fetch(key) == compiler.produced


def test_persist_reports_a_store_it_cannot_write_and_goes_on(tmp_path, monkeypatch):
    FakeCompiler(monkeypatch, tmp_path / "inductor")
    (tmp_path / "file").write_text("not a folder")
    stored, message = persist_compile_cache(CompileCacheStore(str(tmp_path / "file")), "k")
    assert stored == 0 and message.startswith("compile cache not stored")


@pytest.mark.parametrize("setting", [True, False])
def test_an_explicit_setting_is_obeyed(setting):
    decision = decide_compile(TrainingRecipe(torch_compile=setting), 10**9 if not setting else 0, False, True)
    assert decision.compile is setting


def test_auto_compiles_on_a_gpu_only_when_the_tokens_pay_the_compile_back():
    auto = TrainingRecipe(torch_compile="auto")
    assert COMPILE_MIN_TOKENS_CACHED < COMPILE_MIN_TOKENS
    assert not decide_compile(auto, COMPILE_MIN_TOKENS - 1, cached=False, on_gpu=True).compile
    assert decide_compile(auto, COMPILE_MIN_TOKENS, cached=False, on_gpu=True).compile
    # a cached compile is cheaper, so smaller jobs pay it back
    between = (COMPILE_MIN_TOKENS + COMPILE_MIN_TOKENS_CACHED) // 2
    assert decide_compile(auto, between, cached=True, on_gpu=True).compile
    assert not decide_compile(auto, between, cached=False, on_gpu=True).compile
    assert not decide_compile(auto, 10**12, cached=True, on_gpu=False).compile  # never on a CPU
    tuned = TrainingRecipe(torch_compile="auto", compile_min_tokens=100)
    assert decide_compile(tuned, 100, cached=False, on_gpu=True).compile


def test_a_memory_budget_compiles_the_blocks_and_has_its_own_cache_key():
    budget = TrainingRecipe(activation_memory_budget=0.5)
    decision = decide_compile(budget, 0, cached=False, on_gpu=False)
    assert decision.compile and "activation_memory_budget 0.5" in decision.reason
    assert cache_key(LLAMA, budget, device="NVIDIA H200") != cache_key(LLAMA, TrainingRecipe(), device="NVIDIA H200")
    with pytest.raises(ValueError, match="torch_compile is false"):
        TrainingRecipe(activation_memory_budget=0.5, torch_compile=False)
    with pytest.raises(ValueError):
        TrainingRecipe(activation_memory_budget=0)


def test_auto_is_the_default_and_yaml_spellings_parse():
    assert TrainingRecipe().torch_compile == "auto"
    assert TrainingRecipe.model_validate({"torch_compile": True}).torch_compile is True
    with pytest.raises(ValueError):
        TrainingRecipe.model_validate({"torch_compile": "sometimes"})


def test_expected_tokens_count_every_token_up_to_max_length_and_stop_at_max_steps():
    lengths = [100] * 30 + [300] * 10  # 6,000 tokens
    assert expected_training_tokens(lengths, TrainingRecipe(epochs=2)) == 12_000
    assert expected_training_tokens(lengths, TrainingRecipe(max_length=200)) == 5_000  # the 300s count as 200
    # 2 steps of 4 examples: 8 of 40 examples at the mean length
    assert expected_training_tokens(lengths, TrainingRecipe(max_steps=2, batch_size=4, packing=False)) == 1_200
    assert expected_training_tokens([], TrainingRecipe()) == 0


def test_training_reports_its_phases_and_decision(tiny_model_dir, tmp_path):
    from pipeline.training.sft import train_sft
    from tests.test_training import canonical_train_file, training

    recipe = training(tiny_model_dir, max_steps=1, batch_size=4, torch_compile="auto", merge_adapter=False)
    result = train_sft(canonical_train_file(tmp_path, 8), tiny_model_dir, tmp_path / "out", recipe, lambda m, x: None,
                       compile_cache_uri=str(tmp_path / "cache"))
    phases = result.phases
    assert {"load_s", "prepare_s", "compile_s", "train_s", "save_s", "hash_s"} <= set(phases)
    assert all(phases[k] >= 0 for k in ("load_s", "prepare_s", "train_s", "save_s"))
    assert phases["compiled"] is False and "no GPU" in phases["compile_reason"]
    assert not Path(tmp_path / "cache").exists()  # nothing compiled, nothing stored
    json.dumps(result.to_dict())  # result.json stays serialisable


def test_an_eager_gpu_run_stores_its_triton_kernels_and_the_next_run_starts_with_them(tiny_model_dir, tmp_path,
                                                                                       monkeypatch):
    """Liger's kernels are built in the first steps of every process whose Triton cache is empty (each new pod);
    the first eager run on a GPU stores the files it built under its key and the next run unpacks them before its
    first step. Files that were there before the run (other models' kernels) stay out of the store."""
    recipe = TrainingRecipe(torch_compile="auto")
    uri = str(tmp_path / "bucket/compile-cache")
    messages = []
    report = lambda m, x: messages.append(m)  # noqa: E731

    first_pod = tmp_path / "pod-1/triton"
    (first_pod / "OLD").mkdir(parents=True)
    (first_pod / "OLD/other_model.cubin").write_bytes(b"built by an earlier run")
    os.utime(first_pod / "OLD/other_model.cubin", (1e9, 1e9))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(first_pod))
    first = plan_compile(tiny_model_dir, recipe, [100] * 4, uri, report, on_gpu=True)
    assert not first.decision.compile and "eager" in first.decision.reason
    first.restore(report)
    assert first.kernels_loaded == 0
    for name, body in {"A1B2/rms_norm_forward.cubin": b"\x7fELF rms", "A1B2/rms_norm_forward.json": b"{}",
                       "C3D4/swiglu_backward.cubin": b"\x7fELF swiglu"}.items():  # what Triton wrote while training
        (first_pod / name).parent.mkdir(parents=True, exist_ok=True)
        (first_pod / name).write_bytes(body)
    assert "cache_store_s" in first.persist(report)
    assert first.summary()["compile_cache_bytes_stored"] > 0

    second_pod = tmp_path / "pod-2/triton"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(second_pod))
    second = plan_compile(tiny_model_dir, recipe, [100] * 4, uri, report, on_gpu=True)
    assert second.key == first.key
    second.restore(report)
    assert second.kernels_loaded == 3 and not (second_pod / "OLD").exists()
    assert (second_pod / "C3D4/swiglu_backward.cubin").read_bytes() == b"\x7fELF swiglu"
    assert second.persist(report) == {}  # a hit is not written back
    assert second.summary()["kernel_files_loaded"] == 3
    assert any(m.startswith("loaded 3 kernel files") for m in messages)


def test_a_compiled_run_also_keeps_inductor_s_folder(tiny_model_dir, tmp_path, monkeypatch):
    """The compiled graphs' Triton kernels live in Inductor's cache folder, which the store keeps beside PyTorch's
    cache artifacts and the next machine unpacks first; with both restored the compile runs in-process."""
    import torch._inductor.config

    compiler = FakeCompiler(monkeypatch, tmp_path / "inductor")
    recipe = TrainingRecipe(torch_compile=True)
    uri = str(tmp_path / "cache")
    report = lambda m, x: None  # noqa: E731
    for pod in ("pod-1", "pod-2"):
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / pod / "inductor"))
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / pod / "inductor/triton/0"))
        plan = plan_compile(tiny_model_dir, recipe, [100] * 4, uri, report, on_gpu=True)
        plan.restore(report)
        if pod == "pod-1":
            built = tmp_path / pod / "inductor"
            for name in ("fxgraph/ab/graph", "ab/cabc.py", "triton/0/K1/kernel.cubin"):
                (built / name).parent.mkdir(parents=True, exist_ok=True)
                (built / name).write_bytes(name.encode())
            plan.persist(report)
            assert plan.kernels_loaded == 0
            assert torch._inductor.config.compile_threads == 4  # a cold compile builds its kernels in parallel
    assert plan.loaded and compiler.loaded == [b"compiled kernels"]
    assert plan.kernels_loaded == 3
    assert torch._inductor.config.compile_threads == 1  # all cached: no pool of compile workers to start
    assert (tmp_path / "pod-2/inductor/triton/0/K1/kernel.cubin").read_bytes() == b"triton/0/K1/kernel.cubin"
    # an eager run of the same model keeps its own kernels: it does not take the compiled run's
    eager = plan_compile(tiny_model_dir, TrainingRecipe(torch_compile=False), [100] * 4, uri, report, on_gpu=True)
    assert eager.key == plan.key and eager._kernels is None


def test_kernel_archives_keep_to_their_folder_and_what_is_there(tmp_path):
    import io
    import tarfile

    from pipeline.training.compile_cache import pack_folders, unpack_folders

    assert pack_folders({"triton": tmp_path / "none"}) is None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, body in (("triton/ok/k.cubin", b"new"), ("triton/../escape.cubin", b"x"), ("elsewhere/x", b"y")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    target = tmp_path / "cache"
    (target / "ok").mkdir(parents=True)
    (target / "ok/k.cubin").write_bytes(b"local")
    with pytest.raises(tarfile.OutsideDestinationError):
        unpack_folders(buffer.getvalue(), {"triton": target})
    assert not (tmp_path / "escape.cubin").exists()
    assert (target / "ok/k.cubin").read_bytes() == b"local"


def test_a_cpu_run_keeps_no_kernel_cache(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton/k.cubin").write_bytes(b"k")
    plan = plan_compile(tiny_model_dir, TrainingRecipe(torch_compile=False), [100] * 4, str(tmp_path / "cache"),
                        lambda m, x: None, on_gpu=False)
    plan.restore(lambda m, x: None)
    assert plan.persist(lambda m, x: None) == {}
    assert not (tmp_path / "cache").exists()


ROUND_TRIP = """
import json, sys
import torch
from pathlib import Path
from pipeline.recipe import TrainingRecipe
from pipeline.training.compile_plan import plan_compile
from torch._dynamo.utils import compilation_time_metrics, counters

model_dir, store = Path(sys.argv[1]), sys.argv[2]
plan = plan_compile(model_dir, TrainingRecipe(torch_compile=True), [], store, lambda m, x: None)
plan.restore(lambda m, x: None)
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.up, self.down = torch.nn.LayerNorm(32), torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


torch.manual_seed(0)
block = Block()
block.compile(dynamic=True)
for rows in (40, 72):  # two lengths, one dynamic graph
    block(torch.randn(rows, 32, requires_grad=True)).square().mean().backward()
plan.persist(lambda m, x: None)
print(json.dumps({"hits": counters["inductor"]["fxgraph_cache_hit"], "misses": counters["inductor"]["fxgraph_cache_miss"],
                  "kernel_build_s": sum(compilation_time_metrics.get("compile_file", [])), "kernel_builds": len(compilation_time_metrics.get("compile_file", [])), **plan.summary()}))
"""


def test_a_real_compile_restored_on_a_fresh_machine_builds_almost_no_kernels(tiny_model_dir, tmp_path):
    """torch.compile on this CPU, in processes with their own empty Inductor caches (machines) sharing one store:
    the first builds its kernels (C++ here, Triton on a GPU) and stores them; the second builds almost none. A third
    that finds only PyTorch's portable artifacts in its store builds most of them again: the kernel folder is what
    saves the builds."""
    import shutil
    import subprocess
    import sys

    script = tmp_path / "round_trip.py"  # a file: Dynamo does not trace code run from `python -c`
    script.write_text(ROUND_TRIP)

    def machine(name: str, store: Path) -> dict:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / name / "inductor")}
        done = subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(store)], env=env,
                              capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    store = tmp_path / "bucket/compile-cache"
    first = machine("first", store)
    second = machine("second", store)
    artifacts_only = tmp_path / "other-bucket"
    [portable] = store.rglob("*.bin")
    (artifacts_only / portable.relative_to(store)).parent.mkdir(parents=True)
    shutil.copy(portable, artifacts_only / portable.relative_to(store))
    third = machine("third", artifacts_only)

    assert first["kernel_builds"] >= 4 and first["compile_cache_bytes_stored"] > 0 and first["hits"] == 0
    assert second["compile_cache_hit"] and second["kernel_files_loaded"] > 0 and second["hits"] > 0
    assert second["kernel_builds"] <= first["kernel_builds"] // 4
    assert third["compile_cache_hit"] and third["hits"] > 0 and third["kernel_builds"] >= first["kernel_builds"] // 2
