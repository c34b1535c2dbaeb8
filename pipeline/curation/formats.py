"""Detect the shape of a raw example (alpaca, sharegpt, chatml, preference pair) and normalise it to chat messages.

A preference pair becomes the chosen conversation; its rejected conversation is kept beside it (`rejected_of`).
"""

from __future__ import annotations

from typing import Any

ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "chatgpt": "assistant", "system": "system"}
SHAPE_KEYS = {"preference": "chosen", "chatml": "messages", "sharegpt": "conversations", "alpaca": "instruction"}


class MalformedRecord(ValueError):
    """A record that can't be normalised; `reason` is a short stable code counted in the quarantine."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def detect_format(raw: dict[str, Any]) -> str:
    for shape, key in SHAPE_KEYS.items():
        if key in raw:
            return shape
    raise MalformedRecord("unknown_format", f"none of the keys {sorted(SHAPE_KEYS.values())} present")


def _text(value: Any, field: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise MalformedRecord("wrong_type", f"{field} is {type(value).__name__}, not a string")
    return value


def _from_alpaca(raw: dict[str, Any]) -> list[dict[str, str]]:
    instruction = _text(raw.get("instruction"), "instruction")
    extra = _text(raw.get("input"), "input", required=False)
    output = _text(raw.get("output"), "output")
    messages = []
    if raw.get("system"):
        messages.append({"role": "system", "content": _text(raw["system"], "system")})
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return messages


def _turns(raw: dict[str, Any], key: str) -> list[Any]:
    turns = raw.get(key)
    if not isinstance(turns, list):
        raise MalformedRecord("wrong_type", f"{key} is {type(turns).__name__}, not a list")
    if not all(isinstance(t, dict) for t in turns):
        raise MalformedRecord("wrong_type", f"every item of {key} must be an object")
    return turns


def _from_sharegpt(raw: dict[str, Any]) -> list[dict[str, str]]:
    messages = []
    for i, turn in enumerate(_turns(raw, "conversations")):
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise MalformedRecord("unknown_role", f"conversations[{i}].from is {speaker!r}")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": _text(turn.get("value"), f"conversations[{i}].value")})
    return messages


def _from_chatml(raw: dict[str, Any]) -> list[dict[str, str]]:
    messages = []
    for i, turn in enumerate(_turns(raw, "messages")):
        role = turn.get("role")
        if role not in ROLES:
            raise MalformedRecord("unknown_role", f"messages[{i}].role is {role!r}")
        messages.append({"role": role, "content": _text(turn.get("content"), f"messages[{i}].content")})
    return messages


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    """A string is one turn of `field`'s natural role; a list is chat messages."""
    if isinstance(value, str):
        return [{"role": "user" if field == "prompt" else "assistant", "content": value}]
    return _from_chatml({"messages": value}) if isinstance(value, list) else _turns({field: value}, field)


def _pair(raw: dict[str, Any], side: str) -> list[dict[str, str]]:
    prompt = _messages(raw["prompt"], "prompt") if raw.get("prompt") is not None else []
    answer = _messages(raw.get(side), side)
    # chosen/rejected given as whole conversations repeat the prompt; keep it once
    if not prompt and len(answer) > 1:
        return answer
    return prompt + answer


def _from_preference(raw: dict[str, Any]) -> list[dict[str, str]]:
    if "rejected" not in raw:
        raise MalformedRecord("missing_turn", "a preference pair needs both chosen and rejected")
    return _pair(raw, "chosen")


def rejected_of(raw: dict[str, Any]) -> list[dict[str, str]]:
    """The rejected conversation of a preference pair, validated like the chosen one."""
    messages = _pair(raw, "rejected")
    try:
        validate_conversation(messages)
    except MalformedRecord as e:
        raise MalformedRecord(f"rejected_{e.reason}", e.detail) from None
    return messages


NORMALISERS = {"alpaca": _from_alpaca, "sharegpt": _from_sharegpt, "chatml": _from_chatml, "preference": _from_preference}


def validate_conversation(messages: list[dict[str, str]]) -> None:
    """An optional system turn, then user/assistant turns alternating, ending on a non-empty answer."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if len(body) < 2:
        raise MalformedRecord("missing_turn", "needs at least one user turn and one assistant turn")
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise MalformedRecord("role_order", f"turn {i} is {turn['role']!r}, expected {expected!r}")
    if body[-1]["role"] != "assistant":
        raise MalformedRecord("missing_turn", "the conversation does not end with an assistant turn")
    if not body[-1]["content"].strip():
        raise MalformedRecord("empty_assistant", "the final assistant turn is empty")
    if not all(t["content"].strip() for t in body if t["role"] == "user"):
        raise MalformedRecord("empty_user", "a user turn is empty")


def normalise(raw: Any, shape: str = "auto") -> tuple[str, list[dict[str, str]]]:
    """Return (detected shape, messages) or raise MalformedRecord."""
    if not isinstance(raw, dict):
        raise MalformedRecord("not_an_object", f"a JSON {type(raw).__name__}, not an object")
    shape = detect_format(raw) if shape == "auto" else shape
    messages = NORMALISERS[shape](raw)
    validate_conversation(messages)
    return shape, messages
