"""Helpers for the training tests: a small prepared dataset and a spec for tiny models."""

from __future__ import annotations

import json
from pathlib import Path

from studio.config import LoraSpec, ModelSpec, RunSpec, TrainSpec

PHRASE = "Zebra protocol engaged."


def write_chat_file(path: Path, rows: int = 48) -> Path:
    """A JSONL of OpenAI-style chats whose answers are learnable (a fixed phrase + the question's number)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            messages = [{"role": "user", "content": f"Question number {i}: what is the code?"},
                        {"role": "assistant", "content": f"{PHRASE} Code {i % 7}."}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def prepare(tmp_path: Path, model_ref: str, name: str = "chat", rows: int = 48, max_len: int = 64) -> str:
    from studio.data.store import prepare as store_prepare

    store_prepare(write_chat_file(tmp_path / f"{name}.jsonl", rows), model_ref, name, max_len=max_len,
                  eval_split=0.125)
    return name


def tiny_spec(name: str, dataset: str, model_ref: str, max_steps: int = 12, save_steps: int = 4,
              **train) -> RunSpec:
    return RunSpec(name=name, dataset=dataset, model=ModelSpec(ref=model_ref, quant="fp32"),
                   lora=LoraSpec(r=8, alpha=16, dropout=0.0),
                   train=TrainSpec(max_seq_len=64, micro_batch=4, grad_accum=1, lr=1e-2, warmup_ratio=0.0,
                                   max_steps=max_steps, save_steps=save_steps, eval_steps=6,
                                   gradient_checkpointing=False, optimizer="adamw_torch", precision="fp32",
                                   packing=False, scheduler="constant", **train))
