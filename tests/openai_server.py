"""A minimal OpenAI-compatible chat-completions server over a local transformers model, for tests only: FastAPI
served by uvicorn on 127.0.0.1 and a free port, in a thread, stopped by the context manager."""

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel
from tests.conftest import free_port, running


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[Message]
    max_tokens: int = 64
    temperature: float = 0.0


def chat_app(model_dir: Path):
    import torch
    from fastapi import FastAPI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    lock = threading.Lock()  # one generation at a time; the model is not re-entrant
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def complete(request: ChatRequest) -> dict:
        ids = tokenizer.apply_chat_template([m.model_dump() for m in request.messages], add_generation_prompt=True,
                                            tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
        with lock, torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=request.max_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": request.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": out.shape[1] - ids.shape[1],
                          "total_tokens": out.shape[1]}}

    return app


@contextmanager
def serving(model_dir: Path) -> Iterator[str]:
    """Serve `model_dir` and yield its base URL (`http://127.0.0.1:PORT/v1`)."""
    with running(chat_app(model_dir), free_port(), start_timeout=60) as url:
        yield f"{url}/v1"
