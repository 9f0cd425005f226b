"""Perplexity masked like training, base vs adapters on one model, ROUGE, the battery, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from studio import evaluation
from studio.errors import AdapterError, DataError

ROOT = Path(__file__).resolve().parents[2]
MEDICAL = ROOT / "assets" / "medical_demo.jsonl"


def prepare(model_dir: Path, name: str, eval_split: float = 0.2) -> str:
    from studio.data.store import prepare as prepare_dataset

    prepare_dataset(MEDICAL, str(model_dir), name, max_len=192, eval_split=eval_split)
    return name


def train_adapter(model_dir: Path, folder: Path, rows: list[dict] | None = None, steps: int = 12,
                  seed: int = 0) -> Path:
    """A LoRA adapter from a short plain-torch loop on `rows` (or random B weights when rows is None)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            init_lora_weights=rows is not None))
    if rows:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
        model.train()
        for step in range(steps):
            batch = [rows[(step * 4 + i) % len(rows)] for i in range(4)]
            ids, attn, labels = evaluation._batch(batch, 0)
            model(input_ids=ids, attention_mask=attn, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


def _tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_model_dir))


def test_perplexity_counts_only_masked_tokens_like_the_training_loss(tiny_model_dir):
    model, tok = _tiny(tiny_model_dir)
    row = {"input_ids": list(range(100, 120)), "assistant_masks": [0] * 8 + [1] * 12}
    result = evaluation.perplexity(model, tok, [row])
    ids, attn, labels = evaluation._batch([row], 0)
    with torch.no_grad():
        hf_loss = float(model(input_ids=ids, attention_mask=attn, labels=labels).loss)  # the trainer's loss
    assert result["tokens"] == 12
    assert result["loss"] == pytest.approx(hf_loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(hf_loss), rel=1e-4)


def test_perplexity_is_token_weighted_over_rows_and_batches(tiny_model_dir):
    model, tok = _tiny(tiny_model_dir)
    short = {"input_ids": list(range(200, 206)), "assistant_masks": [0, 0, 1, 1, 1, 1]}
    long = {"input_ids": list(range(300, 340)), "assistant_masks": [0] * 10 + [1] * 30}
    one, two = evaluation.perplexity(model, tok, [short]), evaluation.perplexity(model, tok, [long])
    both = evaluation.perplexity(model, tok, [short, long], batch_size=1)
    padded = evaluation.perplexity(model, tok, [short, long], batch_size=2)  # padding changes nothing
    expected = (one["loss"] * one["tokens"] + two["loss"] * two["tokens"]) / (one["tokens"] + two["tokens"])
    assert both["loss"] == pytest.approx(expected, rel=1e-5)
    assert padded["loss"] == pytest.approx(expected, rel=1e-4)


def test_rows_without_trained_tokens_are_refused(tiny_model_dir):
    model, tok = _tiny(tiny_model_dir)
    with pytest.raises(DataError, match="trained token"):
        evaluation.perplexity(model, tok, [{"input_ids": [1, 2, 3], "assistant_masks": [0, 0, 0]}])


def test_rouge_scores_identical_and_unrelated_answers():
    assert evaluation.rouge(["drink water and rest"], ["drink water and rest"]) == {
        "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert evaluation.rouge(["purple elephants"], ["drink water and rest"])["rouge1"] == 0.0
    with pytest.raises(DataError):
        evaluation.rouge(["a"], ["a", "b"])


def test_eval_on_a_dataset_without_eval_split_is_refused(tiny_model_dir):
    prepare(tiny_model_dir, "no-eval", eval_split=0.0)
    with pytest.raises(DataError, match="no eval split"):
        evaluation.compare_perplexity(str(tiny_model_dir), "fp32", "no-eval", [])


def test_adapter_for_another_base_is_refused(tiny_model_dir, other_tiny_model_dir, workspace):
    prepare(tiny_model_dir, "med")
    train_adapter(other_tiny_model_dir, workspace / "adapters" / "wide")
    with pytest.raises(AdapterError, match="does not fit"):
        evaluation.compare_perplexity(str(tiny_model_dir), "fp32", "med", ["wide"])


def test_trained_adapter_has_lower_perplexity_than_base_and_results_stay_with_the_run(tiny_model_dir, workspace):
    prepare(tiny_model_dir, "med")
    train_rows = evaluation.split_rows("med", "train")
    adapter = train_adapter(tiny_model_dir, workspace / "runs" / "run-1" / "adapter", train_rows, steps=20)
    report = evaluation.compare_perplexity(str(tiny_model_dir), "fp32", "med", ["run:run-1"])
    base, tuned = report["results"]["base"], report["results"]["run:run-1"]
    assert base["tokens"] == tuned["tokens"] > 0
    assert tuned["perplexity"] < 0.9 * base["perplexity"]
    saved = [Path(p) for p in report["saved_to"]]
    assert saved[0].parent == workspace / "runs" / "run-1" / "eval"
    assert json.loads(saved[0].read_text())["results"]["base"]["perplexity"] == base["perplexity"]
    card = json.loads((adapter / "card.json").read_text())
    assert card["metrics"]["eval_perplexity[med]"] == tuned["perplexity"]
    assert "eval_perplexity[med]" in (adapter / "README.md").read_text()


def test_battery_puts_base_and_adapter_answers_side_by_side_and_exports_them(tiny_model_dir, workspace):
    prepare(tiny_model_dir, "med")
    train_adapter(tiny_model_dir, workspace / "adapters" / "rand")
    report = evaluation.compare_battery(str(tiny_model_dir), "fp32", "med", ["rand"], prompts=2, max_new_tokens=6)
    assert len(report["rows"]) == 2
    row = report["rows"][0]
    assert row["prompt"] and row["reference"]
    assert {"base.answer", "rand.answer", "base.rougeL", "rand.rougeL"} <= set(row)
    assert row["base.answer"] != row["rand.answer"]  # the adapter is really swapped in
    assert set(report["rouge"]) == {"base", "rand"}
    json_path = Path(report["saved_to"][0])
    csv_lines = json_path.with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0].startswith("prompt,reference,base.answer") and len(csv_lines) >= 3
    assert len(json_path.with_suffix(".jsonl").read_text().splitlines()) == 2
