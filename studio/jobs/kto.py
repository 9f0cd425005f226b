"""The KTO recipe piece (method kto), built from TRL's stable `KTOTrainer` for the worker.

Data: a prepared KTO dataset (`studio.data.kto`): prompt messages, one answer, a good/bad label; TRL renders
them through the model's chat template. The reference is the base with the adapter disabled (TRL's frozen copy
of a fresh zero adapter is dropped, as for DPO); starting from an adapter, TRL keeps it as the frozen "ref".
`kto.desirable_weight` / `undesirable_weight` weigh the two kinds of answers (raise the rarer kind's weight).
Logs: TRL's rewards/margins (chosen = desirable) are the same reward-margin curve DPO draws, and `kl`.
"""

from __future__ import annotations

from collections.abc import Callable

from studio.config import RunSpec


def load_rows(spec: RunSpec, tokenizer):
    """(prepared meta holder, train, eval or None) of the run's KTO dataset; refuses other data and tokenizers."""
    from studio.data import kto
    from studio.data.preference import check_method
    from studio.data.store import Prepared, _folder, check_tokenizer
    from studio.util import read_json

    folder = _folder(spec.dataset)
    meta = read_json(folder / "meta.json", {})
    check_method(meta, "kto")
    check_tokenizer(meta, tokenizer)
    train, evaluation = kto.load_split(folder, "train"), kto.load_split(folder, "eval")
    return Prepared(train, evaluation, meta, folder), train, evaluation if evaluation is not None and len(evaluation) \
        else None


def make_trainer(spec: RunSpec, model, tokenizer, args_for: Callable[[bool], dict], callbacks: list):
    """(prepared, eval dataset or None, trainer) for method kto."""
    import dataclasses

    from trl import KTOConfig, KTOTrainer

    from studio.jobs.preference import drop_reference_copy, no_dropout

    prepared, train_ds, eval_ds = load_rows(spec, tokenizer)
    base = args_for(eval_ds is not None)
    known = {f.name for f in dataclasses.fields(KTOConfig)}
    args = KTOConfig(**{k: v for k, v in base.items() if k in known}, beta=spec.train.beta,
                     desirable_weight=spec.kto.desirable_weight, undesirable_weight=spec.kto.undesirable_weight,
                     disable_dropout=True)
    trainer = KTOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, callbacks=callbacks)
    if not spec.from_adapter:
        drop_reference_copy(trainer.model)
    no_dropout(trainer.model)
    return prepared, eval_ds, trainer
