"""The preference-tuning recipe pieces (method dpo | orpo), built from TRL's trainers for the worker.

- DPO: `trl.DPOTrainer` (stable API). The reference model is the base with the LoRA adapter disabled:
  for a new adapter TRL's frozen copy of it (an identical zero-update adapter) is dropped, so no second
  copy of anything is held and the reference pass is the plain base. Starting from an SFT adapter
  (`from_adapter`), the reference is that SFT adapter as it was at the start: TRL keeps it as a frozen
  adapter named "ref" (LoRA weights only, not a second model), as DPO wants (pi_ref = pi_SFT).
- ORPO: `trl.experimental.orpo.ORPOTrainer` (experimental in TRL 1.16, pinned in requirements.txt): SFT
  loss on the chosen answer plus lambda times the odds-ratio term; it has no reference pass at all.

Both read the prepared pairs (`studio.data.preference.prepare`: prompt_ids, chosen_ids, rejected_ids
rendered through the chat template) as they are: the tokens the Data tab showed are the tokens trained.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from studio.config import RunSpec
from studio.errors import RunError

# TRL log keys -> events.jsonl keys (the Train tab plots these beside the loss)
LOG_KEYS = {"rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
            "eval_rewards/margins": "eval_reward_margin", "eval_rewards/accuracies": "eval_reward_accuracy"}
ID_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids"]


def log_fields(logs: dict) -> dict:
    """The preference metrics of one Trainer log, renamed for events.jsonl (nothing for SFT logs)."""
    return {ours: round(float(logs[theirs]), 6) for theirs, ours in LOG_KEYS.items() if theirs in logs}


def final_metrics(trainer) -> dict:
    """The last logged train and eval reward margin / accuracy, for the adapter card and status.json."""
    found: dict = {}
    for entry in trainer.state.log_history:
        found.update(log_fields(entry))
    return {k: round(v, 4) for k, v in found.items()}


# ---------------------------------------------------------------- data


def load_pairs(spec: RunSpec, tokenizer):
    """(prepared, train, eval) id columns of the run's preference dataset, refusing SFT data or another tokenizer."""
    from studio.data import preference
    from studio.data.render import tokenizer_fingerprint
    from studio.data.store import _folder
    from studio.util import read_json

    meta = read_json(_folder(spec.dataset) / "meta.json", {})
    preference.check_method(meta, spec.train.method)
    prepared = preference.load(spec.dataset)
    if prepared.meta.get("tokenizer_fingerprint") != tokenizer_fingerprint(tokenizer):
        raise RunError(f"Dataset {spec.dataset!r} was prepared for another tokenizer "
                       f"({prepared.meta.get('model_ref')}), not for {spec.model.ref}.",
                       f"Prepare the data again with model {spec.model.ref} in the Data tab.")
    train = prepared.train.select_columns(ID_COLUMNS)
    evaluation = (prepared.eval.select_columns(ID_COLUMNS)
                  if prepared.eval is not None and len(prepared.eval) else None)
    return prepared, train, evaluation


# ---------------------------------------------------------------- the starting adapter


def adapter_folder(ref: str) -> Path:
    """A registry adapter name (run:<id>, imported names) or a folder holding adapter_config.json."""
    from studio.adapters import get_adapter

    path = Path(ref).expanduser()
    if (path / "adapter_config.json").is_file():
        return path
    return Path(get_adapter(ref).path)


def load_start_adapter(model, ref: str):
    """The base with an existing LoRA adapter loaded as the trainable 'default' adapter (continue training it)."""
    from peft import PeftModel

    from studio.adapters import validate_adapter

    folder = adapter_folder(ref)
    validate_adapter(folder, model)
    return PeftModel.from_pretrained(model, str(folder), is_trainable=True)


# ---------------------------------------------------------------- config and trainers


def _common(base: dict) -> dict:
    """The TrainingArguments shared with the SFT recipe (same optimizer fallbacks, checkpoints, logging)."""
    return {**base, "include_num_input_tokens_seen": "non_padding", "disable_dropout": True}


def dpo_trainer_class():
    from trl import DPOTrainer

    class StudioDPOTrainer(DPOTrainer):
        """DPOTrainer on pairs the studio already rendered and tokenized (its own tokenizing is skipped)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return StudioDPOTrainer


def orpo_trainer_class():
    from trl.experimental.orpo import ORPOTrainer

    class StudioORPOTrainer(ORPOTrainer):
        """ORPOTrainer on pairs the studio already rendered and tokenized (prompt labels are -100)."""

        def tokenize_row(self, feature, model=None) -> dict:
            if "prompt_ids" not in feature:
                return super().tokenize_row(feature, model)
            prompt = list(feature["prompt_ids"])
            batch = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for side in ("chosen", "rejected"):
                answer = list(feature[f"{side}_ids"])
                batch[f"{side}_input_ids"] = prompt + answer
                batch[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
                batch[f"{side}_labels"] = [-100] * len(prompt) + answer
            return batch

    return StudioORPOTrainer


def make_trainer(spec: RunSpec, model, tokenizer, args_for: Callable[[bool], dict], callbacks: list):
    """(prepared, eval dataset or None, trainer) for method dpo or orpo. `args_for(has_eval)` gives the
    worker's training arguments (`worker.base_args`), the ones the SFT recipe uses."""
    from trl import DPOConfig
    from trl.experimental.orpo import ORPOConfig

    prepared, train_ds, eval_ds = load_pairs(spec, tokenizer)
    common = _common(args_for(eval_ds is not None))
    if spec.train.method == "dpo":
        args = DPOConfig(**common, beta=spec.train.beta, precompute_ref_log_probs=False)
        trainer = dpo_trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                      processing_class=tokenizer, callbacks=callbacks)
        if not spec.from_adapter:
            drop_reference_copy(trainer.model)
    elif spec.train.method == "orpo":
        common.pop("include_num_input_tokens_seen")  # ORPO's batches carry no plain input_ids to count
        args = ORPOConfig(**common, beta=spec.train.orpo_lambda)
        trainer = orpo_trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                       processing_class=tokenizer, callbacks=callbacks)
    else:
        raise RunError(f"Method {spec.train.method!r} is not a preference method.", "Use dpo or orpo.")
    no_dropout(trainer.model)
    return prepared, eval_ds, trainer


def drop_reference_copy(model) -> None:
    """A new adapter is all zeros, so the base with adapters disabled is exactly the reference: drop TRL's copy.

    TRL adds a frozen "ref" adapter (a copy of "default") whenever it is handed a PEFT model; with it gone,
    TRL computes the reference log-probs with the adapter disabled (`use_adapter(model, None)`).
    """
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
        model.set_adapter("default")


def no_dropout(model) -> None:
    """TRL turns nn.Dropout off for preference training; the CPU recipe's FastDropout too, so logps are exact."""
    from studio.jobs.cpu_speed import FastDropout

    for module in model.modules():
        if isinstance(module, FastDropout):
            module.p = 0.0
