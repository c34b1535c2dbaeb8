"""The request bodies the server accepts, validated at the edge (OpenAI's chat shape, and our feedback posts)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

UUID = re.compile(r"^(chatcmpl-)?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (logprobs, stop, ...)
    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float = Field(0.0, ge=0, le=2, description="0 (the default here) decodes greedily.")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    stream: bool = False
    seed: int | None = None
    user: str | None = Field(None, max_length=256)


class FeedbackPost(BaseModel):
    """A rating and/or correction of one response, or a comparison of it (`a`) with another (`b`)."""

    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(pattern=UUID.pattern)
    rating: Literal[1, -1] | None = None
    correction: str | None = Field(None, min_length=1, max_length=16_000)
    comment: str | None = Field(None, max_length=4_000)
    compared_with: str | None = Field(None, pattern=UUID.pattern)
    winner: Literal["a", "b", "tie"] | None = None

    @model_validator(mode="after")
    def _says_something(self) -> "FeedbackPost":
        if (self.compared_with is None) != (self.winner is None):
            raise ValueError("a comparison needs both compared_with and winner")
        if self.compared_with is None and self.rating is None and self.correction is None:
            raise ValueError("give a rating (1 or -1), a correction, or compared_with + winner")
        return self


def interaction_id(response_id: str) -> str:
    """The feedback event's interaction id: the completion id without its `chatcmpl-` prefix."""
    return UUID.match(response_id).group(2)
