"""Streamed chat generation through the model's chat template.

(The multi-adapter engine of the Chat playground builds on `stream_chat`.)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

from studio.errors import ConfigError

MAX_PROMPT_CHARS = 32_000  # longer prompts are refused: they would only be truncated by the context


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy: same prompt, same answer
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.1
    seed: int = 0

    def validate(self) -> None:
        checks = [
            ("max_new_tokens", 1 <= self.max_new_tokens <= 4096, "between 1 and 4096"),
            ("temperature", 0.0 <= self.temperature <= 5.0, "between 0 and 5 (0 = greedy)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "above 0 and at most 1"),
            ("top_k", 0 <= self.top_k <= 10_000, "between 0 and 10000"),
            ("repetition_penalty", 0.5 <= self.repetition_penalty <= 3.0, "between 0.5 and 3"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"Generation setting {name}={getattr(self, name)!r} is out of range.",
                                  f"Set {name} {allowed}.")


def check_messages(messages: list[dict]) -> None:
    if not messages or not str(messages[-1].get("content", "")).strip():
        raise ConfigError("The prompt is empty.", "Type a question or instruction first.")
    total = sum(len(str(m.get("content", ""))) for m in messages)
    if total > MAX_PROMPT_CHARS:
        raise ConfigError(f"The conversation is {total:,} characters long, over the {MAX_PROMPT_CHARS:,} limit.",
                          "Shorten the prompt or clear the chat history.")


def encode_chat(tokenizer, messages: list[dict]):
    """Token ids (1 x T tensor) of a conversation ready for the assistant's next turn."""
    from studio.data.render import apply_template

    text = apply_template(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def generate_kwargs(tokenizer, settings: GenerationSettings) -> dict:
    kwargs = {"max_new_tokens": settings.max_new_tokens, "repetition_penalty": settings.repetition_penalty,
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def stream_chat(model, tokenizer, messages: list[dict], settings: GenerationSettings = GenerationSettings()
                ) -> Iterator[str]:
    """Yield the answer piece by piece as the model writes it."""
    import torch
    from transformers import TextIteratorStreamer

    settings.validate()
    check_messages(messages)
    input_ids = encode_chat(tokenizer, messages).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            torch.manual_seed(settings.seed)
            with torch.inference_mode():
                model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                               **generate_kwargs(tokenizer, settings))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- one loaded copy per (model, quant)

_cache: dict[tuple[str, str], object] = {}
_cache_lock = threading.Lock()


def cached_model(ref: str, quant: str, progress=None):
    """Load (ref, quant) once per process and share it; the app keeps at most two bases in memory."""
    from studio.models import load_model

    key = (ref, quant)
    with _cache_lock:
        if key not in _cache:
            if len(_cache) >= 2:
                _cache.pop(next(iter(_cache)))
            _cache[key] = load_model(ref, quant, progress=progress or (lambda f, m: None))
        return _cache[key]
