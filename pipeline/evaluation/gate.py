"""The promotion gate: one decision per evaluated candidate, recorded on its registry version and checked by
every alias move, whatever run or command asks for it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

GATE_PASSED_TAG = "gate.passed"
GATE_CHECKS_TAG = "gate.checks"
GATE_REPORT_TAG = "gate.eval_report_version"

PASSED, FAILED, NOT_EVALUATED = "passed", "failed", "not evaluated"


class PromotionRefused(RuntimeError):
    """A candidate whose evaluation failed, or was never evaluated, may not be registered or given an alias."""


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    status: str  # PASSED, FAILED or NOT_EVALUATED
    reason: str = ""


@dataclass(frozen=True)
class GateDecision:
    """The blocking checks' outcomes for one evaluated candidate (one eval_report data version)."""

    eval_report_version: str
    checks: list[CheckOutcome] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.status == PASSED for c in self.checks)

    @property
    def failures(self) -> list[str]:
        if not self.checks:
            return ["no blocking check was evaluated"]
        return [f"{c.name} {c.status}" + (f": {c.reason}" if c.reason else "") for c in self.checks if c.status != PASSED]

    def tags(self) -> dict[str, str]:
        """What the registry version carries, so later promotions can read the decision without Dagster."""
        return {
            GATE_PASSED_TAG: "true" if self.passed else "false",
            GATE_CHECKS_TAG: json.dumps({c.name: c.status for c in self.checks}, sort_keys=True),
            GATE_REPORT_TAG: self.eval_report_version,
        }

    def refuse_unless_passed(self, what: str) -> None:
        if not self.passed:
            raise PromotionRefused(f"{what} refused: the candidate's evaluation (eval_report "
                                   f"{self.eval_report_version[:12]}) did not pass the gate: " + "; ".join(self.failures))


def refuse_unless_gated(model_name: str, version: str, tags: dict[str, str], action: str) -> None:
    """Raise unless the registry version records a passed gate; `action` names the move for the message."""
    if tags.get(GATE_PASSED_TAG) == "true":
        return
    checks = tags.get(GATE_CHECKS_TAG)
    failed = [f"{name} {status}" for name, status in json.loads(checks).items() if status != PASSED] if checks else []
    why = "; ".join(failed) if failed else "it records no passed evaluation gate"
    raise PromotionRefused(f"{action} of {model_name} v{version} refused: {why}")
