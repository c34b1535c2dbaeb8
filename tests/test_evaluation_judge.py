"""The pairwise judge: a tiny model behind a local OpenAI-compatible server, taught to always pick the first
answer, is cancelled out by judging each pair in both orders."""

import json
import random
from pathlib import Path

import pytest

from pipeline.evaluation.judge import JUDGE_SYSTEM, EndpointJudge, ReferenceJudge, compare, judge_prompt, parse_verdict
from pipeline.paths import PROJECT_ROOT
from pipeline.recipe import JudgeRecipe
from tests.conftest import trained_copy
from tests.openai_server import serving

BIASED_REPLY = "Verdict: A\nThe first answer is better."


def sample_pairs(limit: int) -> list[tuple[str, str]]:
    """(short request, reference summary) from the real sample."""
    pairs = []
    for line in (PROJECT_ROOT / "data/sample/chatml.jsonl").read_text().splitlines():
        try:
            messages = json.loads(line)["messages"]
            pairs.append((messages[0]["content"][:160], messages[-1]["content"]))
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return pairs[:limit]


@pytest.fixture(scope="module")
def first_position_judge(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model fine-tuned to answer every judge prompt with `Verdict: A`: a planted order bias."""
    import torch

    pairs = sample_pairs(24)
    rng = random.Random(0)

    def batch(tokenizer) -> dict:
        rows = []
        for request, reference in rng.sample(pairs, 4):
            other = rng.choice(pairs)[1]
            a, b = (reference, other) if rng.random() < 0.5 else (other, reference)
            prompt = [{"role": "system", "content": JUDGE_SYSTEM},
                      {"role": "user", "content": judge_prompt(request, reference, a, b)}]
            head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": BIASED_REPLY}], tokenize=True,
                                                 return_dict=True)["input_ids"]
            rows.append((full, [-100] * len(head) + full[len(head):]))
        width = max(len(ids) for ids, _ in rows)
        return {"input_ids": torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in rows]),
                "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows])}

    return trained_copy(tiny_model_dir, tmp_path_factory.mktemp("biased-judge"), batch, steps=40)


def test_position_swap_cancels_a_planted_order_bias(first_position_judge):
    pairs = sample_pairs(24)[:8]
    requests = [r for r, _ in pairs]
    references = [ref for _, ref in pairs]
    worse = references[1:] + references[:1]  # every other example's summary: the wrong answer
    with serving(first_position_judge) as url:
        judge = EndpointJudge(JudgeRecipe(base_url=url, model="tiny-biased", max_tokens=12))
        good_first = compare(judge, requests, references, references, worse, [str(i) for i in range(8)])
        bad_first = compare(judge, requests, references, worse, references, [str(i) for i in range(8)])
    assert good_first["invalid_verdicts"] == 0  # the served model answers in the verdict format
    # Shown first, either candidate "wins" every time: the bias a single-order judge would report as quality.
    assert good_first["win_rate_candidate_first_only"] == 1.0 and bad_first["win_rate_candidate_first_only"] == 1.0
    # Both orders: every win in one order is a loss in the other, so the bias cancels to a tie.
    assert good_first["win_rate"] == 0.5 and bad_first["win_rate"] == 0.5
    assert good_first["order_agreement"] == 0.0
    assert all(r["rationale_candidate_first"] for r in good_first["rows"])


def test_both_orders_keep_a_real_preference_and_agree():
    pairs = sample_pairs(10)
    references = [ref for _, ref in pairs]
    worse = references[1:] + references[:1]
    result = compare(ReferenceJudge(), [r for r, _ in pairs], references, references, worse, [str(i) for i in range(10)])
    assert result["win_rate"] == 1.0 and result["order_agreement"] == 1.0
    assert "ROUGE-L" in result["rows"][0]["rationale_candidate_first"]


@pytest.mark.parametrize("reply, winner", [("Verdict: A\nshorter", "a"), ("verdict: **B** because", "b"),
                                           ("Verdict: tie. Both fine", "tie"), ("I like the first one", "invalid")])
def test_verdicts_are_parsed_and_unparseable_ones_marked(reply, winner):
    assert parse_verdict(reply).winner == winner
