"""The training workload on the tiny model: methods, checkpoints, crash and resume, merge, monitoring."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from assets.training import training_metadata
from pipeline.paths import PROJECT_ROOT
from pipeline.recipe import TrainingRecipe
from pipeline.training.checkpoints import COMPLETE_MARKER, latest_complete, write_marker
from pipeline.training.methods import MethodUnavailable
from pipeline.training.monitoring import loss_curve_png
from pipeline.training.sft import train_sft
from tests.conftest import sample_chat_records, tiny_recipe



def canonical_train_file(folder: Path, limit: int = 64) -> Path:
    """The first `limit` well-formed chatml sample records, as the training stage receives them."""
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sample_chat_records(limit)))
    return path


def training(model_dir: Path, **values) -> TrainingRecipe:
    return tiny_recipe(model_dir, training=values).training


def fake_checkpoint(root: Path, step: int, *, marker: bool = True, state: bool = True) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if marker:
        write_marker(folder, step)
    return folder


def test_latest_complete_checkpoint_skips_half_written_ones(tmp_path):
    fake_checkpoint(tmp_path, 4)
    fake_checkpoint(tmp_path, 6)
    fake_checkpoint(tmp_path, 8, marker=False)  # killed before the Trainer finished writing it
    fake_checkpoint(tmp_path, 10, state=False)
    (fake_checkpoint(tmp_path, 12) / ".partial").touch()
    fake_checkpoint(tmp_path, 14).rename(tmp_path / "checkpoint-14.partial")
    assert latest_complete(tmp_path) == tmp_path / "checkpoint-6"


def test_sharded_checkpoints_count_as_complete_only_once_marked(tmp_path):
    # FSDP's sharded layout: a torch.distributed.checkpoint folder of weights (and one of optimizer state), no files
    for step, marked in ((4, True), (8, False)):
        folder = tmp_path / f"checkpoint-{step}"
        (folder / "pytorch_model_fsdp_0").mkdir(parents=True)
        (folder / "pytorch_model_fsdp_0" / "__0_0.distcp").write_bytes(b"x")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if marked:
            write_marker(folder, step)
    bare = tmp_path / "checkpoint-12"  # state and marker, but no weights in any layout
    bare.mkdir()
    (bare / "trainer_state.json").write_text(json.dumps({"global_step": 12}))
    write_marker(bare, 12)
    assert latest_complete(tmp_path) == tmp_path / "checkpoint-4"


def test_fsdp_checkpoints_are_sharded_and_the_final_save_is_whole():
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from trl import SFTConfig

    from pipeline.training.distributed import save_final_weights_whole, trainer_args

    config = SFTConfig(output_dir="unused", use_cpu=True, report_to=[], **trainer_args("fsdp"))
    plugin = FullyShardedDataParallelPlugin(**config.fsdp_plugin_args)  # as the Trainer builds it
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
    trainer = SimpleNamespace(is_fsdp_enabled=True, accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))
    save_final_weights_whole(trainer)
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert isinstance(plugin.state_dict_config, FullStateDictConfig) and plugin.state_dict_config.rank0_only
    untouched = FullyShardedDataParallelPlugin(**config.fsdp_plugin_args)
    save_final_weights_whole(SimpleNamespace(is_fsdp_enabled=False,  # DeepSpeed or one device: nothing to switch
                                             accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=untouched))))
    assert untouched.state_dict_type == StateDictType.SHARDED_STATE_DICT


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert latest_complete(tmp_path / "missing") is None
    fake_checkpoint(tmp_path, 2, marker=False)
    assert latest_complete(tmp_path) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error path is for machines without a GPU")
def test_qlora_without_a_gpu_fails_before_loading_anything(tmp_path):
    recipe = TrainingRecipe(method="qlora")
    # the base path does not exist: reaching the loader would raise a different error
    with pytest.raises(MethodUnavailable, match="qlora needs a CUDA GPU"):
        train_sft(tmp_path / "train.jsonl", tmp_path / "no-such-base", tmp_path / "out", recipe, lambda m, x: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error path is for machines without a GPU")
def test_qlora_spec_fails_in_the_workload_with_the_reason(tmp_path):
    spec = {"train_path": str(tmp_path / "t.jsonl"), "base_path": str(tmp_path / "b"), "output_dir": str(tmp_path / "o"),
            "training": {"method": "qlora"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "pipeline.training", "--spec", str(tmp_path / "spec.json")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "MethodUnavailable" in done.stderr and "qlora needs a CUDA GPU" in done.stderr


def test_killed_run_resumes_from_its_latest_checkpoint_and_ends_at_the_same_step(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    max_steps = 120
    spec = {"train_path": str(canonical_train_file(tmp_path)), "base_path": str(tiny_model_dir), "output_dir": str(out),
            "training": training(tiny_model_dir, max_steps=max_steps, save_steps=4, save_total_limit=2,
                                 logging_steps=4, max_length=128, merge_adapter=False).model_dump()}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, "-m", "pipeline.training", "--spec", str(tmp_path / "spec.json")]

    first = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while latest_complete(out / "checkpoints") is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, (
        f"the first attempt ended (exit {first.returncode}) before it could be killed: {first.stderr.read()[-2000:]}")
    killed_at = latest_complete(out / "checkpoints")
    assert killed_at is not None and not (out / "result.json").exists()

    second = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = [line for line in second.stderr.splitlines() if "resuming from checkpoint-" in line]
    assert resumed, second.stderr[-3000:]
    step = int(resumed[0].split("resuming from checkpoint-")[1].split()[0])
    assert 0 < step < max_steps and step >= int(killed_at.name.split("-")[1])
    result = json.loads((out / "result.json").read_text())
    assert result["global_step"] == max_steps
    assert result["resumed_from"] == f"checkpoint-{step}"
    assert len([p for p in (out / "checkpoints").iterdir() if p.name.startswith("checkpoint-")]) <= 2


def test_lora_with_dora_saves_an_adapter_and_a_merged_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = training(tiny_model_dir, max_steps=2, lora={"use_dora": True})
    reports = []
    result = train_sft(canonical_train_file(tmp_path, 16), tiny_model_dir, tmp_path / "out", recipe,
                       lambda m, x: reports.append((m, x)))
    adapter_config = json.loads(Path(result.adapter_path, "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is True
    assert result.weights_sha256 == result.adapter_sha256
    merged = AutoModelForCausalLM.from_pretrained(result.model_path)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert list(Path(result.model_path).glob("*.safetensors"))
    metrics = [x for _, x in reports if "loss" in x]
    assert metrics and {"learning_rate", "grad_norm", "tokens_per_second", "peak_memory_mb"} <= set(metrics[-1])
    assert any(m.startswith("step 2/2") for m, _ in reports)


def test_full_fine_tuning_saves_the_whole_model(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    recipe = training(tiny_model_dir, method="full", max_steps=2)
    result = train_sft(canonical_train_file(tmp_path, 16), tiny_model_dir, tmp_path / "out", recipe, lambda m, x: None)
    assert result.adapter_path is None and result.weights_sha256 == result.model_sha256
    trained = load_file(Path(result.model_path, "model.safetensors"))
    base = load_file(tiny_model_dir / "model.safetensors")
    assert set(trained) == set(base)
    assert any(not torch.equal(trained[k], base[k]) for k in base)


def test_a_full_model_is_saved_in_shards_and_hashed_as_one_after_the_other_would(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    """Shards of at most SHARD_SIZE, hashed concurrently for lineage: the value is the serial one, the model loads
    whole, and no pickled training arguments sit beside the weights."""
    import hashlib

    from transformers import AutoModelForCausalLM

    import pipeline.models.base_model as base_model

    monkeypatch.setattr(base_model, "SHARD_SIZE", "100KB")  # the tiny model is a few hundred KB in fp32
    recipe = training(tiny_model_dir, method="full", max_steps=1)
    result = train_sft(canonical_train_file(tmp_path, 8), tiny_model_dir, tmp_path / "out", recipe, lambda m, x: None)
    folder = Path(result.model_path)
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) >= 2 and (folder / "model.safetensors.index.json").exists()
    assert not list(folder.glob("*.bin"))
    serial = hashlib.sha256()
    for shard in shards:
        serial.update(shard.name.encode())
        serial.update(hashlib.sha256(shard.read_bytes()).digest())
    assert result.model_sha256 == serial.hexdigest()
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert set(reloaded.state_dict()) == set(base.state_dict())


def test_padding_free_batches_see_the_same_examples_and_loss_as_padded_ones(tiny_model_dir, tmp_path):
    # one flattened row per batch must attend within each example only: then its loss equals the padded batch's
    train = canonical_train_file(tmp_path, 16)
    losses = {}
    for padding_free in (False, True):
        recipe = training(tiny_model_dir, max_steps=3, batch_size=4, max_length=512, packing=False, padding_free=padding_free,
                          logging_steps=1, lora={"dropout": 0.0}, merge_adapter=False)
        result = train_sft(train, tiny_model_dir, tmp_path / f"out-{padding_free}", recipe, lambda m, x: None)
        losses[padding_free] = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_compiled_blocks_train_to_the_same_losses_as_eager_ones(tiny_model_dir, tmp_path):
    # regional compilation must change the speed, not the maths: same padding-free batches, same losses
    train = canonical_train_file(tmp_path, 16)
    losses, messages = {}, []
    for compiled in (False, True):
        recipe = training(tiny_model_dir, max_steps=3, batch_size=4, max_length=512, packing=False, padding_free=True,
                          torch_compile=compiled, logging_steps=1, lora={"dropout": 0.0}, merge_adapter=False)
        result = train_sft(train, tiny_model_dir, tmp_path / f"out-{compiled}", recipe, lambda m, x: messages.append(m))
        losses[compiled] = [h["loss"] for h in result.log_history if "loss" in h]
    assert "compiled 2 repeated blocks (dynamic shapes)" in messages
    # the UI shows what the run waited for and what it decided (no CUDA graphs without a GPU)
    phases = training_metadata(result.to_dict(), registry=None)["phases"].data
    assert phases["compiled"] is True and phases["cuda_graphs"] is False and phases["train_s"] > 0
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_compiled_blocks_take_no_cpu_scalars(tiny_model_dir):
    # LoRA's and attention's float scalings must be constants of the graph: as inputs they are 0-d float64 CPU
    # tensors, converted by a C++ kernel whose build probes the CPU's vector ISA (48 s per process on the H200 host)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.training.sft import compile_repeated_blocks

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    graph_inputs = []

    def recording_backend(graph, inputs):
        graph_inputs.append(inputs)
        return graph

    # torch's default, restored afterwards (torch's own patch: pytest's monkeypatch deletes config entries on undo)
    with torch._dynamo.config.patch(specialize_float=False):
        torch._dynamo.reset()
        assert compile_repeated_blocks(model, backend=recording_backend) == 2
        ids = torch.randint(0, 100, (1, 24))
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()  # no cache, as in training
        torch._dynamo.reset()
    assert len(graph_inputs) == 1  # one graph for every block: the first one's input requires grad as the others'
    cpu_scalars = [i for inputs in graph_inputs for i in inputs
                   if isinstance(i, torch.Tensor) and i.dim() == 0 and i.dtype == torch.float64]
    assert not cpu_scalars


def _activations_saved_by_a_block(model, ids) -> tuple[int, list]:
    """Bytes the second block saves for the backward pass (weights left out), and the LoRA gradients."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    block = model.base_model.model.model.layers[1]
    inside, saved = [False], {}
    block.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
    block.register_forward_hook(lambda *_: inside.__setitem__(0, False))

    def pack(t):
        storage = t.untyped_storage()
        if inside[0] and storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return sum(saved.values()), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_a_memory_budget_keeps_fewer_activations_for_the_same_gradients(tiny_model_dir):
    # below 1 the partitioner recomputes part of each block's activations in the backward pass: less memory
    # kept between forward and backward, the same gradients
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.training.sft import compile_repeated_blocks

    ids = torch.randint(0, 100, (1, 64), generator=torch.Generator().manual_seed(0))
    kept, grads = {}, {}
    for budget in (1.0, 0.3):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                          init_lora_weights=False))
        with torch._functorch.config.patch(activation_memory_budget=1.0):  # restored: the call sets it globally
            torch._dynamo.reset()
            # the partitioner Inductor uses, without Inductor's code generation (seconds instead of a minute)
            compile_repeated_blocks(model, backend="aot_eager_decomp_partition", activation_memory_budget=budget)
            kept[budget], grads[budget] = _activations_saved_by_a_block(model, ids)
            torch._dynamo.reset()
    assert 0 < kept[0.3] < 0.6 * kept[1.0]
    for with_budget, without in zip(grads[0.3], grads[1.0]):
        torch.testing.assert_close(with_budget, without)


def test_compiled_blocks_evaluate_with_a_graph_of_their_own(tiny_model_dir):
    # the blocks compile without guards on their modules' attributes; an eval call (no grad, dropout off) must
    # still get its own graph, not replay the training one with dropout on
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.training.sft import compile_repeated_blocks

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),  # B random: the adapter counts
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules="all-linear",
                                      init_lora_weights=False))
    ids = torch.randint(0, 100, (1, 24))
    with torch.no_grad():
        eager_eval = model.eval()(input_ids=ids).logits
    torch._dynamo.reset()
    try:
        compile_repeated_blocks(model, backend="aot_eager")
        compiled_train = model.train()(input_ids=ids, labels=ids)  # the training graph, dropout on
        compiled_train.loss.backward()
        with torch.no_grad():
            compiled_eval = model.eval()(input_ids=ids).logits
    finally:
        torch._dynamo.reset()
    assert not torch.allclose(compiled_train.logits, eager_eval, atol=1e-3)  # dropout at 0.5 changes the output
    assert torch.allclose(compiled_eval, eager_eval, atol=1e-5)


def test_real_tokens_are_counted_exactly_when_the_pad_token_ends_each_turn(tiny_model_dir):
    # SmolLM2 pads with <|im_end|>, its end-of-turn token: counting non-pad ids would miss one per turn
    from transformers import AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from pipeline.training.trainer_mixins import real_token_count

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    examples = [{"input_ids": tokenizer("<|im_start|>user\nhi<|im_end|>\n" * n)["input_ids"]} for n in (1, 3, 2)]
    assert all(end_of_turn in e["input_ids"] for e in examples)
    real = sum(len(e["input_ids"]) for e in examples)
    for padding_free in (True, False):
        collate = DataCollatorForLanguageModeling(pad_token_id=end_of_turn, padding_free=padding_free, pad_to_multiple_of=64)
        batch = collate(examples)
        assert batch["input_ids"].numel() > real  # there is padding to leave out
        assert int(real_token_count(batch)) == real


def test_deferred_step_metrics_log_what_trl_logs(tiny_model_dir, tmp_path, monkeypatch):
    # our training loss keeps TRL's per-step entropy and accuracy on the device until the logging step;
    # the logs must match TRL's own compute_loss, which reads them every step
    from pipeline.training import trainer_mixins

    train = canonical_train_file(tmp_path, 24)
    recipe = training(tiny_model_dir, max_steps=6, logging_steps=3, packing=False, padding_free=True, max_length=512,
                      gradient_accumulation_steps=2, lora={"dropout": 0.0}, merge_adapter=False)
    ours = train_sft(train, tiny_model_dir, tmp_path / "ours", recipe, lambda m, x: None)
    monkeypatch.setattr(trainer_mixins.DeferredSftMetrics, "_plain_training_loss", lambda self, model, outputs: False)
    trl_path = train_sft(train, tiny_model_dir, tmp_path / "trl", recipe, lambda m, x: None)
    keys = ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens")
    logged = [h[k] for h in ours.log_history if "loss" in h for k in keys]
    expected = [h[k] for h in trl_path.log_history if "loss" in h for k in keys]
    assert len(logged) == 2 * len(keys) and logged == pytest.approx(expected, rel=1e-5)
    assert ours.tokens_seen == trl_path.tokens_seen == logged[-1]


def test_padding_free_refuses_examples_longer_than_max_length(tiny_model_dir, tmp_path):
    recipe = training(tiny_model_dir, max_steps=1, packing=False, padding_free=True, max_length=24)
    with pytest.raises(ValueError, match="longer than training.max_length=24"):
        train_sft(canonical_train_file(tmp_path, 8), tiny_model_dir, tmp_path / "out", recipe, lambda m, x: None)


def test_eval_slice_reports_eval_loss_and_early_stopping_stops(tiny_model_dir, tmp_path):
    # a learning rate this high makes eval loss climb, so patience 1 stops long before max_steps
    recipe = training(tiny_model_dir, max_steps=40, eval_examples=8, eval_steps=2, early_stopping_patience=1,
                      learning_rate=0.5, merge_adapter=False)
    result = train_sft(canonical_train_file(tmp_path, 40), tiny_model_dir, tmp_path / "out", recipe, lambda m, x: None)
    evals = [h for h in result.log_history if "eval_loss" in h]
    assert len(evals) >= 2 and result.global_step < 40
    assert loss_curve_png(result.log_history).startswith(b"\x89PNG")


def test_resume_marker_is_written_after_each_save(tiny_model_dir, tmp_path):
    recipe = training(tiny_model_dir, max_steps=4, save_steps=2, merge_adapter=False)
    train_sft(canonical_train_file(tmp_path, 16), tiny_model_dir, tmp_path / "out", recipe, lambda m, x: None)
    checkpoints = sorted((tmp_path / "out/checkpoints").glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-2", "checkpoint-4"]
    assert all((p / COMPLETE_MARKER).exists() for p in checkpoints)


def test_no_checkpoint_is_written_after_the_last_step_unless_it_is_a_save_step(tiny_model_dir, tmp_path):
    """The Trainer checkpoints after the last step by default; the final weights follow at once, so that write
    (13 GB and 18 s for a 1B full fine-tune) is skipped. The periodic ones stay."""
    recipe = training(tiny_model_dir, max_steps=5, save_steps=2, merge_adapter=False)
    result = train_sft(canonical_train_file(tmp_path, 24), tiny_model_dir, tmp_path / "out", recipe, lambda m, x: None)
    assert result.global_step == 5 and Path(result.adapter_path, "adapter_model.safetensors").exists()
    checkpoints = sorted(p.name for p in (tmp_path / "out/checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]


def test_evaluation_scores_a_fully_fine_tuned_model(tiny_model_dir, tmp_path):
    from pipeline.evaluation.report import evaluate
    from pipeline.recipe import EvaluationRecipe

    recipe = training(tiny_model_dir, method="full", max_steps=2)
    result = train_sft(canonical_train_file(tmp_path, 16), tiny_model_dir, tmp_path / "out", recipe, lambda m, x: None)
    heldout = [{"id": str(i), "messages": json.loads(line)["messages"]}
               for i, line in enumerate(canonical_train_file(tmp_path, 20).read_text().splitlines()[16:])]
    report = evaluate(tiny_model_dir, Path(result.model_path), heldout, EvaluationRecipe(max_examples=4, max_new_tokens=3))
    assert report["models"]["base"]["loss"] != report["models"]["candidate"]["loss"]


def test_dpo_after_sft_lowers_the_dpo_loss(tiny_model_dir, tmp_path):
    from pipeline.recipe import DpoRecipe
    from pipeline.training.dpo import load_preferences, train_dpo

    recipe = training(tiny_model_dir, max_steps=2, merge_adapter=False)
    sft = train_sft(canonical_train_file(tmp_path, 16), tiny_model_dir, tmp_path / "sft", recipe, lambda m, x: None)
    pairs = load_preferences(PROJECT_ROOT / "data/sample/preferences.jsonl")[:16]
    dpo = DpoRecipe(enabled=True, beta=0.1, learning_rate=0.01, max_steps=12, batch_size=8, max_length=128, logging_steps=1)
    result = train_dpo(pairs, tiny_model_dir, sft.to_dict(), tmp_path / "dpo", recipe, dpo, lambda m, x: None)
    losses = [h["loss"] for h in result["log_history"] if "loss" in h]
    # at the first step the policy is the reference (the SFT adapter), so the loss is ln 2
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.05
    assert result["global_step"] == 12 and result["adapter_sha256"] != sft.adapter_sha256


def test_preferences_of_held_out_families_are_dropped():
    from pipeline.training.dpo import load_preferences

    path = PROJECT_ROOT / "data/sample/preferences.jsonl"
    families = {json.loads(line)["source"] for line in path.read_text().splitlines()}
    held_out = set(sorted(families)[:5])
    kept = load_preferences(path, exclude_groups=held_out)
    everything = load_preferences(path)
    dropped = sum(json.loads(line)["source"] in held_out for line in path.read_text().splitlines())
    assert dropped > 0 and len(kept) == len(everything) - dropped


def test_several_gpus_run_under_torchrun_with_the_shipped_configs():
    from pipeline.training.distributed import CONFIGS, launch_command, trainer_args

    tether = ["py", "-m", "pipeline.training.tethered"]
    assert launch_command("py", "s.json", 1) == [*tether, "-m", "pipeline.training", "--spec", "s.json"]
    command = launch_command("py", "s.json", 4)
    assert command[:5] == [*tether, "-m", "torch.distributed.run"] and "--nproc-per-node=4" in command
    assert command[-4:] == ["-m", "pipeline.training", "--spec", "s.json"]
    assert trainer_args("none") == {}
    assert json.loads(CONFIGS["zero2"].read_text())["zero_optimization"]["stage"] == 2
    assert json.loads(CONFIGS["zero3"].read_text())["zero_optimization"]["stage"] == 3
    assert trainer_args("zero3") == {"deepspeed": str(CONFIGS["zero3"])}
    from trl import SFTConfig  # FSDP's config is accepted by the Trainer as shipped

    config = SFTConfig(output_dir="unused", use_cpu=True, report_to=[], **trainer_args("fsdp"))
    assert config.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]


@pytest.fixture
def s3_server(monkeypatch):
    """A local S3 (moto's server) that separate processes reach through AWS_ENDPOINT_URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="models")
    yield env
    server.stop()


def test_two_processes_resume_from_s3_and_run_dpo_after_sft(tiny_model_dir, tmp_path, s3_server):
    # the launcher's multi-process path on CPU (gloo, data parallel; FSDP and ZeRO need GPUs, see bench/): rank 0
    # alone reports, a fresh disk resumes from the mirrored checkpoint with every rank waiting for the download,
    # and DPO's adapter is gathered on every rank and written once
    import os

    from pipeline.training.checkpoint_mirror import remote_checkpoints
    from pipeline.training.distributed import launch_command

    def run_two_ranks(name: str, **spec) -> tuple[str, dict]:
        (tmp_path / f"{name}.json").write_text(json.dumps({"output_dir": str(tmp_path / name), **spec}))
        done = subprocess.run(launch_command(sys.executable, str(tmp_path / f"{name}.json"), 2), cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr, json.loads((tmp_path / name / "result.json").read_text())

    uri = "s3://models/runs/r3/sft/checkpoints"
    sft = {"train_path": str(canonical_train_file(tmp_path, 32)), "base_path": str(tiny_model_dir), "checkpoint_uri": uri}
    log, first = run_two_ranks("pod-a", **sft, training=training(
        tiny_model_dir, max_steps=4, save_steps=2, batch_size=2, logging_steps=1).model_dump())
    assert sum(" step 1/4 " in line for line in log.splitlines()) == 1  # rank 0 alone reports
    assert first["global_step"] == 4 and Path(first["adapter_path"], "adapter_model.safetensors").exists()
    assert Path(first["model_path"], "model.safetensors").exists()
    assert set(remote_checkpoints(uri)) == {"checkpoint-2", "checkpoint-4"}

    recipe = training(tiny_model_dir, max_steps=6, save_steps=2, batch_size=2, logging_steps=1, merge_adapter=False)
    log, again = run_two_ranks("pod-b", **sft, training=recipe.model_dump())
    assert again["resumed_from"] == "checkpoint-4" and again["global_step"] == 6
    assert sum("resuming from checkpoint-4" in line for line in log.splitlines()) == 1

    dpo = {"enabled": True, "max_steps": 2, "batch_size": 2, "max_length": 128, "logging_steps": 1}
    _, tuned = run_two_ranks("dpo", stage="dpo", train_path=str(PROJECT_ROOT / "data/sample/preferences.jsonl"),
                             base_path=str(tiny_model_dir), training=recipe.model_dump(), dpo=dpo, sft_result=again)
    from safetensors.torch import load_file

    adapter = load_file(Path(tuned["adapter_path"], "adapter_model.safetensors"))
    before = load_file(Path(again["adapter_path"], "adapter_model.safetensors"))
    assert tuned["global_step"] == 2 and set(adapter) == set(before)  # the trained adapter, not TRL's frozen `ref`
    assert any(not torch.equal(adapter[k], before[k]) for k in before)


def test_sharded_recipes_start_under_torchrun_and_refuse_to_run_unsharded(tiny_model_dir, tmp_path, monkeypatch):
    # accelerate would silently train unsharded without GPUs or without a distributed launcher
    from pipeline.training.distributed import launch_command
    from pipeline.training.methods import check_method_runs_here

    assert launch_command("py", "s.json", 1, sharded=True)[3:6] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=1" in launch_command("py", "s.json", 0, sharded=True)
    for distributed in ("zero2", "zero3", "fsdp"):
        recipe = training(tiny_model_dir, distributed=distributed)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(MethodUnavailable, match="has none"):
            check_method_runs_here(recipe)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        with pytest.raises(MethodUnavailable, match="distributed launcher"):
            check_method_runs_here(recipe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MethodUnavailable, match="8-bit states"):
        check_method_runs_here(training(tiny_model_dir, optimizer="adamw_8bit"))


def test_dpo_after_full_fine_tuning_trains_the_full_model(tiny_model_dir, tmp_path):
    from pipeline.recipe import DpoRecipe
    from pipeline.training.dpo import load_preferences, train_dpo

    recipe = training(tiny_model_dir, method="full", max_steps=1)
    sft = train_sft(canonical_train_file(tmp_path, 8), tiny_model_dir, tmp_path / "sft", recipe, lambda m, x: None)
    pairs = load_preferences(PROJECT_ROOT / "data/sample/preferences.jsonl")[:8]
    dpo = DpoRecipe(enabled=True, max_steps=2, batch_size=4, max_length=128, learning_rate=0.01, logging_steps=1)
    result = train_dpo(pairs, tiny_model_dir, sft.to_dict(), tmp_path / "dpo", recipe, dpo, lambda m, x: None)
    assert result["adapter_path"] is None and result["global_step"] == 2
    assert result["model_sha256"] != sft.model_sha256


def test_checkpoints_mirrored_to_s3_restore_on_a_fresh_machine_without_half_uploads(tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    from pipeline.training.checkpoint_mirror import prune_remote, remote_checkpoints, restore_latest, upload_checkpoint

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    uri = "s3://models/runs/r1/sft/checkpoints"
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="models")
        for step in (2, 4):
            upload_checkpoint(fake_checkpoint(tmp_path / "pod-a", step), uri)
        half = fake_checkpoint(tmp_path / "pod-a", 6)  # the pod died mid-upload: everything but the marker
        boto3.client("s3").upload_file(str(half / "trainer_state.json"), "models", "runs/r1/sft/checkpoints/checkpoint-6/trainer_state.json")
        restored = restore_latest(uri, tmp_path / "pod-b")
        assert restored == tmp_path / "pod-b/checkpoint-4"
        assert latest_complete(tmp_path / "pod-b") == restored
        prune_remote(uri, keep={"checkpoint-4"})
        assert set(remote_checkpoints(uri)) == {"checkpoint-4"}


def test_training_with_a_checkpoint_uri_resumes_on_a_fresh_disk(tiny_model_dir, tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    from pipeline.training.checkpoint_mirror import remote_checkpoints

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    uri = "s3://models/runs/r2/sft/checkpoints"
    train = canonical_train_file(tmp_path, 16)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="models")
        first = training(tiny_model_dir, max_steps=4, save_steps=2, merge_adapter=False)
        train_sft(train, tiny_model_dir, tmp_path / "pod-a", first, lambda m, x: None, checkpoint_uri=uri)
        assert set(remote_checkpoints(uri)) == {"checkpoint-2", "checkpoint-4"}
        reports = []
        again = train_sft(train, tiny_model_dir, tmp_path / "pod-b", training(tiny_model_dir, max_steps=6, save_steps=2,
                          merge_adapter=False), lambda m, x: reports.append(m), checkpoint_uri=uri)
    assert again.resumed_from == "checkpoint-4" and again.global_step == 6
    assert any(m.startswith("resuming from checkpoint-4") for m in reports)


def test_lean_step_host_trains_and_evaluates_exactly_as_the_trainer_does(tiny_model_dir, tmp_path, monkeypatch):
    # zeroing and clipping only the trainable parameters, and train() only on a change of mode, must log the
    # same losses, gradient norms and eval losses as the Trainer's own per-step calls
    from pipeline.training import trainer_mixins

    train = canonical_train_file(tmp_path, 40)
    recipe = training(tiny_model_dir, max_steps=6, logging_steps=1, eval_examples=8, eval_steps=2, lora={"dropout": 0.1},
                      learning_rate=0.05, merge_adapter=False)
    lean = train_sft(train, tiny_model_dir, tmp_path / "lean", recipe, lambda m, x: None)
    monkeypatch.delattr(trainer_mixins.LeanStepHost, "training_step")
    monkeypatch.delattr(trainer_mixins.LeanStepHost, "_clip_grad_norm")
    plain = train_sft(train, tiny_model_dir, tmp_path / "plain", recipe, lambda m, x: None)
    keys = ("loss", "grad_norm", "eval_loss")
    logged, expected = ([h.get(k) for h in r.log_history for k in keys if k in h] for r in (lean, plain))
    assert len(logged) == 6 * 2 + 3 and logged == pytest.approx(expected, rel=1e-6)
    assert lean.adapter_sha256 == plain.adapter_sha256


class _ZeroStage3:
    """What a ZeRO-3 Trainer registers in transformers for the life of its arguments."""

    def is_zero3(self) -> bool:
        return True


def test_adapter_merges_into_whole_weights_while_a_zero3_run_is_active(tiny_model_dir, tmp_path, monkeypatch):
    # under ZeRO-3 every from_pretrained partitions its weights; the merge must load the base whole anyway
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations import deepspeed as hf_deepspeed

    from pipeline.training.sft import merge_adapter

    torch.manual_seed(0)
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "adapter")
    zero3 = _ZeroStage3()
    monkeypatch.setattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed.set_hf_deepspeed_config(zero3)
    assert hf_deepspeed.is_deepspeed_zero3_enabled()
    merged = merge_adapter(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")
    assert hf_deepspeed.is_deepspeed_zero3_enabled()  # the training run's setting is back
    weights, base = load_file(merged / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert weights.keys() == base.keys()
    assert all(weights[k].shape == base[k].shape for k in base)
    assert not torch.equal(weights["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"].float())


_CHILD = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
_RANK = "from pipeline.training.distributed import die_with_parent; die_with_parent(); " + _CHILD
_LAUNCHER = """
import subprocess, sys, time
subprocess.Popen(sys.argv[1:], start_new_session=True, stdout=sys.stdout)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize(("child", "tied"), [
    (["-c", _RANK], True),  # a rank, as pipeline.training arms itself under torchrun
    (["-m", "pipeline.training.tethered", "-c", _CHILD], True),  # what the TrainingLauncher starts
    (["-c", _CHILD], False),  # the control: an ordinary child outlives its parent
])
def test_training_processes_die_with_the_process_that_launched_them(child, tied):
    # the launcher starts the child in a session of its own, as torchrun does, and is then killed outright
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, sys.executable, *child], cwd=PROJECT_ROOT,
                                stdout=subprocess.PIPE, text=True)
    pid = int(launcher.stdout.readline())
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    survived = _alive(pid)
    if survived:
        os.kill(pid, signal.SIGKILL)
    assert survived is not tied


def test_zero3_training_prints_parameters_by_shape_only_and_restores_their_repr():
    from pipeline.training.distributed import terse_parameter_repr

    weight = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    full = repr(weight)
    with terse_parameter_repr("zero3"):
        assert repr({weight: "w"}) == "{Parameter(shape=(2, 3), dtype=torch.float32): 'w'}"
    assert repr(weight) == full and "5." in full
    with terse_parameter_repr("fsdp"):
        assert repr(weight) == full


def test_flop_count_counts_zero3_partitioned_weights_whole(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.training.trainer_mixins import parameter_count_without_embeddings

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules="all-linear"))
    whole = model.num_parameters(exclude_embeddings=True)
    assert parameter_count_without_embeddings(model) == whole
    for p in model.parameters():  # as ZeRO-3 leaves them on a rank: an empty slice, the full size in ds_numel
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    assert model.num_parameters(exclude_embeddings=True) < whole
    assert parameter_count_without_embeddings(model) == whole


def test_zero3_full_fine_tuning_fetches_each_decoder_block_whole(tiny_model_dir, monkeypatch):
    # deepspeed is a GPU extra; its flagging call is stood in for, so the test sees which modules get flagged
    import types

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.training.distributed import gather_blocks_whole

    flagged = []
    utils = types.ModuleType("deepspeed.utils")
    utils.set_z3_leaf_module = lambda module, flag: flagged.append((module, flag))
    monkeypatch.setitem(sys.modules, "deepspeed", types.ModuleType("deepspeed"))
    monkeypatch.setitem(sys.modules, "deepspeed.utils", utils)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    layers = model.model.layers
    assert gather_blocks_whole(model, "fsdp") == 0 and gather_blocks_whole(model, "none") == 0
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules="all-linear"))
    assert gather_blocks_whole(lora, "zero3") == 0 and not flagged  # its backward broke with whole blocks
    assert gather_blocks_whole(model, "zero3") == len(layers) > 0
    assert [m for m, _ in flagged] == list(layers) and all(flag for _, flag in flagged)


def test_dpo_adapter_is_gathered_through_the_deepspeed_engine(tmp_path):
    # under ZeRO-3 accelerate gathers 16-bit weights from the engine; asked with the model inside it, it fails
    # ("no attribute 'zero_gather_16bit_weights_on_model_save'", seen on 2 H200s after a LoRA DPO run)
    from types import SimpleNamespace

    from pipeline.training.dpo import save_trained_adapter

    model, engine, asked = object(), object(), []
    accelerator = SimpleNamespace(get_state_dict=lambda m: asked.append(m) or {}, wait_for_everyone=lambda: None)
    for deepspeed in (True, False):
        trainer = SimpleNamespace(is_deepspeed_enabled=deepspeed, deepspeed=engine if deepspeed else None, model=model,
                                  accelerator=accelerator, is_world_process_zero=lambda: False)
        save_trained_adapter(trainer, tmp_path)
    assert asked == [engine, model]


def test_a_training_process_ends_without_teardown_but_with_everything_it_printed_and_logged():
    script = ("import logging, sys\n"
              "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
              "print('weights saved', end='')\n"  # piped, so only in Python's buffer until flushed
              "logging.getLogger('pipeline.training').info('result written')\n"
              "from pipeline.training.process_exit import exit_without_teardown\n"
              "import atexit; atexit.register(lambda: print('teardown ran'))\n"
              "exit_without_teardown(3)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "weights saved"  # flushed, and the interpreter's exit handlers did not run
    assert "result written" in done.stderr


def test_a_single_gpu_run_collates_in_a_loader_worker_and_copies_without_blocking(monkeypatch):
    from pipeline.training import sft

    monkeypatch.setattr(sft, "_on_gpu", lambda: True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    flags = sft.loader_flags(TrainingRecipe())
    assert flags["dataloader_num_workers"] == 1 and flags["dataloader_persistent_workers"]
    assert flags["dataloader_pin_memory"] and flags["accelerator_config"] == {"non_blocking": True}
    assert sft.loader_flags(TrainingRecipe(distributed="zero2")) == {"dataloader_num_workers": 0}
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert sft.loader_flags(TrainingRecipe()) == {"dataloader_num_workers": 0}
    monkeypatch.setattr(sft, "_on_gpu", lambda: False)
    monkeypatch.delenv("WORLD_SIZE")
    assert sft.loader_flags(TrainingRecipe()) == {"dataloader_num_workers": 0}
