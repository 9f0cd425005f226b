"""The GRPO recipe pieces (method grpo), built from TRL's `GRPOTrainer` for the worker.

Data: any prepared SFT dataset. Each row's conversation up to its last assistant turn is the prompt (rendered
by TRL through the same chat template); that last assistant turn is the reference answer the match rewards
compare against (column `answer`). The model samples `num_generations` answers per prompt, `studio.rewards`
scores them, and TRL's group-relative advantage trains the LoRA adapter. The reference for the KL term is the
base with the adapter disabled (a new adapter starts at zero), so no second copy of the model is held.

Logs: TRL's `reward`, `rewards/<name>/mean`, `kl` and `completions/mean_length` become events.jsonl keys
(`LOG_KEYS`), and after every logged step a few of the newest completions with their scores are appended as a
`completions` event, which the Train tab shows as a table.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from studio.config import RunSpec
from studio.errors import RunError

LOG_KEYS = {"reward": "reward", "reward_std": "reward_std", "kl": "kl",
            "completions/mean_length": "completion_length", "frac_reward_zero_std": "frac_reward_zero_std"}
SHOWN_COMPLETIONS = 4  # completions kept per logged step for the Train tab's table
TEXT_CHARS = 400  # each prompt / completion is cut to this for the table


def log_fields(logs: dict) -> dict:
    """GRPO metrics of one Trainer log renamed for events.jsonl: reward, per-function rewards, KL, length."""
    found = {ours: round(float(logs[theirs]), 6) for theirs, ours in LOG_KEYS.items()
             if logs.get(theirs) is not None}
    for key, value in logs.items():
        if key.startswith("rewards/") and key.endswith("/mean") and value is not None:
            found[f"reward_{key[len('rewards/'):-len('/mean')]}"] = round(float(value), 6)
    return found


def final_metrics(trainer) -> dict:
    found: dict = {}
    for entry in trainer.state.log_history:
        found.update(log_fields(entry))
    return {k: round(v, 4) for k, v in found.items() if k in ("reward", "kl", "completion_length")}


# ---------------------------------------------------------------- data


def split_prompt(messages: list[dict]) -> tuple[list[dict], str] | None:
    """(the conversation before the last assistant turn, that turn's text); None without an assistant turn."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None or last == 0:
        return None
    prompt = [{"role": m["role"], "content": m.get("content") or ""} for m in messages[:last]]
    return prompt, str(messages[last].get("content") or "")


def prompt_rows(split) -> list[dict]:
    """A prepared split's `messages` as GRPO rows: {"prompt": [messages], "answer": reference text}."""
    rows, seen = [], set()
    for text in split["messages"]:
        parts = split_prompt(json.loads(text))
        key = json.dumps(parts[0]) if parts else ""
        if parts and key not in seen:  # a chunked or repeated conversation is one prompt
            seen.add(key)
            rows.append({"prompt": parts[0], "answer": parts[1]})
    return rows


def load_prompts(spec: RunSpec, tokenizer):
    """(prepared, train rows as a datasets.Dataset): refuses preference or KTO data and another tokenizer."""
    import datasets

    from studio.data.store import check_tokenizer, load_prepared

    prepared = load_prepared(spec.dataset)
    check_tokenizer(prepared.meta, tokenizer)
    rows = prompt_rows(prepared.train)
    if not rows:
        raise RunError(f"No row of {spec.dataset!r} has a prompt followed by an assistant answer.",
                       "Use a dataset of conversations (question, then answer): any SFT format works.")
    return prepared, datasets.Dataset.from_list(rows)


# ---------------------------------------------------------------- trainer


def grpo_args(spec: RunSpec, base: dict):
    """GRPOConfig from the worker's shared arguments plus the run's grpo block."""
    import dataclasses

    from trl import GRPOConfig

    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    common = {k: v for k, v in base.items() if k in known}
    g = spec.grpo
    return GRPOConfig(**common, num_generations=g.num_generations, max_completion_length=g.max_completion_length,
                      beta=g.beta, temperature=g.temperature, reward_weights=[r.weight for r in g.rewards],
                      generation_kwargs={"use_cache": True},  # the KV cache (off for training) speeds sampling
                      log_completions=False, disable_dropout=True)


def trainer_class(run_dir):
    from trl import GRPOTrainer

    from studio.jobs.events import append_event

    class StudioGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that also appends a few of the newest completions, with their scores, to events.jsonl."""

        def log(self, logs: dict, start_time: float | None = None) -> None:
            super().log(logs, start_time)
            if self.accelerator.is_main_process and self.model.training and self._logs["prompt"]:
                append_event(run_dir, {"type": "completions", "step": self.state.global_step,
                                       "rows": recent_completions(self._logs)})

    return StudioGRPOTrainer


def recent_completions(logs: dict, n: int = SHOWN_COMPLETIONS) -> list[dict]:
    from studio.rewards import text_of

    prompts, completions = list(logs["prompt"])[-n:], list(logs["completion"])[-n:]
    rewards = {name: list(values)[-n:] for name, values in logs["rewards"].items()}
    rows = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        question = text_of(prompt[-1:]) if isinstance(prompt, list) else str(prompt)
        rows.append({"prompt": question[:TEXT_CHARS], "completion": text_of(completion)[:TEXT_CHARS],
                     **{name: round(float(v[i]), 4) for name, v in rewards.items()}})
    return rows


def make_trainer(spec: RunSpec, model, tokenizer, args_for: Callable[[bool], dict], callbacks: list, run_dir):
    """(prepared, None, trainer): GRPO trains without an eval split (Evaluate scores held-out answers instead)."""
    from studio import rewards
    from studio.jobs.preference import drop_reference_copy, no_dropout

    reward_funcs = rewards.build(spec.grpo.rewards)  # a reward file is imported here, before the first step
    prepared, train_ds = load_prompts(spec, tokenizer)
    tokenizer.padding_side = "left"  # TRL generates a batch of prompts, padded on the left
    args = grpo_args(spec, args_for(False))
    trainer = trainer_class(run_dir)(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_ds,
                                     processing_class=tokenizer, callbacks=callbacks)
    if not spec.from_adapter:
        drop_reference_copy(trainer.model)
    no_dropout(trainer.model)
    return prepared, None, trainer
