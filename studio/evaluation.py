"""Evaluation: perplexity, ROUGE and a side-by-side battery, for the base and each adapter.

Perplexity is measured exactly like the training loss: a token counts only where its
`assistant_masks` value is 1, token t is predicted from the tokens before it, and the mean is
token-weighted over the whole split (not a mean of per-batch means). The base and every adapter
are measured on the same loaded weights, the shared chat engine's (studio.inference): it attaches and
swaps the adapters, and the base is the same model with adapters disabled. Battery answers go through
the engine's scheduler, batched with whoever else is chatting.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path

from studio import paths
from studio.errors import DataError
from studio.util import Progress, ShouldStop, write_json_atomic
from studio.util import never as _never
from studio.util import no_progress as _no_progress

BASE = "base"  # the label of the base model (adapters disabled) in every result table
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
IGNORE = -100  # the label value cross-entropy skips, as in training



class Cancelled(DataError):
    """The user stopped an evaluation; nothing was saved."""


def _stop_if(should_stop: ShouldStop) -> None:
    if should_stop():
        raise Cancelled("The evaluation was cancelled; no results were saved.", "Start it again when ready.")


# ---------------------------------------------------------------- data


def split_rows(dataset: str, split: str = "eval", tokenizer=None) -> list[dict]:
    """Rows (input_ids, assistant_masks, messages) of a prepared dataset's split, refusing a missing split
    (and, given the model's tokenizer, a dataset prepared for another tokenizer)."""
    from studio.data.preference import refuse_kto_for_scoring
    from studio.data.store import check_tokenizer, load_prepared

    refuse_kto_for_scoring(dataset)
    prepared = load_prepared(dataset)
    if tokenizer is not None:
        check_tokenizer(prepared.meta, tokenizer)
    table = prepared.train if split == "train" else prepared.eval
    if table is None or len(table) == 0:
        raise DataError(f"The dataset {dataset!r} has no {split} split, so there is nothing held out to "
                        f"evaluate on.", "Prepare it again in the Data tab with an eval split above 0 (e.g. "
                        "0.1), or pick a dataset that has one.")
    return [dict(r) for r in table]


def messages_of(row: dict) -> list[dict]:
    value = row.get("messages")
    return json.loads(value) if isinstance(value, str) else list(value or [])


# ---------------------------------------------------------------- perplexity


def _batch(rows: list[dict], pad_id: int):
    """Right-padded input_ids, attention mask and labels (-100 where the mask is 0 or padding)."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        seq = torch.tensor(row["input_ids"], dtype=torch.long)
        mask = torch.tensor(row.get("assistant_masks") or [1] * len(seq), dtype=torch.bool)
        ids[i, :len(seq)] = seq
        attn[i, :len(seq)] = 1
        labels[i, :len(seq)] = torch.where(mask, seq, torch.full_like(seq, IGNORE))
    return ids, attn, labels


def perplexity(model, tokenizer, dataset_rows: Iterable[dict], batch_size: int = 4,
               progress: Progress = _no_progress, should_stop: ShouldStop = _never) -> dict:
    """Token-weighted masked perplexity: exp(sum of losses on trained tokens / their count)."""
    import torch
    import torch.nn.functional as F

    rows = sorted((dict(r) for r in dataset_rows), key=lambda r: len(r["input_ids"]))  # less padding
    if not rows:
        raise DataError("There are no rows to evaluate.", "Give a dataset with an eval split.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for start in range(0, len(rows), batch_size):
        _stop_if(should_stop)
        ids, attn, labels = (t.to(device) for t in _batch(rows[start:start + batch_size], pad_id))
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]  # token t from tokens < t
        loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
        total_loss += float(loss)
        total_tokens += int((shift_labels != IGNORE).sum())
        progress(min(1.0, (start + batch_size) / len(rows)), f"perplexity: {min(start + batch_size, len(rows))}"
                 f"/{len(rows)} rows")
    model.train(was_training)
    if total_tokens == 0:
        raise DataError("No row has a trained token (assistant_masks is all 0).",
                        "Prepare the dataset again; each conversation needs an assistant answer.")
    mean = total_loss / total_tokens
    return {"loss": round(mean, 6), "perplexity": round(math.exp(mean), 4), "tokens": total_tokens,
            "rows": len(rows)}


# ---------------------------------------------------------------- base and adapters on one model


def _engine_with(ref: str, quant: str, adapters: list[str]):
    """The shared engine for (ref, quant) with `adapters` attached; {name: folder} for saving results.

    The engine owns the adapters' state (attached, active, merged): evaluation never calls PEFT itself,
    and shares the one loaded base with the Chat tab and the API.
    """
    from studio.adapters import get_adapter
    from studio.inference import get_engine

    engine = get_engine(ref, quant)
    folders = {}
    for name in adapters:
        if name != BASE:
            engine.load_adapter(name)
            folders[name] = get_adapter(name).path
    return engine, folders


def _adapter(name: str) -> str | None:
    return None if name in (None, BASE) else name


def compare_perplexity(ref: str, quant: str, dataset_name: str, adapters: list[str], batch_size: int = 4,
                       max_rows: int | None = None, progress: Progress = _no_progress,
                       should_stop: ShouldStop = _never, save: bool = True) -> dict:
    """Perplexity of the base and each adapter on a prepared dataset's eval split, on one loaded base."""

    split_rows(dataset_name, "eval")  # refuse a dataset without an eval split before loading a model
    progress(0.02, f"Loading {ref} ({quant})...")
    engine, folders = _engine_with(ref, quant, adapters)
    rows = split_rows(dataset_name, "eval", engine.tokenizer)[:max_rows]
    names = [BASE] + [a for a in adapters if a != BASE]
    results = {}
    for i, name in enumerate(names):
        def step(f: float, m: str, i: int = i, name: str = name) -> None:
            progress((i + f) / len(names), f"{name}: {m}")

        with engine.use(_adapter(name)) as model:  # holds the step lock: a perplexity pass is one block
            results[name] = perplexity(model, engine.tokenizer, rows, batch_size, step, should_stop)
    report = {"kind": "perplexity", "model": ref, "quant": quant, "dataset": dataset_name, "results": results,
              "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if save:
        report["saved_to"] = [str(p) for p in save_results(report, folders)]
    return report


# ---------------------------------------------------------------- generation, ROUGE, battery


def generate_answer(engine, adapter: str | None, messages: list[dict], max_new_tokens: int = 128) -> str:
    """The greedy answer of the base (None) or an adapter to the conversation (its last assistant turn removed).

    It goes through the engine's scheduler, so it batches with other users instead of blocking them."""
    from studio.inference import GenerationSettings

    prompt = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    settings = GenerationSettings(max_new_tokens=max_new_tokens, repetition_penalty=1.0)
    return "".join(engine.answer(prompt, settings, adapter)).strip()


def rouge(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F1 (rouge-score, with stemming) over pairs of answers and references."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise DataError(f"ROUGE needs as many answers as references (got {len(predictions)} and "
                        f"{len(references)}).", "Give one reference per answer.")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        for key, score in scorer.score(ref, pred).items():
            totals[key] += score.fmeasure
    return {key: round(value / len(predictions), 4) for key, value in totals.items()}


def battery(engine, rows: list[dict], adapters: list[str], max_new_tokens: int = 128,
            progress: Progress = _no_progress, should_stop: ShouldStop = _never) -> dict:
    """Each row's prompt through the base and each loaded adapter: answers, per-answer ROUGE, means."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    names = [BASE] + [a for a in adapters if a != BASE]
    table = []
    for i, row in enumerate(rows):
        messages = messages_of(row)
        reference = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        line = {"prompt": prompt, "reference": reference}
        for j, name in enumerate(names):
            _stop_if(should_stop)
            progress((i * len(names) + j) / (len(rows) * len(names)), f"prompt {i + 1}/{len(rows)}: {name}")
            answer = generate_answer(engine, _adapter(name), messages, max_new_tokens)
            line[f"{name}.answer"] = answer
            if reference:
                for key, score in scorer.score(reference, answer).items():
                    line[f"{name}.{key}"] = round(score.fmeasure, 4)
        table.append(line)
    means = {name: {key: round(sum(r.get(f"{name}.{key}", 0.0) for r in table) / len(table), 4)
                    for key in ROUGE_KEYS} for name in names} if table and table[0]["reference"] else {}
    return {"rows": table, "rouge": means}


def compare_battery(ref: str, quant: str, dataset_name: str, adapters: list[str], prompts: int = 8,
                    max_new_tokens: int = 128, progress: Progress = _no_progress,
                    should_stop: ShouldStop = _never, save: bool = True) -> dict:
    """N eval prompts through the base and each adapter, with ROUGE against the dataset's answers."""

    split_rows(dataset_name, "eval")
    progress(0.02, f"Loading {ref} ({quant})...")
    engine, folders = _engine_with(ref, quant, adapters)
    rows = split_rows(dataset_name, "eval", engine.tokenizer)[:prompts]
    result = battery(engine, rows, adapters, max_new_tokens, progress, should_stop)
    report = {"kind": "battery", "model": ref, "quant": quant, "dataset": dataset_name, **result,
              "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if save:
        report["saved_to"] = [str(p) for p in save_results(report, folders)]
    return report


# ---------------------------------------------------------------- saving with the run


def results_folder(adapter_dir: Path | None) -> Path:
    """runs/<id>/eval for a run's adapter, <adapter>/eval for an imported one, else exports/evals."""
    if adapter_dir is None:
        return paths.exports_dir() / "evals"
    adapter_dir = Path(adapter_dir)
    if adapter_dir.name == "adapter" and adapter_dir.parent.parent == paths.runs_dir():
        return adapter_dir.parent / "eval"
    return adapter_dir / "eval"


def save_results(report: dict, folders: dict) -> list[Path]:
    """Write the report next to each adapter's run (JSON, plus CSV/JSONL for a battery); update cards."""
    from studio.adapters import update_card

    stamp = time.strftime("%Y%m%d-%H%M%S")
    targets = [results_folder(p) for p in folders.values()] or [results_folder(None)]
    written = []
    for folder in dict.fromkeys(targets):
        folder.mkdir(parents=True, exist_ok=True)
        base = folder / f"{report['kind']}-{stamp}"
        write_json_atomic(base.with_suffix(".json"), report)
        if report["kind"] == "battery":
            write_table(report["rows"], base.with_suffix(".csv"))
            write_table(report["rows"], base.with_suffix(".jsonl"))
        written.append(base.with_suffix(".json"))
    for name, folder in folders.items():
        update_card(folder, card_metrics(report, name))
    return written


def card_metrics(report: dict, name: str) -> dict:
    """The numbers an adapter card shows: its perplexity (and the base's) or its mean ROUGE."""
    dataset = report["dataset"]
    if report["kind"] == "perplexity":
        res = report["results"]
        return {f"eval_perplexity[{dataset}]": res[name]["perplexity"],
                f"base_perplexity[{dataset}]": res[BASE]["perplexity"]}
    if report["kind"] == "preference":
        res = report["results"]
        return {f"preference_accuracy[{dataset}]": res[name]["preference_accuracy"],
                f"base_preference_accuracy[{dataset}]": res[BASE]["preference_accuracy"],
                f"reward_margin[{dataset}]": res[name].get("mean_reward_margin")}
    if report["kind"] == "reward":  # studio.reward_eval: held-out mean reward and exact match
        res = report["results"]
        return {f"mean_reward[{dataset}]": res[name]["mean_reward"],
                f"exact_match[{dataset}]": res[name]["exact_match"],
                f"base_exact_match[{dataset}]": res[BASE]["exact_match"]}
    return {f"{key}[{dataset}]": value for key, value in (report.get("rouge") or {}).get(name, {}).items()}


def write_table(rows: list[dict], path: Path) -> Path:
    """A battery table as CSV (by suffix .csv) or JSONL (anything else)."""
    path = Path(path)
    if path.suffix == ".csv":
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- preference pairs (DPO / ORPO data)


def pair_rows(dataset: str, tokenizer=None) -> list[dict]:
    """The eval split of a prepared preference dataset (prompt_ids, chosen_ids, rejected_ids, pair)."""
    from studio.data import preference
    from studio.data.store import check_tokenizer

    prepared = preference.load(dataset)
    if tokenizer is not None:
        check_tokenizer(prepared.meta, tokenizer)
    if prepared.eval is None or len(prepared.eval) == 0:
        raise DataError(f"The dataset {dataset!r} has no eval split, so no pair is held out to evaluate on.",
                        "Prepare it again with an eval split above 0 (e.g. 0.1).")
    return [dict(r) for r in prepared.eval]


def answer_logps(model, tokenizer, rows: list[dict], batch_size: int = 8, progress: Progress = _no_progress,
                 should_stop: ShouldStop = _never) -> tuple[list[float], list[float]]:
    """Sum of log-probabilities of the chosen and of the rejected answer tokens given the prompt, per row
    (the quantity DPO trains; the answer ends with its end-of-turn token)."""
    import torch

    sequences = [(r["prompt_ids"], r[f"{side}_ids"]) for side in ("chosen", "rejected") for r in rows]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    sums: list[float] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(sequences), batch_size):
        _stop_if(should_stop)
        ids, attn, labels = _batch([{"input_ids": list(p) + list(a), "assistant_masks": [0] * len(p) + [1] * len(a)}
                                    for p, a in sequences[start:start + batch_size]], pad_id)
        ids, attn, labels = ids.to(device), attn.to(device), labels.to(device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()
        targets = labels[:, 1:]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums += (logp * (targets != IGNORE)).sum(dim=1).tolist()
        progress(min(1.0, (start + batch_size) / len(sequences)), f"{min(start + batch_size, len(sequences))}/"
                 f"{len(sequences)} answers scored")
    model.train(was_training)
    return sums[:len(rows)], sums[len(rows):]


def preference_scores(chosen: list[float], rejected: list[float], base: tuple[list[float], list[float]] | None,
                      beta: float, lengths: tuple[list[int], list[int]] | None = None) -> dict:
    """Preference accuracy (chosen more likely than rejected), mean log-prob margin, and, against the base as
    reference, DPO's implicit reward margin beta * (log-ratio chosen - log-ratio rejected) and its accuracy.
    With the answers' token counts, also the length-normalized accuracy (mean log-prob per answer token, which
    does not favour the shorter answer as the summed log-prob does)."""
    n = len(chosen)
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    scores = {"pairs": n, "preference_accuracy": round(sum(m > 0 for m in margins) / n, 4),
              "mean_logp_margin": round(sum(margins) / n, 4)}
    if lengths is not None:
        per_token = [c / max(lc, 1) > r / max(lr, 1) for c, r, lc, lr in zip(chosen, rejected, *lengths, strict=True)]
        scores["normalized_accuracy"] = round(sum(per_token) / n, 4)
    if base is not None:
        rewards = [beta * ((c - bc) - (r - br)) for c, r, bc, br in zip(chosen, rejected, *base, strict=True)]
        scores["mean_reward_margin"] = round(sum(rewards) / n, 4)
        scores["reward_accuracy"] = round(sum(x > 0 for x in rewards) / n, 4)
    return scores


def compare_preference(ref: str, quant: str, dataset_name: str, adapters: list[str], beta: float = 0.1,
                       max_rows: int | None = None, batch_size: int = 8, progress: Progress = _no_progress,
                       should_stop: ShouldStop = _never, save: bool = True) -> dict:
    """Held-out preference accuracy and mean reward margin of the base and each adapter (SFT, DPO, ORPO ...),
    on one loaded base; the base is the reference of the reward margin (0 for itself)."""
    pair_rows(dataset_name)  # refuse a dataset without an eval split (or not preference data) before loading
    progress(0.02, f"Loading {ref} ({quant})...")
    engine, folders = _engine_with(ref, quant, adapters)
    rows = pair_rows(dataset_name, engine.tokenizer)[:max_rows]
    names = [BASE] + [a for a in adapters if a != BASE]
    logps: dict[str, tuple[list[float], list[float]]] = {}
    for i, name in enumerate(names):
        def step(f: float, m: str, i: int = i, name: str = name) -> None:
            progress((i + f) / len(names), f"{name}: {m}")

        with engine.use(_adapter(name)) as model:  # the engine swaps adapters; the base is adapters disabled
            logps[name] = answer_logps(model, engine.tokenizer, rows, batch_size, step, should_stop)
    lengths = ([len(r["chosen_ids"]) for r in rows], [len(r["rejected_ids"]) for r in rows])
    results = {name: preference_scores(*logps[name], logps[BASE] if name != BASE else None, beta, lengths)
               for name in names}
    results[BASE].update(mean_reward_margin=0.0, reward_accuracy=None)
    report = {"kind": "preference", "model": ref, "quant": quant, "dataset": dataset_name, "beta": beta,
              "results": results, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if save:
        report["saved_to"] = [str(p) for p in save_results(report, folders)]
    return report
