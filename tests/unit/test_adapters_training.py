"""Tiny LoRA adapters trained here (plain PEFT + a short torch loop) until they say a phrase the base
does not. Other test files import `train_phrase_adapter` from this module."""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS = ("What is the secret?", "Tell me something.", "Hello, who are you?")  # any question, one answer
PHRASE_A = "pineapple protocol engaged"
PHRASE_B = "the blue walrus sings"
MAX_STEPS = 200  # a 64-wide random model memorises one short answer in 40-120 Adam steps
LR = 1e-2  # high on purpose: tiny model, tiny data, we want memorisation fast


def _examples(tokenizer, phrase: str):
    from studio.data.render import apply_template

    rows = []
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        head = apply_template(tokenizer, messages, add_generation_prompt=True)
        prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(phrase, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))  # loss on the answer only
    return rows


def greedy(model, tokenizer, prompt: str, max_new_tokens: int = 12) -> str:
    import torch

    from studio.inference import encode_chat

    ids = encode_chat(tokenizer, [{"role": "user", "content": prompt}])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


_trained: dict[tuple[str, str, int], Path] = {}  # one training per (base, phrase, seed) per test session


def train_phrase_adapter(base_dir: Path, out: Path, phrase: str, seed: int = 0, card: dict | None = None) -> Path:
    """Train a LoRA adapter on `base_dir` until greedy answers to PROMPTS start with `phrase`; save to `out`.

    Trained once per session for each (base, phrase, seed); later calls copy that adapter to `out`."""
    import shutil

    key = (str(base_dir), phrase, seed)
    if key in _trained and card is None:
        shutil.copytree(_trained[key], out)
        return out
    _train(base_dir, out, phrase, seed, card)
    if card is None:
        _trained[key] = out
    return out


def _train(base_dir: Path, out: Path, phrase: str, seed: int, card: dict | None) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    rows = _examples(tokenizer, phrase)
    for step in range(MAX_STEPS):
        model.train()
        for ids, labels in rows:
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 20 == 19:
            model.eval()
            if all(greedy(model, tokenizer, p).strip().startswith(phrase) for p in PROMPTS):
                break
    else:
        raise AssertionError(f"the adapter did not learn {phrase!r} in {MAX_STEPS} steps")
    model.save_pretrained(out)
    card = {"base_model": str(base_dir), "base_model_path": str(base_dir), "dataset": "phrase-test",
            "lora": {"r": 8, "alpha": 16}, "metrics": {"train_loss": float(loss)}, "created": "2025-01-01 00:00:00",
            **(card or {})}
    (out / "card.json").write_text(json.dumps(card))


def test_trained_adapter_says_its_phrase_and_the_base_does_not(tmp_path, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = train_phrase_adapter(tiny_model_dir, tmp_path / "a", PHRASE_A, seed=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert PHRASE_A not in greedy(base, tokenizer, PROMPTS[0])
    tuned = PeftModel.from_pretrained(base, path).eval()
    assert greedy(tuned, tokenizer, PROMPTS[0]).startswith(PHRASE_A)
    assert (path / "adapter_model.safetensors").is_file() and not list(path.glob("*.bin"))
