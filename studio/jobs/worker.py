"""The one training recipe: `python -m studio.jobs.worker RUN_DIR`. The only code that trains.

Life cycle, in order: setup (read the spec, load data and model, attach LoRA), train (TRL's
SFTTrainer; a callback writes events.jsonl and status.json, and watches for a stop request),
save (the adapter, its model card), cleanup (final status, start the next queued run).
Run under `accelerate launch` the same code trains with DDP; only rank 0 writes to the run folder.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

from studio.config import RunSpec, load_yaml, to_dict
from studio.errors import RunError, StudioError
from studio.jobs import process
from studio.jobs.eta import EtaEstimator
from studio.jobs.events import (
    HEARTBEAT_SEC,
    STOP_FILE,
    Status,
    append_event,
    latest_checkpoint,
    resume_hint,
    rewind_events,
)
from studio.util import write_json_atomic

__all__ = ["HEARTBEAT_SEC", "STOP_FILE", "Status", "main", "train"]


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


# ---------------------------------------------------------------- setup


def load_data(spec: RunSpec, tokenizer):
    from studio.data.render import tokenizer_fingerprint
    from studio.data.store import load_prepared

    prepared = load_prepared(spec.dataset)
    if prepared.meta.get("tokenizer_fingerprint") != tokenizer_fingerprint(tokenizer):
        raise RunError(f"Dataset {spec.dataset!r} was prepared for another tokenizer "
                       f"({prepared.meta.get('model_ref')}), not for {spec.model.ref}.",
                       f"Prepare the data again with model {spec.model.ref} in the Data tab.")
    columns = ["input_ids", "assistant_masks"]
    train = trained_within(prepared.train.select_columns(columns), spec.train.max_seq_len, "training")
    evaluation = prepared.eval.select_columns(columns) if prepared.eval is not None and len(prepared.eval) else None
    if evaluation is not None:
        evaluation = trained_within(evaluation, spec.train.max_seq_len, "evaluation")
        evaluation = evaluation if len(evaluation) else None
    if not len(train):
        raise RunError(f"No training row of {spec.dataset!r} has an answer token within the run's max length "
                       f"({spec.train.max_seq_len}): every answer would be cut off.",
                       "Raise the max length in the Presets tab (or train.max_seq_len), or prepare shorter rows.")
    return prepared, train, evaluation


def trained_within(rows, max_len: int, split: str):
    """The rows with at least one trained token within `max_len`. The trainer cuts rows at the run's max
    length, which may be below the one the dataset was prepared with: a row whose answer lies wholly
    beyond it would train nothing (a step of such rows logs a loss of 0), so it is left out, and said."""
    kept = rows.filter(lambda row: any(row["assistant_masks"][:max_len]))
    if len(kept) < len(rows):
        print(f"[studio] {len(rows) - len(kept):,} of {len(rows):,} {split} rows left out: their answer starts "
              f"beyond the run's max length {max_len} (raise it to train on them)", flush=True)
    return kept


def build_model(spec: RunSpec, recompute: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from studio.models import load_model

    loaded = load_model(spec.model.ref, spec.model.quant, device=_device(),
                        trust_remote_code=spec.model.trust_remote_code)
    model = loaded.model
    model.config.use_cache = False  # the KV cache is useless in training and breaks checkpointing
    if spec.model.quant in ("4bit", "8bit"):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recompute,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    from studio import templates

    choice = templates.current(loaded.tokenizer)
    print(f"[studio] template: {choice.why()}", flush=True)
    if spec.from_adapter:  # continue training an existing adapter (e.g. DPO after SFT)
        from studio.jobs.preference import load_start_adapter

        return load_start_adapter(model, spec.from_adapter), loaded
    # Fallback markers (new rows) or a base model's unused turn tokens: train their embedding rows too.
    new_rows = [int(loaded.tokenizer.convert_tokens_to_ids(t)) for t in choice.trained_tokens]
    lora = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                      target_modules=spec.lora.modules(), task_type="CAUSAL_LM",
                      trainable_token_indices=new_rows or None)
    return get_peft_model(model, lora), loaded


def trainer_class():
    """TRL's SFTTrainer; on CPU with the plain causal-LM loss, computed only where a label is.

    TRL computes its loss through a chunked LM head that also yields per-token entropy and accuracy for
    its logs. That saves memory for big vocabularies on a GPU, but on a CPU it costs about as much as the
    model itself (docs/benchmarks.md), so there the loss is the model's own: cross-entropy over the same
    labels (the assistant tokens), normalised by the same token count. The LM head runs only at positions
    whose next token is a label: prompt tokens are read, never scored.
    """
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    if torch.cuda.is_available():
        return SFTTrainer

    class CpuSFTTrainer(SFTTrainer):
        # The chunked LM head (`cpu_speed.fused_lm_loss`): None decides on the first step (`_fused_loss_holds`).
        # Off in the recipe until a quiet-machine measurement shows it faster: the only one so far (load
        # 16-20 on 2 cores, docs/benchmarks.md) could not tell it from noise.
        fused_loss: bool | None = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False  # packed rows are kept apart only without a KV cache
            if inputs.get("labels") is not None and not return_outputs and self._use_fused(model, inputs):
                from studio.jobs.cpu_speed import fused_lm_loss, lm_parts

                with self.accelerator.autocast():  # the bypassed model forward carried the run's autocast
                    return fused_lm_loss(lm_parts(model), inputs, num_items_in_batch)
            if inputs.get("labels") is not None and _keeps_logits(self.accelerator.unwrap_model(model)):
                inputs = score_labelled_only(inputs)
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def _use_fused(self, model, inputs) -> bool:
            if self.fused_loss is None:
                name = "LM head in chunks over trained positions"
                with self.accelerator.autocast():
                    self.fused_loss = self.accelerator.num_processes == 1 and _try_change(
                        name, lambda m: _fused_loss_holds(m, inputs), model)
                if self.fused_loss:
                    print(f"[studio] CPU fast path: {name}", flush=True)
            return self.fused_loss

    return CpuSFTTrainer


LOGIT_SCALES = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _fused_loss_holds(model, inputs: dict) -> bool:
    """Whether `cpu_speed.fused_lm_loss` gives the model's own loss on a slice of this batch (raises if not).

    Models that scale or soft-cap their logits (Gemma 2/3, Cohere, Granite) give another loss: they keep the
    model's own loss through `score_labelled_only`, as does any head that is not a plain frozen Linear.
    """
    import torch

    from studio.jobs.cpu_speed import fused_lm_loss, lm_parts

    parts = lm_parts(model)
    if parts is None:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    scaled = [k for k in LOGIT_SCALES if getattr(base.config, k, None) not in (None, 1.0)]
    if scaled:  # a probe at random init may not see it: small logits pass a soft cap almost unchanged
        raise RuntimeError(f"the model changes its logits after the LM head ({', '.join(scaled)})")
    ids = inputs["input_ids"][:1, :32]
    probe = {"input_ids": ids, "labels": ids}
    with torch.no_grad():
        own = model(input_ids=ids, labels=ids, use_cache=False).loss
        fused = fused_lm_loss(parts, probe)
    if not torch.allclose(own.float(), fused.float(), rtol=1e-3, atol=1e-4):
        raise RuntimeError(f"the chunked loss {float(fused):.4f} differs from the model's own {float(own):.4f}")
    return True


def score_labelled_only(inputs: dict) -> dict:
    """For one (packed) row: the LM head only at positions whose next token is a label, same loss.

    Adds `logits_to_keep` and passes the kept targets as `shift_labels` (already aligned, no shift), so
    the model's own loss sums over exactly the tokens it would have scored. Batches of several rows
    are returned unchanged.
    """
    labels = inputs["labels"]
    if labels.shape[0] != 1:
        return inputs
    targets = labels[0, 1:]  # logits at position i predict the token at i + 1
    keep = (targets != -100).nonzero().flatten()
    return {**inputs, "logits_to_keep": keep, "labels": targets[keep][None], "shift_labels": targets[keep][None]}


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (the transformers causal LMs of recent years)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(base))


@functools.cache
def _forward_takes_logits_to_keep(model_class: type) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def pass_plan(spec: RunSpec, free_gb: float | None = None):
    """The TrainSpec the trainer runs: as written on CUDA; on CPU with packing, `presets.cpu_pass`.

    On CPU the packed rows of a step go through in passes of about 1,024 tokens (the rest is gradient
    accumulation), and gradient checkpointing is skipped when such a pass fits in three quarters of the
    free RAM (per process) without it: the same rule the Presets tab shows.
    """
    import psutil
    import torch

    t = spec.train
    if not t.packing or t.method != "sft" or torch.cuda.is_available():  # preference pairs are padded, not packed
        return t
    from studio.presets import cpu_pass, model_shape

    if free_gb is None:
        free_gb = psutil.virtual_memory().available / 1e9 * 0.75 / spec.num_processes
    return cpu_pass(model_shape(spec.model.ref), spec.model.quant, spec.lora, t, free_gb)


PLAN_FILE = "pass_plan.json"  # the pass plan of the run's first launch; every resume reuses it


def recorded_pass_plan(spec: RunSpec, run_dir: Path, free_gb: float | None = None):
    """`pass_plan` chosen once per run: the first launch records it in the run folder, resumes read it.

    Free RAM differs between a launch and its resume; a different plan would change the rows per pass and
    the recomputation halfway through a run (and the optimizer state saved in the checkpoint). The first
    rank to get here writes the file (an atomic link: never two plans), every rank then reads the same one.
    """
    import json

    from studio.config import TrainSpec, from_dict

    path = run_dir / PLAN_FILE
    if not path.is_file():
        plan = to_dict(pass_plan(spec, free_gb))
        tmp = run_dir / f".{PLAN_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(plan, indent=2), encoding="utf-8")
        try:
            os.link(tmp, path)  # fails when another rank (or an earlier launch) recorded one first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return from_dict(TrainSpec, json.loads(path.read_text(encoding="utf-8")))


def _sharded() -> str | None:
    """"FSDP" or "DeepSpeed" when `accelerate launch` was asked for one (it sets these before the worker starts)."""
    for name, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(variable, "").lower() in ("1", "true"):
            return name
    return None


def launch_note(spec: RunSpec, distributed_type: str) -> str:
    """What accelerate runs for the spec's config; on a machine without GPUs FSDP/DeepSpeed become plain DDP."""
    asked = _sharded()
    ran = {"MULTI_CPU": "DDP over gloo on the CPU", "MULTI_GPU": "DDP over NCCL", "NO": "one process",
           "FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}.get(distributed_type, distributed_type)
    note = f"accelerate config {Path(spec.accelerate_config).name}: {ran}"
    if asked and distributed_type in ("MULTI_CPU", "NO"):
        note += f" ({asked} shards only across GPUs; accelerate trains the same config unsharded here)"
    return note


def autocast_bf16(spec: RunSpec) -> bool:
    """bf16 autocast when the spec asks for it and the hardware has it (emulated bf16 is slower than fp32)."""
    import torch

    from studio.models import cpu_has_bf16

    return spec.train.precision == "bf16" and (torch.cuda.is_available() or cpu_has_bf16())


def speed_up_cpu(model, spec: RunSpec) -> list[str]:
    """Apply studio.jobs.cpu_speed to a CPU run; returns what was changed, for the log.

    Each change sits behind its own capability check: where a transformers or PEFT release renamed what it
    relies on (or it fails its probe), that one change is off, one line in the log says why, and the run
    trains on the general path.
    """
    from studio.jobs import cpu_speed

    changes = []
    if spec.train.packing and spec.train.method not in ("grpo", "kto"):  # their rows are padded, and GRPO samples
        changes.append(("attention per packed sequence", cpu_speed.use_packed_attention))
    changes.append(("16-bit dropout masks, one per shared input", cpu_speed.share_dropout_masks))
    if autocast_bf16(spec) and spec.train.method != "grpo":  # GRPO also generates, outside autocast
        changes.append(("frozen weights in bf16", cpu_speed.store_frozen_in_bf16))
        changes.append(("LoRA inputs kept in bf16", cpu_speed.keep_lora_inputs))
    return [name for name, change in changes if _try_change(name, change, model)]


def _try_change(name: str, change, model) -> bool:
    """Run one fast-path change; on any failure, log one line and report it as not applied."""
    try:
        return bool(change(model))
    except Exception as exc:  # noqa: BLE001 - a fast-path change must never stop a run
        print(f"[studio] CPU fast path: {name} off, the general path instead ({type(exc).__name__}: {exc})",
              flush=True)
        return False


def base_args(spec: RunSpec, run_dir: Path, has_eval: bool, foreground: bool, plan=None) -> dict:
    """The training arguments every recipe shares (SFT, DPO, ORPO): optimizer fallback, checkpoints, logging."""
    import torch

    from studio.jobs import trackers

    t = plan or spec.train
    cuda = torch.cuda.is_available()
    optimizer = t.optimizer
    if not cuda and optimizer in ("paged_adamw_8bit", "adamw_8bit", "adamw_torch_fused"):
        optimizer = "adamw_torch"  # paged / 8-bit optimizers need CUDA; plain AdamW is exact on CPU
    evaluate = has_eval and t.eval_steps > 0
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.micro_batch, per_device_eval_batch_size=t.micro_batch,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio, num_train_epochs=t.epochs, max_steps=t.max_steps,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, optim=optimizer,
        bf16=autocast_bf16(spec), fp16=t.precision == "fp16" and cuda,
        logging_steps=t.logging_steps, logging_first_step=True,
        eval_strategy="steps" if evaluate else "no", eval_steps=t.eval_steps if evaluate else None,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=3,  # keep the latest 3
        seed=t.seed, disable_tqdm=not foreground, max_length=t.max_seq_len,
        report_to=trackers.report_to(t.report_to, run_dir),  # tensorboard files in the run folder by default
        dataloader_num_workers=0, use_cpu=not cuda, ddp_find_unused_parameters=False, save_only_model=False,
    )


def training_args(spec: RunSpec, run_dir: Path, has_eval: bool, foreground: bool, plan=None):
    """SFTConfig for the spec; `plan` (from `pass_plan`) sets the rows per pass, accumulation and checkpointing."""
    from trl import SFTConfig

    t = plan or spec.train
    return SFTConfig(**base_args(spec, run_dir, has_eval, foreground, plan),
                     packing=t.packing, packing_strategy="bfd",
                     include_num_input_tokens_seen="all" if t.packing else "non_padding",
                     use_liger_kernel=use_liger(spec))


def use_liger(spec: RunSpec) -> bool:
    """Liger's Triton RMSNorm/SwiGLU/RoPE kernels: only when the recipe asks (`train.liger_kernel`), on CUDA,
    with the package installed; TRL keeps its chunked LM-head loss. Asked for but unusable: off, and said."""
    import importlib.util

    import torch

    if not spec.train.liger_kernel:
        return False
    if torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None:
        return True
    why = "no CUDA device" if not torch.cuda.is_available() else "the liger-kernel package is not installed"
    print(f"[studio] Liger kernels off ({why}); training without them.", flush=True)
    return False


# ---------------------------------------------------------------- the callback


def eta_fields(eta) -> dict:
    """status.json's time-left fields: the estimate and, while few steps are timed, its range."""
    if eta is None:
        return {}
    fields = {"eta_sec": round(eta.seconds, 1), "eta_low_sec": None, "eta_high_sec": None}
    if eta.uncertain:
        fields.update(eta_low_sec=round(eta.low, 1), eta_high_sec=round(eta.high, 1))
    return fields


def make_callback(run_dir: Path, status: Status, is_main: bool):
    import torch
    from transformers import TrainerCallback

    from studio.jobs.grpo import log_fields as grpo_log_fields
    from studio.jobs.preference import log_fields as preference_log_fields
    from studio.util import rss_mb

    class StudioCallback(TrainerCallback):
        """Writes events.jsonl and status.json, and turns a stop request into checkpoint + exit."""

        stop_agreed = False  # set when all ranks agreed to stop: every rank then leaves through the same door

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.step0, self.tokens0 = time.time(), state.global_step, state.num_input_tokens_seen
            self.eta = EtaEstimator(state.global_step, self.t0)  # from recent steps, not the run's average
            status.update(state="running", step=state.global_step, total_steps=state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            self.eta.step(state.global_step, time.time())
            status.update(step=state.global_step, **eta_fields(self.eta.estimate(state.max_steps)))
            if _stop_requested(run_dir, args.device):
                self.stop_agreed = True
                status.update(state="stopping", message="Saving a checkpoint, then stopping.")
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not is_main or not logs or ("loss" not in logs and "eval_loss" not in logs):
                return  # the end-of-training summary repeats what is already logged
            elapsed = max(time.time() - self.t0, 1e-6)
            tokens = logs.get("num_input_tokens_seen", state.num_input_tokens_seen) - self.tokens0
            memory = (torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else rss_mb()
            event = {"type": "log", "step": state.global_step, "epoch": round(state.epoch or 0, 4),
                     "loss": logs.get("loss"), "eval_loss": logs.get("eval_loss"),
                     "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                     "tokens_per_sec": round(tokens / elapsed, 1), "memory_mb": round(memory, 1),
                     "tokens": int(state.num_input_tokens_seen or 0) or None,  # the compare view's token axis
                     "eta_sec": eta_fields(self.eta.estimate(state.max_steps)).get("eta_sec")}
            event.update(preference_log_fields(logs))  # dpo / orpo / kto: reward margin and accuracy, train and eval
            event.update(grpo_log_fields(logs))  # grpo: mean reward, per reward function, KL, completion length
            append_event(run_dir, {k: v for k, v in event.items() if v is not None})
            status.update(step=state.global_step, total_steps=state.max_steps, tokens_per_sec=event["tokens_per_sec"])

        def on_evaluate(self, args, state, control, **kwargs):
            self.eta.pause(time.time())  # an evaluation is not a slow step

        def on_save(self, args, state, control, **kwargs):
            self.eta.pause(time.time())

    return StudioCallback()


def _stop_requested(run_dir: Path, device="cpu") -> bool:
    """True when the manager asked to stop; under DDP all ranks agree, so they stop on the same step.

    `device` is the run's device (the trainer's `args.device`): NCCL, the backend of every multi-GPU run,
    rejects CPU tensors, so the flag lives where the model does.
    """
    import torch.distributed as dist

    wanted = (run_dir / STOP_FILE).exists()
    if dist.is_available() and dist.is_initialized():
        wanted = bool(_max_over_ranks(wanted, device).item())
    return wanted


def _max_over_ranks(flag: bool, device):
    """A one-element tensor on `device` holding the largest `flag` of all ranks."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


# ---------------------------------------------------------------- save


def save_adapter(trainer, spec: RunSpec, run_dir: Path, prepared, metrics: dict, seconds: float) -> Path:
    out = run_dir / "adapter"
    if not _sharded():  # sharded runs saved the weights already, every rank taking part (save_sharded_weights)
        trainer.model.save_pretrained(out, safe_serialization=True, selected_adapters=["default"])  # not DPO's ref
    trainer.processing_class.save_pretrained(out)
    from studio import templates
    from studio.adapters import portable_base_name
    from studio.models import resolve

    templates.save(trainer.processing_class, out)  # chat_template.jinja + stop ids travel with the adapter
    base_name = portable_base_name(spec.model.ref)
    _set_base_name(out, base_name)
    card = {"run_id": run_dir.name, "base_model": base_name, "base_model_ref": spec.model.ref,
            "base_model_path": resolve(spec.model.ref), "template": templates.describe(trainer.processing_class),
            "quant": spec.model.quant, "dataset": spec.dataset,
            "dataset_sha256": prepared.meta.get("source_sha256"),
            # how the training conversations started: Chat and the API prompt the adapter the same way, from
            # here, whatever later happens to datasets/<name> (prepared again, deleted, or another one imported)
            "system_prompt": prepared.meta.get("system_prompt") or {"mode": "keep", "text": ""},
            "lora": to_dict(spec.lora),
            "train": to_dict(spec.train), "metrics": metrics, "train_seconds": round(seconds, 1),
            "parent": {"run": spec.parent_run, "step": spec.parent_step} if spec.parent_run else None,
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json_atomic(out / "card.json", card)
    (out / "README.md").write_text(model_card(card), encoding="utf-8")
    return out


def _set_base_name(adapter_dir: Path, name: str) -> None:
    """base_model_name_or_path = a hub id or folder name, not this machine's absolute path."""
    import json

    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = name
    path.write_text(json.dumps(config, indent=2) + "\n")


def save_sharded_weights(trainer, run_dir: Path) -> None:
    """Under FSDP or ZeRO-3 each rank holds a shard: Trainer.save_model gathers the adapter on every rank
    (a collective: all ranks must call it) and rank 0 writes it. A no-op elsewhere."""
    if _sharded():
        trainer.save_model(str(run_dir / "adapter"))
        if _rank() == 0:
            (run_dir / "adapter" / "training_args.bin").unlink(missing_ok=True)  # a pickle: adapters hold safetensors


def _parent_line(parent: dict | None) -> str:
    """A branched run's card names the run and checkpoint step it started from."""
    return f"\nBranched from run `{parent['run']}` at its checkpoint of step {parent['step']}.\n" if parent else ""


def model_card(card: dict) -> str:
    metrics = "\n".join(f"| {k} | {v} |" for k, v in card["metrics"].items())
    return f"""---
library_name: peft
base_model: {card['base_model']}
tags: [lora, tuning-studio]
---
# LoRA adapter `{card['run_id']}`

Trained with Tuning Studio on dataset `{card['dataset']}` (source sha256 `{card['dataset_sha256']}`).
{_parent_line(card.get('parent'))}
- Base model: `{card['base_model']}` held in {card['quant']}
- LoRA: r={card['lora']['r']}, alpha={card['lora']['alpha']}, dropout={card['lora']['dropout']},
  targets {card['lora']['target_modules']}
- Training: {card['train']}
- Time: {card['train_seconds']} s, finished {card['created']}

| metric | value |
|---|---|
{metrics}

Load it with `PeftModel.from_pretrained(base, "<this folder>")`.
"""


# ---------------------------------------------------------------- the recipe


def train(run_dir: Path, foreground: bool = False, status: Status | None = None) -> str:
    """Run the recipe in this process; returns the final state (completed / stopped).

    `status` is the run's one status writer (made here when the caller brings none): its heartbeat runs
    from setup to the final state, which `Status.finish` writes after stopping the heartbeat.
    """
    is_main = _rank() == 0
    print(f"[studio] rank {_rank()} of {os.environ.get('WORLD_SIZE', '1')} processes on {_device()}", flush=True)
    status = status or Status(run_dir, enabled=is_main)
    spec = load_yaml(RunSpec, run_dir / "spec.yaml")
    status.update(state="running", **process.identity(os.getpid()), started=status.data.get("started") or time.time(),
                  message="Loading the model and data...", finished=None)
    status.start_heartbeat()
    start = time.time()
    if latest_checkpoint(run_dir) is not None:  # a resume trains on the rows the run started with, or not at all
        from studio.data.store import check_unchanged

        check_unchanged(spec.dataset, spec.dataset_sha256, run_dir.name)
    trainer, prepared, eval_ds, callback = setup(spec, run_dir, status, foreground, is_main)
    result = run_steps(trainer, run_dir, status, is_main)
    if callback.stop_agreed and not _finished(trainer):  # decided once, by all ranks together, inside the loop
        return _end_stopped(trainer, run_dir, status, is_main)
    # every step is done: a Stop that lands now lets the final evaluation and save finish
    (run_dir / STOP_FILE).unlink(missing_ok=True)
    status.update(phase="saving", message="All steps done: evaluating and saving the adapter...")
    metrics = final_metrics(trainer, spec, result, eval_ds)
    save_sharded_weights(trainer, run_dir)
    if is_main:
        save_adapter(trainer, spec, run_dir, prepared, metrics, time.time() - start)
        (run_dir / STOP_FILE).unlink(missing_ok=True)  # a Stop pressed during the save changes nothing
        status.finish(state="completed", finished=time.time(), step=trainer.state.global_step, phase=None,
                      metrics=metrics, message=f"Done: the adapter run:{run_dir.name} is ready in the Chat tab.")
    return "completed"


def setup(spec: RunSpec, run_dir: Path, status: Status, foreground: bool, is_main: bool):
    """(trainer, prepared dataset, eval dataset or None, callback): the model with LoRA, the data, the trainer."""
    plan = recorded_pass_plan(spec, run_dir)
    if spec.train.method == "grpo":  # a bad reward (pattern, schema, reward file) fails before the model loads
        from studio import rewards

        rewards.check(spec.grpo.rewards, run_code=True)
    model, loaded = build_model(spec, plan.gradient_checkpointing)
    if _device() == "cpu":
        changes = speed_up_cpu(model, spec)
        if plan.micro_batch != spec.train.micro_batch:
            changes.append(f"{plan.micro_batch} packed row(s) per pass, {plan.grad_accum} passes per step")
        if plan.gradient_checkpointing != spec.train.gradient_checkpointing:
            changes.append("no gradient checkpointing (a pass fits in free RAM without it)")
        print(f"[studio] CPU fast path: {', '.join(changes) or 'nothing applies'}", flush=True)
    callback = make_callback(run_dir, status, is_main)
    if spec.train.method != "sft":  # dpo / orpo / kto / grpo: TRL's trainers (jobs/preference.py, kto.py, grpo.py)
        def args_for(has_eval: bool) -> dict:
            return base_args(spec, run_dir, has_eval, foreground, plan)

        prepared, eval_ds, trainer = method_trainer(spec, model, loaded.tokenizer, args_for, [callback], run_dir)
    else:
        prepared, train_ds, eval_ds = load_data(spec, loaded.tokenizer)
        args = training_args(spec, run_dir, eval_ds is not None, foreground, plan)
        trainer = trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                  processing_class=loaded.tokenizer, callbacks=[callback])
    if spec.accelerate_config:
        print(f"[studio] {launch_note(spec, trainer.accelerator.distributed_type.name)}", flush=True)
    return trainer, prepared, eval_ds, callback


def method_trainer(spec: RunSpec, model, tokenizer, args_for, callbacks: list, run_dir: Path):
    """(prepared, eval dataset or None, trainer) of a method other than SFT."""
    if spec.train.method == "grpo":
        from studio.jobs import grpo

        return grpo.make_trainer(spec, model, tokenizer, args_for, callbacks, run_dir)
    if spec.train.method == "kto":
        from studio.jobs import kto

        return kto.make_trainer(spec, model, tokenizer, args_for, callbacks)
    from studio.jobs.preference import make_trainer

    return make_trainer(spec, model, tokenizer, args_for, callbacks)


def run_steps(trainer, run_dir: Path, status: Status, is_main: bool):
    """trainer.train from the latest checkpoint (its later events rewound), or the last checkpoint restored."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None and is_main:
        step = int(checkpoint.name.split("-")[-1])
        rewind_events(run_dir, step)
        append_event(run_dir, {"type": "resume", "step": step})
    status.update(message=f"Training (resumed from {checkpoint.name})." if checkpoint else "Training.")
    if checkpoint is not None and _all_steps_done(checkpoint):  # resume never trains past max_steps
        return _restore_finished(trainer, checkpoint)
    return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)


def _finished(trainer) -> bool:
    return trainer.state.max_steps > 0 and trainer.state.global_step >= trainer.state.max_steps


def _end_stopped(trainer, run_dir: Path, status: Status, is_main: bool) -> str:
    """The run stopped on request before its last step: its checkpoint is saved, Resume continues from it."""
    if is_main:
        (run_dir / STOP_FILE).unlink(missing_ok=True)
        append_event(run_dir, {"type": "stop", "step": trainer.state.global_step})
        status.finish(state="stopped", finished=time.time(), message=f"Stopped at step "
                      f"{trainer.state.global_step}. {resume_hint(run_dir.name, latest_checkpoint(run_dir))}")
    return "stopped"


def final_metrics(trainer, spec: RunSpec, result, eval_ds) -> dict:
    """Train loss and steps; the eval loss (evaluated once more only when the last step was no eval step);
    for dpo / orpo the reward margin and accuracy."""
    metrics = {"train_loss": round(result.training_loss, 4), "steps": trainer.state.global_step}
    if eval_ds is not None:
        step = trainer.state.global_step
        done = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == step]
        metrics["eval_loss"] = round(done[-1] if done else trainer.evaluate()["eval_loss"], 4)
    if spec.train.method == "grpo":
        from studio.jobs.grpo import final_metrics as grpo_metrics

        metrics.update(grpo_metrics(trainer))  # the last mean reward, KL and completion length
    elif spec.train.method != "sft":
        from studio.jobs.preference import final_metrics as preference_metrics

        metrics.update(preference_metrics(trainer))  # reward margin and accuracy (train, eval)
    return metrics


def _all_steps_done(checkpoint: Path) -> bool:
    """Whether a checkpoint was saved at the run's last step (a Stop or kill landed during the final save)."""
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    return state.max_steps > 0 and state.global_step >= state.max_steps


def _restore_finished(trainer, checkpoint: Path):
    """Load the last checkpoint's adapter and state instead of training a step past max_steps."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    set_peft_model_state_dict(trainer.model, load_file(str(checkpoint / "adapter_model.safetensors")))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"[studio] {checkpoint.name} is the last step: saving its adapter, training nothing more", flush=True)
    return TrainOutput(trainer.state.global_step, sum(losses) / max(len(losses), 1), {})


def explain_failure(exc: BaseException, spec: RunSpec | None = None) -> tuple[str, str]:
    """(message, fix) a person can act on."""
    import torch

    if isinstance(exc, StudioError):
        return exc.message, exc.fix
    if isinstance(exc, torch.cuda.OutOfMemoryError) or isinstance(exc, MemoryError):
        return "Out of memory.", oom_advice(spec)
    disk_full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)) or any(
        text in str(exc) for text in ("No space left", "File too large", "os error 28", "os error 27"))
    if disk_full:  # (the tokenizers and safetensors writers raise plain Exceptions with the OS message)
        return ("The disk is full: a checkpoint could not be written. Earlier checkpoints are intact.",
                "Free disk space (delete old runs or exports), then press Resume.")
    return f"The worker crashed: {type(exc).__name__}: {exc}", "See the log below; fix the cause, then press Resume."


def oom_advice(spec: RunSpec | None) -> str:
    """Name the preset that fits this machine's memory, from the same estimator the Presets tab uses."""
    generic = "Lower max_seq_len, micro_batch or LoRA rank, or use 4bit."
    if spec is None:
        return generic
    try:
        from studio.models import hardware
        from studio.presets import model_shape, recommend

        hw = hardware()
        device, memory = ("cuda", hw.cuda_devices[0]["total_gb"]) if hw.cuda_devices else ("cpu", hw.ram_total_gb)
        advice = recommend(model_shape(spec.model.ref), memory, device, spec.train.method)
    except Exception:  # noqa: BLE001 - advice is best effort; the generic hint still helps
        return generic
    if advice.preset:
        return f"The {advice.preset!r} preset fits {memory:.0f} GB here: pick it in the Presets tab. {generic}"
    return advice.advice


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m studio.jobs.worker RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0]).resolve()
    # Library deprecation notices (e.g. transformers' gradient_checkpointing renames) are not the
    # user's to act on; they would bury the training log in the Train tab.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    status = Status(run_dir, enabled=_rank() == 0)  # the run's one status writer, failure included
    code = run_to_the_end(run_dir, status)
    if _rank() == 0:
        from studio.jobs import queue

        queue.schedule()  # one job at a time: start the next queued run, if any
    return code


def run_to_the_end(run_dir: Path, status: Status, foreground: bool = False) -> int:
    """train(), and any failure written as the final state (the heartbeat stopped first): 0 or 1."""
    try:
        train(run_dir, foreground=foreground, status=status)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must land in status.json
        traceback.print_exc()
        message, fix = explain_failure(exc, _spec_or_none(run_dir))
        status.finish(state="failed", finished=time.time(), message=message, fix=fix)
        return 1


def _spec_or_none(run_dir: Path) -> RunSpec | None:
    try:
        return load_yaml(RunSpec, run_dir / "spec.yaml")
    except StudioError:
        return None


if __name__ == "__main__":
    sys.exit(main())
