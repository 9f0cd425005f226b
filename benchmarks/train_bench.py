"""`python -m benchmarks.train_bench [--quick] [--smoke] [--out FILE]`: the studio against plain HF + PEFT, in one run.

Training. Each side trains the same LoRA on the same prepared dataset for the same number of steps,
with the same batch, learning rate and seed, each in its own subprocess (so peak RSS is clean):
- studio: the real recipe, `studio.jobs.worker.train` on a run folder made by `jobs.manager.create`
  (TRL SFTTrainer, padding-free packing; on CUDA TRL's chunked LM-head loss and Liger kernels, on CPU
  the fast path of `studio.jobs.cpu_speed`);
- baseline: plain transformers `Trainer` + PEFT, rows padded to the longest in the batch
  (DataCollatorForSeq2Seq), SDPA attention, no packing, no fused kernels (+ bitsandbytes for 4-bit).
Both are timed by the same callback: real (non-padding) tokens per second and seconds per step over
the steps after the first (the first one pays one-off warm-up costs), peak memory, and the held-out
loss of the trained adapter computed by one function for both (so the loss comparison is exact).
Sides run interleaved (baseline, studio, baseline, studio, ...) so load on a shared machine hits both.

Inference (CPU workload): time to first token and decode tokens/s at batch 1 for the base, with an
adapter active, and merged (through `studio.inference.Engine`), adapter load and swap times, and a
packing check: one batch of rows scored padded and packed (padding-free) must give the same loss.
CPU fast path (`child_parts`): one packed row timed forward + backward with each change of the CPU
recipe added in turn, so each change's share of the speed-up is on record.

Workloads: on CPU the bundled model on the medical sample (or `--model REF`); on CUDA random-weight
models built from studio/shapes (TinyLlama-1.1B and Llama-3-8B shapes, 4-bit, seq 2048).
`--smoke` is a seconds-long pass for the unit test (use it with a tiny `--model`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from studio.config import LoraSpec, ModelSpec, RunSpec, TrainSpec
from studio.errors import StudioError

ROOT = Path(__file__).resolve().parents[1]
MEDICAL = ROOT / "assets" / "medical_demo.jsonl"
SHAPES = ROOT / "studio" / "shapes"
LOSS_TOLERANCE = 0.05  # nats: the studio's held-out loss may be at most this much above the baseline's
PACKING_TOLERANCE = 1e-3  # relative: padded and packed scoring of the same rows must agree this closely in fp32
PROMPT = [{"role": "user", "content": "What are the typical symptoms of type 2 diabetes, and why do they happen?"}]
CHILD_TIMEOUT_SEC = 3600  # one side of one workload; far above the slowest expected (8B shape, full mode)


class BenchError(StudioError):
    """A benchmark step failed."""


# ---------------------------------------------------------------- workloads


@dataclass
class Workload:
    """One model + data + settings, trained by each side in `variants` (side, precision)."""

    name: str
    model_ref: str  # "bundled", a folder, or "shape:<name>" (random weights built on first use)
    quant: str
    max_len: int
    lora: LoraSpec
    train: TrainSpec
    variants: list[tuple[str, str]]
    data: str = "medical"  # "medical" (the sample as is), "answers" (answer-heavy Alpaca rows) or "long" (chats)
    rows: int = 0  # rows of long chats to write (data="long")
    repeats: int = 1  # train every variant this many times, interleaved
    inference: bool = True
    new_tokens: int = 64  # tokens generated per inference measurement
    parts: int = 0  # rounds of timing the CPU fast path one change at a time (child_parts); 0: none


BASELINES = ("fp32", "bf16", "bf16-weights")  # plain HF: fp32; fp32 weights under bf16 autocast; bf16 weights


def cpu_workloads(model_ref: str, quick: bool, smoke: bool, cpu_bf16: bool, steps: int | None = None
                  ) -> list[Workload]:
    """The CPU preset's LoRA and batch on two data shapes: the medical sample, and answer-heavy Alpaca rows.

    Every plain baseline the CPU allows (fp32; bf16 autocast; frozen weights loaded in bf16, no autocast:
    what a user tries first) against the studio in the preset's precision (and fp32 in full mode).
    """
    from studio.presets import load_preset

    preset = load_preset("cpu")
    steps = steps or (2 if smoke else 6 if quick else 30)  # quick: 6 steps per side
    train = replace(preset.train, max_steps=steps, eval_steps=0, save_steps=10_000,  # no mid-run saves/evals
                    logging_steps=1, warmup_ratio=0.0 if smoke else preset.train.warmup_ratio)
    if smoke or not cpu_bf16:
        variants = [("baseline", "fp32"), ("baseline", "bf16-weights"), ("studio", "fp32")]
    else:
        variants = [("baseline", p) for p in BASELINES] + [("studio", "bf16")] + ([] if quick else [("studio", "fp32")])
    common = dict(model_ref=model_ref, quant=preset.quant, max_len=128 if smoke else preset.train.max_seq_len,
                  lora=preset.lora, train=train, variants=variants, repeats=1 if quick or smoke else 2,
                  new_tokens=4 if smoke else 64, parts=1 if quick or smoke else 2)
    medical = Workload(name="cpu-" + ("tiny" if smoke else "bundled"), **common)
    if smoke:
        return [medical]
    answers = Workload(name="cpu-bundled-answers", data="answers", rows=1000, inference=False, **common)
    return [medical, answers]


def cuda_workloads(quick: bool, steps: int | None = None) -> list[Workload]:
    """Random-weight TinyLlama-1.1B and Llama-3-8B shapes in 4-bit, packed to 2048 tokens, like the 16gb preset."""
    lora = LoraSpec(r=16, alpha=32, dropout=0.05, target_modules="all-linear")
    steps = steps or (6 if quick else 20)
    out = []
    for shape, micro_batch in (("tinyllama-1.1b", 4), ("llama-3-8b", 1)):
        train = TrainSpec(max_seq_len=2048, micro_batch=micro_batch, grad_accum=1, lr=2e-4, scheduler="constant",
                          warmup_ratio=0.0, max_steps=steps, gradient_checkpointing=True,
                          optimizer="paged_adamw_8bit", precision="bf16", packing=True, liger_kernel=True,
                          logging_steps=1,
                          eval_steps=0, save_steps=10_000)
        out.append(Workload(name=f"cuda-{shape}-4bit", model_ref=f"shape:{shape}", quant="4bit", max_len=2048,
                            lora=lora, train=train, variants=[("baseline", "bf16"), ("studio", "bf16")],
                            data="long", rows=micro_batch * steps * 3,  # rows to spare: packing needs fewer
                            inference=shape == "llama-3-8b", new_tokens=128))
    return out


# ---------------------------------------------------------------- data and models


def write_long_chats(path: Path, rows: int, seed: int = 0) -> Path:
    """Multi-turn chats of consecutive medical-sample Q/A pairs (4-14 turns: about 600-2000 tokens)."""
    pairs = [json.loads(line) for line in MEDICAL.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            start, turns = rng.randrange(len(pairs)), rng.randint(4, 14)
            messages = []
            for k in range(turns):
                pair = pairs[(start + k) % len(pairs)]
                messages += [{"role": "user", "content": pair["Question"]},
                             {"role": "assistant", "content": pair["Response"]}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def write_answer_heavy(path: Path, rows: int, seed: int = 0) -> Path:
    """Alpaca rows (instruction / input / output) whose output is most of the row, lengths spread like public
    instruction sets: the medical sample's question as the instruction, the reasoning and answer of 1-3
    consecutive sample pairs as the output (bundled tokenizer: mean about 230 tokens, p95 about 430,
    answers about 85% of the tokens).
    """
    pairs = [json.loads(line) for line in MEDICAL.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            start, count = rng.randrange(len(pairs)), rng.choice([1, 1, 1, 1, 2, 2, 3])
            chosen = [pairs[(start + k) % len(pairs)] for k in range(count)]
            output = "\n\n".join(f"{p['Complex_CoT']}\n\n{p['Response']}" for p in chosen)
            f.write(json.dumps({"instruction": chosen[0]["Question"], "input": "", "output": output}) + "\n")
    return path


def random_model(shape: str, out: Path, overrides: dict | None = None) -> Path:
    """A random-weight model of a studio/shapes config with the bundled tokenizer, saved to `out` in bf16.

    The vocabulary is raised to the tokenizer's where the shape's is smaller (TinyLlama: 32,000 ->
    49,152), so every token id of the prepared data exists.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from studio.models import load_tokenizer

    if (out / "config.json").is_file():
        return out
    tokenizer = load_tokenizer("bundled")
    config = json.loads((SHAPES / f"{shape}.json").read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if not k.startswith("_")} | (overrides or {})
    config["vocab_size"] = max(config["vocab_size"], len(tokenizer))
    config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    model_type = config.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    return out


def _model_ref(workload: Workload, workdir: Path) -> str:
    if workload.model_ref.startswith("shape:"):
        return str(random_model(workload.model_ref.split(":", 1)[1], workdir / "models" / workload.name))
    return workload.model_ref


def _prepare(workload: Workload, model_ref: str, workdir: Path) -> str:
    from studio.data.store import prepare

    source = {"medical": lambda: MEDICAL,
              "answers": lambda: write_answer_heavy(workdir / f"{workload.name}.jsonl", workload.rows),
              "long": lambda: write_long_chats(workdir / f"{workload.name}.jsonl", workload.rows)}[workload.data]()
    name = f"bench-{workload.name}"
    prepare(source, model_ref, name, max_len=workload.max_len, eval_split=0.1, overwrite=True)
    return name


# ---------------------------------------------------------------- children: one side, one process


class StepTimer:
    """A TrainerCallback's worth of timing: the wall time and real tokens seen at the end of each step."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []  # (time, tokens seen) at train begin and each step end
        self.losses: list[float] = []

    def begin(self, state) -> None:
        self.marks = [(time.perf_counter(), state.num_input_tokens_seen)]

    def step(self, state) -> None:
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    def log(self, logs: dict | None) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def summary(self) -> dict:
        """Steady state: from the end of step 1 to the end of the last step (all steps if there is one)."""
        first = self.marks[1] if len(self.marks) > 2 else self.marks[0]
        last = self.marks[-1]
        steps = len(self.marks) - 1 - (1 if len(self.marks) > 2 else 0)
        seconds = last[0] - first[0]
        tokens = last[1] - first[1]
        return {"steps": len(self.marks) - 1, "timed_steps": steps, "tokens": int(tokens),
                "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
                "s_per_step": round(seconds / steps, 3) if steps else None,
                "first_step_s": round(self.marks[1][0] - self.marks[0][0], 2) if len(self.marks) > 1 else None,
                "train_loss_last": round(self.losses[-1], 4) if self.losses else None}


def timer_callback(timer: StepTimer, base=None):
    """A TrainerCallback feeding `timer`; with `base` (an instance), a subclass of its class doing both."""
    from transformers import TrainerCallback

    parent = type(base) if base is not None else TrainerCallback

    class Timed(parent):
        def on_train_begin(self, args, state, control, **kwargs):
            timer.begin(state)
            return super().on_train_begin(args, state, control, **kwargs)

        def on_step_end(self, args, state, control, **kwargs):
            timer.step(state)
            return super().on_step_end(args, state, control, **kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            timer.log(logs)
            return super().on_log(args, state, control, logs=logs, **kwargs)

    if base is None:
        return Timed()
    base.__class__ = Timed  # keep the studio callback's state and behaviour, add the timing
    return base


def _peak_memory() -> dict:
    import torch

    # VmHWM is this process's own peak; ru_maxrss would carry the parent's across exec (Linux).
    with open("/proc/self/status") as status:
        hwm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    peak = {"peak_rss_mb": round(hwm_kib / 1024, 1)}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        peak["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return peak


def child_studio(job: dict) -> dict:
    """The studio's own recipe on a run folder, timed through its own callback."""
    from studio.jobs import worker

    timer = StepTimer()
    make_callback = worker.make_callback
    worker.make_callback = lambda *a, **k: timer_callback(timer, make_callback(*a, **k))
    run_dir = Path(job["run_dir"])
    state = worker.train(run_dir)
    if state != "completed":
        raise BenchError(f"The studio run ended {state}.", f"See {run_dir / 'worker.log'}.")
    return {**timer.summary(), **_peak_memory(), "adapter": str(run_dir / "adapter")}


def child_baseline(job: dict) -> dict:
    """Plain transformers Trainer + PEFT: padding to the longest row in the batch, no packing, no fusing."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from studio.config import load_yaml
    from studio.data.store import load_prepared
    from studio.models import resolve

    spec = load_yaml(RunSpec, Path(job["run_dir"]) / "spec.yaml")
    t, cuda = spec.train, torch.cuda.is_available()
    path = resolve(spec.model.ref)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    quant = None
    if spec.model.quant == "4bit":
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.model.quant, torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if quant is None else torch.bfloat16,
                                                 quantization_config=quant, attn_implementation="sdpa",
                                                 device_map={"": "cuda"} if cuda else None)
    model.config.use_cache = False
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha,
                                             lora_dropout=spec.lora.dropout, target_modules=spec.lora.modules(),
                                             task_type="CAUSAL_LM"))
    train = load_prepared(spec.dataset).train.map(_labelled, remove_columns=["assistant_masks"])
    train = train.select_columns(["input_ids", "attention_mask", "labels"])
    optimizer = t.optimizer if cuda or t.optimizer in ("adamw_torch", "sgd") else "adamw_torch"
    args = TrainingArguments(
        output_dir=str(Path(job["run_dir"]) / "baseline"), per_device_train_batch_size=t.micro_batch,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio, max_steps=t.max_steps, gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, optim=optimizer, bf16=t.precision == "bf16",
        logging_steps=1, save_strategy="no", report_to=[], seed=t.seed, disable_tqdm=True,
        include_num_input_tokens_seen="non_padding", remove_unused_columns=False, use_cpu=not cuda,
        dataloader_num_workers=0)
    timer = StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[timer_callback(timer)],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100))
    trainer.train()
    result = {**timer.summary(), **_peak_memory()}
    adapter = Path(job["run_dir"]) / "baseline-adapter"
    model.save_pretrained(adapter)
    return {**result, "adapter": str(adapter)}


def _labelled(row: dict) -> dict:
    """input_ids -> labels with the prompt tokens (assistant mask 0) ignored, as the studio trains."""
    return {"labels": [t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True)],
            "attention_mask": [1] * len(row["input_ids"])}


def child_heldout(job: dict) -> dict:
    """Held-out loss of each adapter, one row at a time (no padding, no packing): one function for every side."""
    import torch
    from peft import PeftModel

    from studio.data.store import load_prepared
    from studio.models import load_model

    rows = load_prepared(job["dataset"]).eval
    loaded = load_model(job["model_ref"], job["quant"])
    model, losses = loaded.model, {}
    for i, (key, adapter) in enumerate(job["adapters"].items()):
        peft = PeftModel.from_pretrained(model, adapter, adapter_name=f"heldout_{i}", is_trainable=False).eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for row in rows:
                ids = torch.tensor([row["input_ids"]], device=loaded.device)
                labels = torch.tensor([_labelled(row)["labels"]], device=loaded.device)
                n = int((labels[:, 1:] != -100).sum())
                if n:
                    total += float(peft(input_ids=ids, labels=labels).loss) * n
                    count += n
        losses[key] = round(total / count, 4) if count else None
        model = peft.unload()
    return {"heldout_loss": losses}


def child_inference(job: dict) -> dict:
    """TTFT and decode speed for base, adapter and merged; adapter load and swap; the packing check."""
    from studio.inference import Engine, GenerationSettings

    settings = GenerationSettings(max_new_tokens=job["new_tokens"], repetition_penalty=1.0)
    engine = Engine(job["model_ref"], job["quant"])
    adapters = job["adapters"]
    load_ms = {name: round(engine.load_adapter(name, path), 1) for name, path in adapters.items()}
    first = next(iter(adapters))
    _generate(engine, settings, None)  # warm-up: one-off kernel and allocator set-up is not decode speed
    result = {"base": _generate(engine, settings, None), "adapter": _generate(engine, settings, first)}
    swaps = []
    for _ in range(10):  # swap back and forth between the two trained adapters
        for name in adapters:
            with engine.use(name):
                swaps.append(engine.swap_ms[-1])
    result |= {"adapter_load_ms": load_ms, "swap_ms_mean": round(sum(swaps) / len(swaps), 3),
               "fold_ms_mean": engine.stats()["mean_fold_ms"],  # merging the active adapter in (Engine._fold)
               "packing_check": packing_check(engine, job["dataset"])}
    merged = merge(job["model_ref"], job["quant"], adapters[first], Path(job["workdir"]) / "merged")
    del engine
    merged_engine = Engine(str(merged), job["quant"] if job["quant"] not in ("4bit", "8bit") else "bf16")
    _generate(merged_engine, settings, None)
    result["merged"] = _generate(merged_engine, settings, None)
    return result


# Cumulative: each change of the CPU recipe (studio/jobs/cpu_speed.py, worker.CpuSFTTrainer) added to the row above;
# the last row is built and tested but off in the recipe (CpuSFTTrainer.fused_loss) until it measures faster.
PARTS = ["as the preset is written: recompute, every logit, nn.Dropout, masked SDPA",
         "+ no recompute (presets.cpu_pass)", "+ logits only where a label is", "+ attention per packed sequence",
         "+ 16-bit dropout masks", "+ one dropout mask per shared input (q/k/v, gate/up)",
         "+ frozen weights stored in bf16", "+ LoRA inputs kept in bf16 (the recipe)",
         "+ LM head in chunks over trained positions (off in the recipe)"]
BF16_ONLY = (6, 7)  # these levels only matter under bf16 autocast


def child_parts(job: dict) -> dict:
    """Forward + backward of one packed row of the data under each change; the best of `repeats` rounds."""
    bf16 = job["precision"] == "bf16"
    row = _packed_row(job["dataset"], job["max_len"])
    levels = [level for level in range(len(PARTS)) if bf16 or level not in BF16_ONLY]
    best: dict[int, float] = {}
    for _ in range(job["repeats"]):  # rounds through every level, so a busy moment hits all of them alike
        for level in levels:
            model = _parts_model(job, level, bf16)
            best[level] = min(best.get(level, float("inf")), _time_passes(model, row, level, bf16, job["passes"]))
            del model
    tokens = int(row["input_ids"].shape[1])
    return {"precision": job["precision"], "tokens": tokens, "sequences": len(row["cu_seq_lens_q"]) - 1,
            "rows": [{"change": PARTS[level], "s_per_pass": round(best[level], 3),
                      "tokens_per_s": round(tokens / best[level], 1)} for level in levels]}


def _packed_row(dataset: str, max_len: int) -> dict:
    """The first training rows packed into one row, by TRL's own padding-free collator."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from studio.data.store import load_prepared

    rows, total = [], 0
    for row in load_prepared(dataset).train:
        if total + len(row["input_ids"]) > max_len:
            break
        rows.append({"input_ids": row["input_ids"], "assistant_masks": row["assistant_masks"]})
        total += len(row["input_ids"])
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)


def _parts_model(job: dict, level: int, bf16: bool):
    from peft import LoraConfig, get_peft_model

    from studio.jobs import cpu_speed
    from studio.models import load_model

    model = load_model(job["model_ref"], job["quant"]).model
    model.config.use_cache = False
    if level == 0:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = job["lora"]
    model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                             target_modules=LoraSpec(**lora).modules(), task_type="CAUSAL_LM"))
    if level >= 3:
        cpu_speed.use_packed_attention(model)
    if level >= 4:
        cpu_speed.use_fast_dropout(model, share=level >= 5)
    if level >= 6 and bf16:
        cpu_speed.store_frozen_in_bf16(model)
    if level >= 7 and bf16:
        cpu_speed.keep_lora_inputs(model)
    return model.train()


def _time_passes(model, row: dict, level: int, bf16: bool, passes: int) -> float:
    """Seconds per forward + backward pass (the fastest of `passes`, after one warm-up pass)."""
    import torch

    from studio.jobs.cpu_speed import fused_lm_loss, lm_parts
    from studio.jobs.worker import score_labelled_only

    row_inputs = {k: row[k] for k in ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                                      "max_length_q", "max_length_k")}
    inputs = {**row_inputs, "labels": row["labels"]}
    if level >= 2:  # as worker.CpuSFTTrainer.compute_loss does it
        inputs = score_labelled_only(inputs)
    times = []
    for _ in range(passes + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if level >= 8:  # as CpuSFTTrainer.compute_loss would with fused_loss on, where its probe holds
                loss = fused_lm_loss(lm_parts(model), {**row_inputs, "labels": row["labels"]})
            else:
                loss = model(**inputs, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def _generate(engine, settings, adapter: str | None) -> dict:
    """One streamed answer at batch 1: time to first token, then decode tokens/s over the rest."""
    stats: dict = {}
    start = time.perf_counter()
    first = None
    for _ in engine.answer(PROMPT, settings, adapter=adapter, stats=stats):
        first = first or time.perf_counter()
    end = time.perf_counter()
    first = first or end
    tokens = stats.get("tokens", 0)
    decode = (tokens - 1) / (end - first) if tokens > 1 and end > first else None
    return {"ttft_ms": round((first - start) * 1000, 1), "decode_tok_s": round(decode, 2) if decode else None,
            "tokens": tokens}


def merge(model_ref: str, quant: str, adapter: str, out: Path) -> Path:
    """The adapter folded into a 16/32-bit copy of the base, saved like an export."""
    from peft import PeftModel

    from studio.models import load_model

    loaded = load_model(model_ref, "bf16" if quant in ("4bit", "8bit") else quant)
    model = PeftModel.from_pretrained(loaded.model, adapter).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out)
    return out


def packing_check(engine, dataset: str, rows: int = 4) -> dict:
    """Score the same rows padded (one row each, with a mask) and packed into one padding-free sequence
    with TRL's collator: the summed loss must agree, or packed rows attend across their boundaries."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from studio.data.store import load_prepared

    data = load_prepared(dataset).train.select(range(rows))
    examples = [{"input_ids": r["input_ids"], "labels": _labelled(r)["labels"]} for r in data]
    pad = engine.tokenizer.pad_token_id
    with engine.use(None) as model, torch.inference_mode():
        padded = DataCollatorForLanguageModeling(pad_token_id=pad)(examples)
        packed = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)(examples)
        nll_padded = _summed_nll(model, padded)
        nll_packed = _summed_nll(model, packed)
    diff = abs(nll_padded - nll_packed) / max(abs(nll_padded), 1e-9)
    return {"rows": rows, "padded_nll": round(nll_padded, 4), "packed_nll": round(nll_packed, 4),
            "relative_diff": float(f"{diff:.2e}"), "ok": diff <= PACKING_TOLERANCE}


def _summed_nll(model, batch: dict) -> float:
    """Summed next-token NLL over the labelled tokens of a collated batch (padded or padding-free)."""
    import torch

    inputs = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits.float()  # as in training: a KV cache turns off packed masks
    labels = batch["labels"].to(model.device)  # padding-free: the collator ignores each row's first token
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                   ignore_index=-100, reduction="sum"))


CHILDREN = {"studio": child_studio, "baseline": child_baseline, "heldout": child_heldout,
            "inference": child_inference, "parts": child_parts}


def child_main(job_file: str) -> int:
    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])
    result = CHILDREN[job["kind"]](job)
    Path(job["result"]).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


# ---------------------------------------------------------------- the parent: run, collect, report


def run_child(kind: str, job: dict, workdir: Path, label: str, threads: int | None = None) -> dict:
    """Run one measurement in a fresh Python process; its JSON result, or a BenchError with its log."""
    job_file = workdir / f"{label}.job.json"
    result_file = workdir / f"{label}.result.json"
    log_file = workdir / f"{label}.log"
    job_file.write_text(json.dumps({**job, "kind": kind, "result": str(result_file), "threads": threads}),
                        encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.time()
    with open(log_file, "w", encoding="utf-8") as log:
        code = subprocess.run([sys.executable, "-m", "benchmarks.train_bench", "--child", str(job_file)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=CHILD_TIMEOUT_SEC).returncode
    if code != 0 or not result_file.is_file():
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise BenchError(f"The {label} measurement failed (exit {code}):\n{tail}", f"See the full log in {log_file}.")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    result["wall_s"] = round(time.time() - start, 1)
    print(f"[bench] {label}: {json.dumps(result)}", flush=True)
    return result


def run_workload(workload: Workload, workdir: Path, threads: int | None) -> dict:
    from studio.jobs import manager

    model_ref = _model_ref(workload, workdir)
    dataset = _prepare(workload, model_ref, workdir)
    runs: list[dict] = []
    for repeat in range(workload.repeats):
        for side, precision in workload.variants:
            label = f"{workload.name}-{side}-{precision}-{repeat}"
            quant, autocast = ("bf16", "fp32") if precision == "bf16-weights" else (workload.quant, precision)
            spec = RunSpec(name=label, dataset=dataset, model=ModelSpec(ref=model_ref, quant=quant),
                           lora=workload.lora, train=replace(workload.train, precision=autocast))
            run_dir = manager.create(spec)
            result = run_child(side, {"run_dir": str(run_dir)}, workdir, label, threads)
            runs.append({"side": side, "precision": precision, "repeat": repeat, **result})
    adapters = {f"{r['side']}-{r['precision']}-{r['repeat']}": r["adapter"] for r in runs}
    heldout = run_child("heldout", {"dataset": dataset, "model_ref": model_ref, "quant": workload.quant,
                                    "adapters": adapters}, workdir, f"{workload.name}-heldout", threads)["heldout_loss"]
    for r in runs:
        r["heldout_loss"] = heldout[f"{r['side']}-{r['precision']}-{r['repeat']}"]
    training = summarize(runs)
    out = {"workload": _describe(workload, model_ref), "runs": runs, "training": training,
           "against_best": against_best(training)}
    if workload.inference:
        pair = [next(v for v in workload.variants if v[0] == side) for side in ("baseline", "studio")]
        first = {f"{side}-{p}": adapters[f"{side}-{p}-0"] for side, p in pair}
        out["inference"] = _optional(lambda: run_child(
            "inference", {"model_ref": model_ref, "quant": workload.quant, "adapters": first, "dataset": dataset,
                          "workdir": str(workdir), "new_tokens": workload.new_tokens},
            workdir, f"{workload.name}-inference", threads))
    if workload.parts:
        precision = next(p for side, p in workload.variants if side == "studio")  # the preset's: bf16 if the CPU has it
        out["parts"] = _optional(lambda: run_child(
            "parts", {"model_ref": model_ref, "quant": workload.quant, "dataset": dataset, "max_len": workload.max_len,
                      "precision": precision, "lora": asdict(workload.lora), "repeats": workload.parts, "passes": 2},
            workdir, f"{workload.name}-parts", threads))
    return out


def _optional(measure) -> dict:
    """Inference and the per-change table: a failure there is reported, and the training table still kept."""
    try:
        return measure()
    except BenchError as exc:
        print(f"[bench] {exc.message.splitlines()[0]} (kept going; {exc.fix})", flush=True)
        return {"error": exc.message.splitlines()[0], "fix": exc.fix}


def _describe(workload: Workload, model_ref: str) -> dict:
    data = asdict(workload)
    data["model_path"] = model_ref
    return data


KEYS = ("tokens_per_s", "s_per_step", "peak_rss_mb", "cuda_max_allocated_mb", "cuda_max_reserved_mb",
        "heldout_loss", "train_loss_last")


def summarize(runs: list[dict]) -> list[dict]:
    """Per precision: the median of each side's repeats, the speed-up and the loss verdict."""
    rows = []
    for precision in dict.fromkeys(r["precision"] for r in runs):
        sides = {}
        for side in ("baseline", "studio"):
            mine = [r for r in runs if r["side"] == side and r["precision"] == precision]
            if mine:
                sides[side] = {key: _median([r.get(key) for r in mine]) for key in KEYS}
        row = {"precision": precision, **sides}
        if len(sides) == 2 and sides["baseline"]["tokens_per_s"] and sides["studio"]["tokens_per_s"]:
            row |= _verdict(sides["studio"], sides["baseline"])
        rows.append(row)
    return rows


def against_best(training: list[dict]) -> dict | None:
    """The studio in its fastest precision against the fastest plain baseline of any precision."""
    def best(side: str):
        rows = [r for r in training if r.get(side) and r[side]["tokens_per_s"]]
        return max(rows, key=lambda r: r[side]["tokens_per_s"], default=None)

    studio, baseline = best("studio"), best("baseline")
    if studio is None or baseline is None:
        return None
    return {"studio_precision": studio["precision"], "baseline_precision": baseline["precision"],
            "studio_tokens_per_s": studio["studio"]["tokens_per_s"],
            "baseline_tokens_per_s": baseline["baseline"]["tokens_per_s"],
            **_verdict(studio["studio"], baseline["baseline"])}


def _verdict(studio: dict, baseline: dict) -> dict:
    gap = studio["heldout_loss"] - baseline["heldout_loss"]
    return {"speedup": round(studio["tokens_per_s"] / baseline["tokens_per_s"], 2), "loss_gap": round(gap, 4),
            "loss_ok": gap <= LOSS_TOLERANCE}


def _median(values: list):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else round((values[mid - 1] + values[mid]) / 2, 4)


# ---------------------------------------------------------------- the report


def machine() -> dict:
    import peft
    import torch
    import transformers
    import trl

    from studio.models import hardware

    hw = hardware()
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "hardware": hw.summary(), "cpu": platform.processor()
            or platform.machine(), "cpu_bf16": hw.cpu_bf16, "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "trl": trl.__version__, "torch_threads": torch.get_num_threads()}


def table(results: dict) -> str:
    """Markdown tables of the training and inference results."""
    lines = ["| workload | precision | side | real tok/s | s/step | peak RSS MiB | CUDA peak alloc MiB | "
             "held-out loss | speed-up | loss within tolerance |", "|---|---|---|---|---|---|---|---|---|---|"]
    for w in results["workloads"]:
        for row in w["training"]:
            for side in ("baseline", "studio"):
                s = row.get(side)
                if not s:
                    continue
                extra = ([str(row.get("speedup", "")), f"{row.get('loss_ok')} (gap {row.get('loss_gap')})"]
                         if side == "studio" and "speedup" in row else ["", ""])
                lines.append(f"| {w['workload']['name']} | {row['precision']} | {side} | {s['tokens_per_s']} | "
                             f"{s['s_per_step']} | {s['peak_rss_mb']} | {s['cuda_max_allocated_mb'] or '-'} | "
                             f"{s['heldout_loss']} | " + " | ".join(extra) + " |")
    lines += ["", "| workload | studio (precision) tok/s | best plain baseline (precision) tok/s | speed-up | "
              "held-out loss gap | loss within tolerance |", "|---|---|---|---|---|---|"]
    for w in results["workloads"]:
        b = w.get("against_best")
        if b:
            lines.append(f"| {w['workload']['name']} | {b['studio_tokens_per_s']} ({b['studio_precision']}) | "
                         f"{b['baseline_tokens_per_s']} ({b['baseline_precision']}) | {b['speedup']}x | "
                         f"{b['loss_gap']} | {b['loss_ok']} |")
    lines += ["", "| workload | what | time to first token ms | decode tok/s |", "|---|---|---|---|"]
    for w in results["workloads"]:
        inf = w.get("inference")
        if not inf or "error" in inf:
            lines += [f"| {w['workload']['name']} | {inf['error']} ({inf['fix']}) | | |"] if inf else []
            continue
        for what in ("base", "adapter", "merged"):
            lines.append(f"| {w['workload']['name']} | {what} | {inf[what]['ttft_ms']} | {inf[what]['decode_tok_s']} |")
        lines.append(f"| {w['workload']['name']} | adapter load ms {inf['adapter_load_ms']}, swap "
                     f"{inf['swap_ms_mean']} ms, merge into the weights {inf.get('fold_ms_mean')} ms; "
                     f"packing check {inf['packing_check']} | | |")
    for w in results["workloads"]:
        parts = w.get("parts")
        if parts and "error" in parts:
            lines += ["", f"CPU fast path, one change at a time: {parts['error']} ({parts['fix']})"]
        elif parts:
            lines += ["", f"| CPU fast path, one change at a time ({parts['precision']}, one packed row of "
                      f"{parts['tokens']} tokens, {parts['sequences']} sequences) | s per pass | tok/s |",
                      "|---|---|---|"]
            lines += [f"| {r['change']} | {r['s_per_pass']} | {r['tokens_per_s']} |" for r in parts["rows"]]
    return "\n".join(lines)


def run(quick: bool, smoke: bool, out: Path, model_ref: str = "bundled", threads: int | None = None,
        cuda: bool | None = None, keep: bool = False, steps: int | None = None, only: list[str] | None = None,
        repeats: int | None = None) -> dict:
    """Run every workload that fits this machine, write `out` (JSON) and `out`.md, return the results."""
    import torch

    from studio.models import hardware

    cuda = torch.cuda.is_available() if cuda is None else cuda
    workdir = Path(tempfile.mkdtemp(prefix="studio-bench-"))
    saved_workspace = os.environ.get("STUDIO_WORKSPACE")
    os.environ["STUDIO_WORKSPACE"] = str(workdir / "workspace")  # runs and datasets stay out of the user's lists
    results: dict = {"command": " ".join(["python -m benchmarks.train_bench", *sys.argv[1:]]), "machine": machine(),
                     "loss_tolerance": LOSS_TOLERANCE, "threads": threads, "workloads": []}
    try:
        workloads = cpu_workloads(model_ref, quick, smoke, hardware().cpu_bf16, steps) if not cuda else []
        workloads = [w for w in workloads if not only or w.name in only]
        workloads += cuda_workloads(quick, steps) if cuda and not smoke else []
        for workload in workloads:
            workload = replace(workload, repeats=repeats) if repeats else workload
            results["workloads"].append(run_workload(workload, workdir, threads))
    finally:
        if saved_workspace is None:
            os.environ.pop("STUDIO_WORKSPACE", None)
        else:
            os.environ["STUDIO_WORKSPACE"] = saved_workspace
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    out.with_suffix(".md").write_text(table(results) + "\n", encoding="utf-8")
    return results


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps: under 10 minutes on 2 CPU cores")
    parser.add_argument("--smoke", action="store_true", help="2 steps, 4 tokens: checks the harness runs (tests)")
    parser.add_argument("--out", default="bench-results.json", help="JSON results; the tables go to the .md beside")
    parser.add_argument("--model", default="bundled", help="model for the CPU workload (default: bundled)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per side (default: by mode)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every child (default: torch's)")
    parser.add_argument("--cpu", dest="cuda", action="store_false", default=None,
                        help="run the CPU workload even where CUDA is available")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder (runs, logs)")
    parser.add_argument("--workload", action="append", default=None,
                        help="run only this workload (repeatable): cpu-bundled, cpu-bundled-answers, ...")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (default: by mode)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        return child_main(args.child)
    try:
        results = run(args.quick, args.smoke, Path(args.out), args.model, args.threads, args.cuda, args.keep,
                      args.steps, args.workload, args.repeats)
    except StudioError as exc:
        print(f"error: {exc.message}\nfix: {exc.fix}", file=sys.stderr)
        return 2
    print(table(results))
    print(f"\nwrote {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
