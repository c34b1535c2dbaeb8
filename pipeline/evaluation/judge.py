"""Pairwise judging of the candidate against another model, each pair judged in both orders to cancel position bias.

The judge is an LLM behind any OpenAI-compatible endpoint, or, when none is configured, the reference judge:
the answer with the higher ROUGE-L against the reference answer wins, equal scores tie.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.recipe import JudgeRecipe

JUDGE_SYSTEM = (
    "You are a strict reviewer. You compare two answers, A and B, to the same request, using the reference answer "
    "as the standard for what a good answer says. Prefer the answer that is correct, complete and concise; length "
    "alone is not quality. Reply with one first line `Verdict: A`, `Verdict: B` or `Verdict: tie`, then one or two "
    "sentences of rationale."
)
_VERDICT = re.compile(r"verdict\s*[:\-]?\s*\**\s*(a|b|tie)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    winner: str  # "a", "b", "tie", or "invalid" when the reply had no verdict (scored as a tie, counted apart)
    rationale: str


class PairwiseJudge(Protocol):
    name: str

    def judge(self, request: str, reference: str, answer_a: str, answer_b: str) -> Verdict: ...


def parse_verdict(reply: str) -> Verdict:
    match = _VERDICT.search(reply)
    if match is None:
        return Verdict("invalid", reply.strip()[:500])
    return Verdict(match.group(1).lower(), reply[match.end() :].strip()[:500])


def judge_prompt(request: str, reference: str, answer_a: str, answer_b: str) -> str:
    return (f"Request:\n{request}\n\nReference answer:\n{reference}\n\nAnswer A:\n{answer_a}\n\n"
            f"Answer B:\n{answer_b}\n\nWhich answer is better?")


class EndpointJudge:
    """An LLM judge behind an OpenAI-compatible chat-completions endpoint; the key comes from the environment."""

    def __init__(self, recipe: JudgeRecipe):
        from openai import OpenAI

        self.name = f"llm:{recipe.model}"
        self.recipe = recipe
        # Local servers need no key; the client insists on one, so a placeholder stands in when the variable is unset.
        api_key = os.environ.get(recipe.api_key_env) or "unset"
        self.client = OpenAI(base_url=recipe.base_url, api_key=api_key, timeout=recipe.timeout_s, max_retries=3)

    def judge(self, request: str, reference: str, answer_a: str, answer_b: str) -> Verdict:
        reply = self.client.chat.completions.create(
            model=self.recipe.model,
            messages=[{"role": "system", "content": JUDGE_SYSTEM},
                      {"role": "user", "content": judge_prompt(request, reference, answer_a, answer_b)}],
            temperature=0.0,
            max_tokens=self.recipe.max_tokens,
        )
        return parse_verdict(reply.choices[0].message.content or "")


class ReferenceJudge:
    """The default without an endpoint: higher ROUGE-L against the reference wins; equal scores tie."""

    name = "reference:rouge_l"

    def judge(self, request: str, reference: str, answer_a: str, answer_b: str) -> Verdict:
        from pipeline.evaluation.scoring import rouge_l

        a, b = rouge_l([answer_a, answer_b], [reference, reference])
        winner = "a" if a > b else "b" if b > a else "tie"
        return Verdict(winner, f"ROUGE-L against the reference: A {a:.3f}, B {b:.3f}")


def make_judge(recipe: JudgeRecipe) -> PairwiseJudge:
    return EndpointJudge(recipe) if recipe.base_url else ReferenceJudge()


_POINTS = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def _outcome(verdict: Verdict, candidate_is: str) -> str:
    if verdict.winner in ("tie", "invalid"):
        return "tie"
    return "win" if verdict.winner == candidate_is else "loss"


def compare(judge: PairwiseJudge, requests: list[str], references: list[str], candidate: list[str],
            other: list[str], ids: list[str]) -> dict[str, Any]:
    """Judge candidate vs other on every example twice (candidate as A, then as B). An example scores the mean
    of its two outcomes (win 1, tie 0.5, loss 0); agreement is the share of examples whose two orders agree."""
    rows, first_only = [], []
    for i, (req, ref, cand, oth) in enumerate(zip(requests, references, candidate, other)):
        as_a = judge.judge(req, ref, cand, oth)
        as_b = judge.judge(req, ref, oth, cand)
        first, second = _outcome(as_a, "a"), _outcome(as_b, "b")
        first_only.append(_POINTS[first])
        rows.append({"id": ids[i], "candidate_first": first, "candidate_second": second,
                     "score": (_POINTS[first] + _POINTS[second]) / 2, "agree": first == second,
                     "rationale_candidate_first": as_a.rationale, "rationale_candidate_second": as_b.rationale,
                     "invalid": int(as_a.winner == "invalid") + int(as_b.winner == "invalid")})
    n = max(len(rows), 1)
    scores = [r["score"] for r in rows]
    return {
        "judge": judge.name,
        "examples": len(rows),
        "win_rate": round(sum(scores) / n, 4),
        # What a single-order judge would have said with the candidate always shown first: the bias both orders cancel.
        "win_rate_candidate_first_only": round(sum(first_only) / n, 4),
        "order_agreement": round(sum(r["agree"] for r in rows) / n, 4),
        "wins": sum(s == 1.0 for s in scores),
        "ties": sum(s == 0.5 for s in scores),
        "losses": sum(s == 0.0 for s in scores),
        "invalid_verdicts": sum(r["invalid"] for r in rows),
        "per_example_scores": scores,
        "rows": rows,
    }
