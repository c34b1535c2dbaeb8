"""Fused LoRA layers: the same forward and gradients as PEFT's, PEFT's own path wherever the fused op would differ,
and a trained adapter that PEFT loads as its own."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.training.fused_lora import fusable, fuse_lora_layers

CONFIG = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)


def adapted(dtype=torch.float32, dropout=0.0, **lora):
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(CONFIG).to(dtype), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear", **lora))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; a trained adapter's B does not
            torch.nn.init.normal_(p, std=0.02)
    return model


def loss_and_grads(model, ids, autocast=False):
    model.train()
    torch.manual_seed(1)  # the same dropout masks for both models
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_layers_match_peft_exactly_in_fp32(dropout):
    peft_model = adapted(dropout=dropout)
    fused = copy.deepcopy(peft_model)
    assert fuse_lora_layers(fused) == 14  # 7 linear layers in each of 2 blocks
    ids = torch.randint(0, 128, (2, 24))
    peft_loss, peft_grads = loss_and_grads(peft_model, ids)
    fused_loss, fused_grads = loss_and_grads(fused, ids)
    assert fused_loss == pytest.approx(peft_loss, rel=1e-6)
    assert peft_grads.keys() == fused_grads.keys() and all("lora_" in n for n in fused_grads)
    for name, grad in peft_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_under_bf16_autocast_fused_gradients_are_as_close_to_fp32_as_peft_s():
    """The GPU training shape: a bf16 base, fp32 adapter weights, bf16 autocast; the fp32 model is the reference."""
    peft_model = adapted(dtype=torch.bfloat16)
    fused = copy.deepcopy(peft_model)
    fuse_lora_layers(fused)
    reference = copy.deepcopy(peft_model).float()
    ids = torch.randint(0, 128, (2, 24))
    _, exact = loss_and_grads(reference, ids)
    for model in (peft_model, fused):
        loss, grads = loss_and_grads(model, ids, autocast=True)
        assert {g.dtype for g in grads.values()} == {torch.float32}
        errors = [((grads[n] - exact[n]).norm() / exact[n].norm()).item() for n in exact]
        model.mean_error = sum(errors) / len(errors)
    assert fused.mean_error <= peft_model.mean_error * 1.1


def test_disabled_and_merged_adapters_take_peft_s_path():
    model = adapted()
    fuse_lora_layers(model)
    ids = torch.randint(0, 128, (1, 16))
    base = LlamaForCausalLM(CONFIG)
    base.load_state_dict({k.replace("base_model.model.", "").replace("base_layer.", ""): v
                          for k, v in model.state_dict().items() if "lora_" not in k})
    model.eval()
    with torch.no_grad(), model.disable_adapter():  # how DPO computes its reference log-probabilities
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits)
    with torch.no_grad():
        adapted_logits = model(input_ids=ids).logits
        model.merge_adapter()
        torch.testing.assert_close(model(input_ids=ids).logits, adapted_logits, rtol=1e-4, atol=1e-5)


def test_only_layers_the_fused_op_computes_exactly_are_fused():
    dora = adapted(use_dora=True)
    assert fuse_lora_layers(dora) == 0
    two = adapted()
    two.add_adapter("second", LoraConfig(r=4, target_modules="all-linear"))
    two.base_model.set_adapter(["default", "second"])
    assert not any(fusable(m) for m in two.modules())
    model = adapted()
    assert fuse_lora_layers(model) == 14 and fuse_lora_layers(model) == 0  # fusing twice changes nothing


def test_an_adapter_trained_fused_saves_and_loads_as_peft_s(tiny_model_dir, tmp_path):
    from pipeline.training.sft import train_sft
    from tests.test_training import canonical_train_file, training

    messages = []
    recipe = training(tiny_model_dir, max_steps=2, batch_size=4, merge_adapter=False, fused_lora=True)
    result = train_sft(canonical_train_file(tmp_path, 8), tiny_model_dir, tmp_path / "out", recipe,
                       lambda m, x: messages.append(m))
    assert any(m.startswith("fused ") and "LoRA layers" in m for m in messages)
    trained = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_model_dir), result.adapter_path)
    assert any(p.abs().sum() > 0 for n, p in trained.named_parameters() if "lora_B" in n)  # B moved off zero
