"""Held-out reward evaluation for GRPO (and any adapter): mean reward and exact-match accuracy, base vs adapters.

Each held-out row's conversation up to its last assistant turn is the prompt, that turn the reference (the same
split as GRPO training, `studio.jobs.grpo.split_prompt`). The base and every adapter answer greedily on the one
loaded engine (the shared `studio.inference` engine, as the other evaluations), the answers are submitted
together so the engine's scheduler batches them, and `studio.rewards` scores them with the run's rewards: what a
GRPO run was rewarded for is what is measured. Exact-match accuracy is the share of answers whose final answer
(by the first match reward's extraction, else the last number) equals the reference's.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from studio import rewards
from studio.config import RewardSpec
from studio.errors import DataError
from studio.evaluation import (
    BASE,
    _adapter,
    _engine_with,
    _stop_if,
    generate_answer,
    messages_of,
    save_results,
    split_rows,
)
from studio.util import Progress, ShouldStop
from studio.util import never as _never
from studio.util import no_progress as _no_progress

DEFAULT_REWARDS = [RewardSpec(preset="numeric_match")]
PARALLEL = 16  # answers in flight at once: the engine's scheduler batches them


def prompt_rows(dataset: str, split: str = "eval", tokenizer=None) -> list[dict]:
    """{"prompt": messages, "answer": reference} for each row of the split that ends with an assistant answer."""
    from studio.jobs.grpo import split_prompt

    rows = []
    for row in split_rows(dataset, split, tokenizer):
        parts = split_prompt(messages_of(row))
        if parts:
            rows.append({"prompt": parts[0], "answer": parts[1]})
    if not rows:
        raise DataError(f"No {split} row of {dataset!r} ends with an assistant answer to compare against.",
                        "Use a dataset of questions with answers (any SFT format).")
    return rows


def match_spec(specs: list[RewardSpec]) -> RewardSpec:
    """The reward that decides exact match: the first numeric/exact match reward, else numeric match (last number)."""
    return next((s for s in specs if s.preset in ("numeric_match", "exact_match")), DEFAULT_REWARDS[0])


def score(specs: list[RewardSpec], rows: list[dict], answers: list[str]) -> dict:
    """Mean of each reward, of the weighted total, and exact-match accuracy, for one model's answers."""
    prompts, references = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    scores = rewards.score(specs, prompts, answers, references)
    matched = rewards.score([match_spec(specs)], prompts, answers, references)["total"]
    means = {name: round(sum(v or 0.0 for v in values) / len(values), 4) for name, values in scores.items()}
    return {"mean_reward": means.pop("total"), "per_reward": means,
            "exact_match": round(sum(m > 0 for m in matched) / len(matched), 4), "rows": len(rows)}


def answers_of(engine, name: str, rows: list[dict], max_new_tokens: int, should_stop: ShouldStop) -> list[str]:
    def one(row: dict) -> str:
        _stop_if(should_stop)
        return generate_answer(engine, _adapter(name), row["prompt"], max_new_tokens)

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(one, rows))


def rewards_of_runs(adapters: list[str]) -> list[RewardSpec]:
    """The rewards of the first adapter trained by a GRPO run (its spec.yaml); the default otherwise."""
    from studio.adapters import get_adapter
    from studio.config import RunSpec, load_yaml
    from studio.paths import runs_dir
    from studio.util import read_json

    for name in adapters:
        if name == BASE:
            continue
        run_id = read_json(get_adapter(name).path / "card.json", {}).get("run_id")
        spec_file = runs_dir() / str(run_id) / "spec.yaml"
        if run_id and spec_file.is_file():
            spec = load_yaml(RunSpec, spec_file)
            if spec.train.method == "grpo":
                return spec.grpo.rewards
    return DEFAULT_REWARDS


def compare_rewards(ref: str, quant: str, dataset_name: str, adapters: list[str], specs: list[RewardSpec] | None = None,
                    split: str = "eval", max_rows: int | None = None, max_new_tokens: int = 64,
                    progress: Progress = _no_progress, should_stop: ShouldStop = _never, save: bool = True) -> dict:
    """Held-out mean reward and exact-match accuracy of the base and each adapter, with a table of the answers."""
    specs = specs or rewards_of_runs(adapters)
    rewards.check(specs)
    prompt_rows(dataset_name, split)  # refuse a dataset without the split before loading a model
    progress(0.02, f"Loading {ref} ({quant})...")
    engine, folders = _engine_with(ref, quant, adapters)
    rows = prompt_rows(dataset_name, split, engine.tokenizer)[:max_rows]
    names = [BASE] + [a for a in adapters if a != BASE]
    results, table = {}, [{"prompt": r["prompt"][-1]["content"], "reference": r["answer"]} for r in rows]
    for i, name in enumerate(names):
        progress(0.05 + 0.95 * i / len(names), f"{name}: answering {len(rows)} held-out prompts...")
        answers = answers_of(engine, name, rows, max_new_tokens, should_stop)
        results[name] = score(specs, rows, answers)
        for line, answer in zip(table, answers, strict=True):
            line[f"{name}.answer"] = answer
    report = {"kind": "reward", "model": ref, "quant": quant, "dataset": dataset_name, "split": split,
              "rewards": [s.preset for s in specs], "max_new_tokens": max_new_tokens, "results": results,
              "rows": table, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if save:
        report["saved_to"] = [str(p) for p in save_results(report, folders)]
    return report


def summary_lines(report: dict) -> list[str]:
    """The result table in words, for the CLI and the Evaluate tab."""
    names = list(next(iter(report["results"].values()))["per_reward"])
    lines = [f"{'model':24} {'mean reward':>11} {'exact match':>11} " + " ".join(f"{n:>14}" for n in names)]
    for name, r in report["results"].items():
        lines.append(f"{name:24} {r['mean_reward']:11.4f} {r['exact_match']:11.4f} "
                     + " ".join(f"{r['per_reward'][n]:14.4f}" for n in names))
    rows = next(iter(report["results"].values()))["rows"]
    lines.append(f"{rows} {report['split']} prompts of {report['dataset']}, greedy answers of at most "
                 f"{report['max_new_tokens']} tokens")
    return lines


def preview_rewards(ref: str, dataset_name: str, specs: list[RewardSpec], prompts: int = 2, generations: int = 4,
                    max_new_tokens: int = 64, temperature: float = 1.0, quant: str = "fp32",
                    progress: Progress = _no_progress) -> list[dict]:
    """Sampled answers to the first prompts of a dataset, scored by each reward: does the scoring make sense?"""
    from studio.inference import GenerationSettings

    rewards.check(specs)
    rows = prompt_rows(dataset_name, "train")[:prompts]
    progress(0.1, f"Loading {ref}...")
    engine, _ = _engine_with(ref, quant, [])
    jobs = [(row, seed) for row in rows for seed in range(generations)]

    def sample(job: tuple[dict, int]) -> str:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=job[1],
                                      repetition_penalty=1.0)
        return "".join(engine.answer(job[0]["prompt"], settings, None)).strip()

    progress(0.3, f"Sampling {len(jobs)} answers...")
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        answers = list(pool.map(sample, jobs))
    scores = rewards.score(specs, [j[0]["prompt"] for j in jobs], answers, [j[0]["answer"] for j in jobs])
    return [{"prompt": job[0]["prompt"][-1]["content"], "answer": answer, "reference": job[0]["answer"],
             **{name: values[i] for name, values in scores.items()}}
            for i, (job, answer) in enumerate(zip(jobs, answers, strict=True))]
