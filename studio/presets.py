"""Presets for a memory budget, and a memory estimate users can trust before they press Train.

- `list_presets`, `load_preset`, `save_preset`: the shipped presets (presets/*.yaml) plus the
  user's own (<workspace>/presets/*.yaml), which never overwrite a shipped one.
- `model_shape(ref)`: a model's config.json as a dict, from a shipped shape (studio/shapes/), a local
  folder, a cached hub id, or "bundled", so an 8B model can be sized without downloading it.
- `estimate_memory(config, quant, lora, train, device)`: a pure function from a config to a breakdown
  in GB (1e9 bytes) of peak training memory: weights, LoRA, grads, optimizer, activations, logits,
  overhead. Calibrated against measured peaks (docs/measurements.md, "Presets and memory").
- `recommend(config, memory_gb, device)`: the largest preset that fits, or what to change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from studio import paths
from studio.config import LoraSpec, Preset, TrainSpec, load_yaml, replace, save_yaml
from studio.errors import ConfigError, ModelError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DIR = ROOT / "presets"
SHAPES_DIR = Path(__file__).resolve().parent / "shapes"
GB = 1e9  # decimal gigabytes, as GPU vendors label cards; a "16 GB" card holds ~7% more than 16e9 bytes

# Pick-a-GPU list for the Presets tab and `estimate --gpu`: label -> (device, nominal memory in GB).
GPUS: dict[str, tuple[str, float]] = {
    "T4 16 GB": ("cuda", 16.0),
    "RTX 3060 12 GB": ("cuda", 12.0),
    "RTX 4090 24 GB": ("cuda", 24.0),
    "A100 40 GB": ("cuda", 40.0),
    "A100 80 GB": ("cuda", 80.0),
    "H100 80 GB": ("cuda", 80.0),
    "CPU 8 GB RAM": ("cpu", 8.0),
    "CPU 16 GB RAM": ("cpu", 16.0),
    "CPU 32 GB RAM": ("cpu", 32.0),
}

# ---------------------------------------------------------------- calibration constants
# Fitted to the measured peaks in the issue (H100, NF4 double quant, r16 all-linear, SDPA,
# non-reentrant checkpointing, paged 8-bit AdamW) and to CPU RSS growth of the bundled model;
# tests/unit/test_presets_estimate.py and tests/integration/test_memory_calibration.py hold them to it.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + an 8-bit absmax per 64 weights + fp32 per 256 absmax
INT8_BYTES = 1.0 + 0.002  # int8 codes + one fp32 scale per output row (~0.2% for 2k-wide rows)
LAYER_HIDDEN_COPIES = 12  # tensors of width `hidden` one recomputed layer keeps (norms, q/k/v, LoRA dropout, residual)
LAYER_INTER_COPIES = 2  # tensors of width `intermediate` it keeps (gate/up outputs; the rest are freed in place)
ATTN_SCORE_BYTES = 12  # fp32 q/k/v use the math SDPA kernel: scores + probs + their grad, 4 B each
LOSS_LOGIT_COPIES = 3  # while the loss runs: fp32 logits, log-softmax and its gradient live at once
CUDA_CONTEXT_GB = 0.5  # CUDA context + cuBLAS workspace, outside torch's allocator (nvidia-smi shows it)
ALLOCATOR_BASE_GB = 0.5  # caching-allocator slack (reserved minus allocated) that does not scale
ALLOCATOR_FRACTION = 0.1  # plus this share of the transient memory (activations, logits) as fragmentation
CPU_OVERHEAD_GB = 0.2  # glibc arenas and one-off buffers (PEFT wrappers, autograd graph) on CPU
DPO_LOGIT_TILE = 32768  # tokens per tile of TRL's fused LM head (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE)
CPU_SLACK_FRACTION = 0.45  # freed activations glibc keeps mapped: RSS settles ~45% above the live peak by step 4

OPTIMIZER_BYTES = {  # optimizer state per trainable parameter
    "paged_adamw_8bit": 2,  # two 8-bit moments (block scales are ~1%)
    "adamw_8bit": 2,
    "adamw_torch": 8,  # two fp32 moments
    "adamw_torch_fused": 8,
    "sgd": 0,  # no momentum (the Trainer's default for sgd)
}


@dataclass(frozen=True)
class Estimate:
    """Peak training memory in GB: `breakdown` stacks to `total` (what the device must hold)."""

    breakdown: dict[str, float]
    device: str
    params: dict[str, int] = field(default_factory=dict)  # counts: linear, embedding, lora, total

    @property
    def total(self) -> float:
        return self.breakdown["total"]

    @property
    def allocated(self) -> float:
        """What torch.cuda.max_memory_allocated would report (CPU: live tensors)."""
        return round(self.total - self.breakdown["overhead"], 3)

    @property
    def reserved(self) -> float:
        """What torch.cuda.max_memory_reserved would report: allocated plus allocator slack."""
        return self.total - (CUDA_CONTEXT_GB if self.device == "cuda" else 0.0)

    @property
    def after_load(self) -> float:
        """Weights plus LoRA parameters: memory held before the first step."""
        return self.breakdown["weights"] + self.breakdown["lora"]

    def fits(self, memory_gb: float) -> bool:
        return self.total <= memory_gb

    def table(self) -> str:
        return "\n".join(f"{key:12} {value:8.2f} GB" for key, value in self.breakdown.items())


@dataclass(frozen=True)
class Recommendation:
    preset: str | None  # the largest preset that fits, or None
    estimate: Estimate  # for that preset, or for the smallest preset when none fits
    advice: str


# ---------------------------------------------------------------- presets on disk


def user_dir() -> Path:
    return paths.workspace() / "presets"


def list_presets() -> list[str]:
    """Shipped presets first (smallest budget first, cpu last), then the user's own."""
    shipped = sorted((p.stem for p in SHIPPED_DIR.glob("*.yaml")), key=_preset_order)
    user = sorted(p.stem for p in user_dir().glob("*.yaml") if p.stem not in shipped) if user_dir().is_dir() else []
    return shipped + user


def _preset_order(name: str) -> tuple[int, str]:
    digits = name.removesuffix("gb")
    return (int(digits), name) if digits.isdigit() else (10_000, name)


def preset_path(name: str) -> Path:
    for folder in (SHIPPED_DIR, user_dir()):
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    raise ConfigError(f"There is no preset named {name!r}.", f"Pick one of: {', '.join(list_presets())}.")


def load_preset(name: str) -> Preset:
    """A shipped or user preset by name, or a preset YAML by path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_yaml(Preset, path)
    paths.check_name(name, "preset name")
    return load_yaml(Preset, preset_path(name))


def save_preset(preset: Preset, name: str) -> Path:
    """Save into <workspace>/presets/; a shipped preset's name is refused, never overwritten."""
    paths.check_name(name, "preset name")
    if (SHIPPED_DIR / f"{name}.yaml").is_file():
        raise ConfigError(f"{name!r} is a shipped preset and cannot be overwritten.",
                          f"Save under another name, e.g. '{name}-mine'.")
    preset = replace(preset, name=name)
    return save_yaml(preset, user_dir() / f"{name}.yaml")


def as_settings(preset: Preset) -> dict:
    """The dict the Presets tab hands to the Train tab: {"quant", "lora", "train"}."""
    from studio.config import to_dict

    data = to_dict(preset)
    return {"quant": data["quant"], "lora": data["lora"], "train": data["train"]}


# ---------------------------------------------------------------- model shapes


def list_shapes() -> list[str]:
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


def model_shape(ref: str) -> dict:
    """config.json of a model as a dict, without loading (or downloading) its weights."""
    ref = (ref or "bundled").strip()
    key = ref.lower()
    if (SHAPES_DIR / f"{key}.json").is_file():
        return _read_config(SHAPES_DIR / f"{key}.json")
    if key == "bundled":
        return _bundled_shape()
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":  # converted once into a plain HF folder (cached under STUDIO_HOME), then read
        from studio.models import resolve

        return _read_config(Path(resolve(str(path))) / "config.json")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"The folder {path} has no config.json.", "Point to a Hugging Face model folder.")
        return _read_config(path / "config.json")
    for shape in list_shapes():  # a hub id such as meta-llama/Meta-Llama-3-8B-Instruct
        config = _read_config(SHAPES_DIR / f"{shape}.json")
        if config.get("_name_or_path", "").lower() == key:
            return config
    return _cached_hub_config(ref)


def _bundled_shape() -> dict:
    """The converted bundled model's config, or (before the first conversion) its published twin."""
    converted = paths.home() / "models" / "smollm2-135m-instruct" / "config.json"
    return _read_config(converted if converted.is_file() else SHAPES_DIR / "smollm2-135m.json")


def _cached_hub_config(ref: str) -> dict:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id raises a validation error
        cached = None
    if isinstance(cached, str):
        return _read_config(Path(cached))
    raise ModelError(f"No config for {ref!r}: it is not a local folder or .gguf file, a shipped shape, or a "
                     "hub model in the local cache.",
                     "Give the model's folder (with config.json) or its .gguf file; for a hub id, download it "
                     f"once where a hub is reachable. Shipped shapes: {', '.join(list_shapes())}.")


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read {path}: {exc}", "Check it is a valid config.json.") from exc
    return config.get("text_config", config) if "hidden_size" not in config else config


# ---------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class Shape:
    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    fused: bool  # Phi-3 style fused qkv_proj and gate_up_proj
    window: int = 0  # sliding-window attention span (Mistral, Gemma-2/3 local layers); 0 = full

    @classmethod
    def of(cls, config: dict) -> Shape:
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            inter = config.get("intermediate_size") or config.get("ffn_dim") or config.get("n_inner") or 4 * hidden
            return cls(hidden=hidden, inter=int(inter), window=_window(config),
                       layers=int(config["num_hidden_layers"]), heads=heads,
                       kv_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or hidden // heads), vocab=int(config["vocab_size"]),
                       tied=bool(config.get("tie_word_embeddings", False)),
                       fused=_fused(config))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"The model config lacks a size field ({exc}).",
                             "Give a decoder-only model config with hidden_size, intermediate_size, "
                             "num_hidden_layers, num_attention_heads and vocab_size.") from exc

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear projection in one decoder layer, by module name."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = ({"qkv_proj": (self.hidden, q + 2 * kv)} if self.fused else
                {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv)})
        mlp = ({"gate_up_proj": (self.hidden, 2 * self.inter)} if self.fused else
               {"gate_proj": (self.hidden, self.inter), "up_proj": (self.hidden, self.inter)})
        return {**attn, "o_proj": (q, self.hidden), **mlp, "down_proj": (self.inter, self.hidden)}


def _window(config: dict) -> int:
    """The sliding window when every layer slides (Mistral); 0 where some layers attend globally
    (Gemma-2/3 alternate local and global layers: the global ones set the peak)."""
    window = int(config.get("sliding_window") or 0)
    if config.get("use_sliding_window") is False or "full_attention" in (config.get("layer_types") or []):
        return 0
    return window


def _fused(config: dict) -> bool:
    """Phi-3 style fused projections: named by the architecture, not a table of layouts."""
    archs = " ".join(config.get("architectures") or []).lower()
    return config.get("model_type") in ("phi3", "phimoe") or "phi3" in archs


def _targets(shape: Shape, lora: LoraSpec) -> dict[str, tuple[int, int]]:
    linears = shape.linears()
    wanted = lora.modules()
    if wanted == "all-linear":
        return linears
    aliases = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
               "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
    picked = {}
    for name in wanted:
        name = name if name in linears else aliases.get(name, name)
        if name not in linears:
            raise ConfigError(f"Setting 'lora.target_modules' names {name!r}, which this model does not have.",
                              f"Use 'all-linear' or some of: {', '.join(linears)}.")
        picked[name] = linears[name]
    return picked


def count_params(config: dict, lora: LoraSpec) -> dict[str, int]:
    shape = Shape.of(config)
    linear = shape.layers * sum(i * o for i, o in shape.linears().values())
    embedding = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    norms = (2 * shape.layers + 1) * shape.hidden  # two RMSNorms per layer and a final one
    lora_params = shape.layers * lora.r * sum(i + o for i, o in _targets(shape, lora).values())
    return {"linear": linear, "embedding": embedding, "norms": norms, "lora": lora_params,
            "total": linear + embedding + norms}


def estimate_memory(model_config: dict, quant: str, lora: LoraSpec, train: TrainSpec,
                    device: str = "cuda") -> Estimate:
    """Peak memory of one LoRA/QLoRA training run, in GB, from the model config alone (pure)."""
    shape = Shape.of(model_config)
    if lora.r > shape.hidden:
        raise ConfigError(f"Setting 'lora.r' is {lora.r}, larger than the model's hidden size ({shape.hidden}).",
                          f"Set lora.r to at most {shape.hidden}; 8-64 is typical.")
    counts = count_params(model_config, lora)
    weights = _weight_bytes(counts, quant)
    act_bytes = 2 if quant in ("bf16", "fp16") else 4  # k-bit training upcasts norms/embeddings, so fp32 flows
    rows = train.micro_batch * (2 if train.method in ("dpo", "orpo") else 1)  # a pair: chosen + rejected rows
    tokens = rows * train.max_seq_len
    layer = tokens * (LAYER_HIDDEN_COPIES * shape.hidden + LAYER_INTER_COPIES * shape.inter) * act_bytes
    # The CPU recipe's attention for packed rows (jobs.cpu_speed) runs the flash kernel per sequence: no scores kept.
    packed = train.packing and train.method == "sft"  # preference pairs are padded, never packed
    attention = 0.0 if device == "cpu" and packed else _attention_bytes(shape, train, act_bytes, rows)
    if train.gradient_checkpointing:  # layer inputs saved, one layer recomputed at a time in backward
        activations = shape.layers * tokens * shape.hidden * act_bytes + layer + attention
    else:  # every layer keeps its whole working set until backward reaches it
        activations = shape.layers * (layer + attention)
    one_logits = tokens * shape.vocab * 4  # the loss upcasts logits to fp32
    if train.method == "dpo":  # TRL's fused LM head scores tiles of DPO_LOGIT_TILE tokens: no full logits
        one_logits = min(tokens, DPO_LOGIT_TILE) * shape.vocab * 4
    # The loss peak (three copies) and the layer-recompute peak (one copy kept) do not overlap.
    logits = one_logits + max(0.0, (LOSS_LOGIT_COPIES - 1) * one_logits - layer - attention)
    parts = {
        "weights": weights,
        "lora": counts["lora"] * 4,  # PEFT keeps adapter weights in fp32
        "grads": counts["lora"] * 4,
        "optimizer": counts["lora"] * OPTIMIZER_BYTES[train.optimizer],
        "activations": activations,
        "logits": logits,
    }
    if train.method == "dpo":  # the reference pass (adapter off, no grad) on top of the kept activations:
        parts["reference"] = layer + attention + one_logits  # one layer's working set and one logit tile at a time
    breakdown = {key: value / GB for key, value in parts.items()}
    transient = breakdown["activations"] + breakdown["logits"] + breakdown.get("reference", 0.0)
    if device == "cuda":
        overhead = CUDA_CONTEXT_GB + ALLOCATOR_BASE_GB + ALLOCATOR_FRACTION * transient
    else:
        overhead = CPU_OVERHEAD_GB + CPU_SLACK_FRACTION * transient
    breakdown["overhead"] = overhead
    breakdown["total"] = sum(breakdown.values())
    return Estimate(breakdown={k: round(v, 3) for k, v in breakdown.items()}, device=device, params=counts)


def _weight_bytes(counts: dict[str, int], quant: str) -> float:
    per_linear = {"4bit": NF4_BYTES, "8bit": INT8_BYTES, "bf16": 2, "fp16": 2, "fp32": 4}[quant]
    per_other = 2 if quant in ("bf16", "fp16") else 4  # prepare_model_for_kbit_training upcasts to fp32
    return counts["linear"] * per_linear + (counts["embedding"] + counts["norms"]) * per_other


def _attention_bytes(shape: Shape, train: TrainSpec, act_bytes: int, rows: int) -> float:
    """Attention scores materialised by SDPA's math kernel; 16-bit flash kernels keep none.

    fp32 q/k/v (k-bit training upcasts, or fp32 on CPU) with grouped-query heads fall back to the math
    kernel on CUDA and on CPU alike; the measured peaks grow with the square of the sequence to match.
    """
    if act_bytes != 4:
        return 0.0
    span = min(train.max_seq_len, shape.window) if shape.window else train.max_seq_len  # sliding window
    return rows * shape.heads * train.max_seq_len * span * ATTN_SCORE_BYTES


def estimate_preset(model_config: dict, preset: Preset) -> Estimate:
    """What training with this preset peaks at; on CPU for what the recipe runs there (`cpu_pass`)."""
    return estimate_memory(model_config, preset.quant, preset.lora, _pass_of(model_config, preset), preset.device)


def _pass_of(model_config: dict, preset: Preset) -> TrainSpec:
    """The TrainSpec one pass of the recipe runs for this preset: as written on CUDA, `cpu_pass` on CPU."""
    if preset.device != "cpu":
        return preset.train
    return cpu_pass(model_config, preset.quant, preset.lora, preset.train, preset.memory_gb or float("inf"))


CPU_PASS_TOKENS = 1024  # a CPU pass packs rows up to about this many tokens: per-pass overhead is then small


def cpu_note(model_config: dict, preset: Preset) -> str:
    """One line on what the CPU recipe changes in a preset's pass ("" on CUDA or when nothing changes)."""
    t, run = preset.train, _pass_of(model_config, preset)
    parts = []
    if run.micro_batch != t.micro_batch:
        rows = "one packed row" if run.micro_batch == 1 else f"{run.micro_batch} packed rows"
        parts.append(f"runs {rows} per pass ({t.micro_batch * t.grad_accum} rows per step by accumulation)")
    if t.gradient_checkpointing and not run.gradient_checkpointing:
        parts.append("skips gradient checkpointing, since that pass fits without it (1.5x faster)")
    return f"On CPU the studio {' and '.join(parts)}; the estimate is for that." if parts else ""


def cpu_pass(model_config: dict, quant: str, lora: LoraSpec, train: TrainSpec, memory_gb: float) -> TrainSpec:
    """What one forward pass of the CPU recipe holds (`jobs.worker.pass_plan`).

    With packing, the packed rows of a step are split into passes of about CPU_PASS_TOKENS tokens (the rest
    of the step is gradient accumulation: the same tokens and the same gradient per step). Gradient
    checkpointing is dropped when such a pass fits in `memory_gb` without it, because recomputing every
    layer costs a third of the step and a CPU machine often has the RAM to spare; when none fits, one row
    per pass with checkpointing as the preset says.
    """
    if not train.packing or train.method != "sft":  # preference pairs are padded rows: the pass is as written
        return train
    rows = train.micro_batch * train.grad_accum  # packed rows per optimizer step
    widest = max(1, min(train.micro_batch, CPU_PASS_TOKENS // train.max_seq_len))
    for per_pass in range(widest, 0, -1):
        if rows % per_pass:
            continue
        plain = replace(train, micro_batch=per_pass, grad_accum=rows // per_pass, gradient_checkpointing=False)
        if not train.gradient_checkpointing:
            return plain
        if estimate_memory(model_config, quant, lora, plain, "cpu").total <= memory_gb:
            return plain
    return replace(train, micro_batch=1, grad_accum=rows)


# ---------------------------------------------------------------- recommendation


def with_method(preset: Preset, method: str, beta: float | None = None) -> Preset:
    """The preset trained with another method (sft, dpo, orpo): the estimate and the verdict follow it."""
    changes = {"method": method, **({"beta": beta} if beta is not None else {})}
    return replace(preset, train=replace(preset.train, **changes))


def recommend(model_config: dict, memory_gb: float, device: str = "cuda", method: str = "sft") -> Recommendation:
    """The largest shipped preset for `device` that fits `memory_gb` (trained with `method`), or what to change."""
    presets = [with_method(load_preset(n), method) for n in list_presets() if (SHIPPED_DIR / f"{n}.yaml").is_file()]
    candidates = sorted((p for p in presets if p.device == device), key=lambda p: p.memory_gb)
    if not candidates:
        raise ConfigError(f"No shipped preset targets device {device!r}.", "Use 'cuda' or 'cpu'.")
    for preset in reversed(candidates):
        if preset.memory_gb > memory_gb and device == "cuda":
            continue
        estimate = estimate_preset(model_config, preset)
        if estimate.fits(memory_gb):
            return Recommendation(preset.name, estimate,
                                  f"{preset.name} fits: {estimate.total:.1f} GB of {memory_gb:g} GB.")
    smallest = candidates[0]
    estimate = estimate_preset(model_config, smallest)
    head = f"No preset fits: even {smallest.name} needs about {estimate.total:.1f} GB of {memory_gb:g} GB."
    return Recommendation(None, estimate, f"{head} {advise(model_config, smallest, memory_gb)}")


def advise(model_config: dict, preset: Preset, memory_gb: float) -> str:
    """What to change so `preset` fits: each single change that is enough, else all, else a smaller model."""
    estimate = estimate_preset(model_config, preset)
    if estimate.fits(memory_gb):
        return f"Fits: {estimate.total:.1f} GB of {memory_gb:g} GB."
    singles, combined = _changes(preset)
    working = [label for label, changed in singles if estimate_preset(model_config, changed).fits(memory_gb)]
    if working:
        return f"Any one of these makes it fit: {'; '.join(working)}."
    if estimate_preset(model_config, combined).fits(memory_gb):
        return f"Apply all of these together: {'; '.join(label for label, _ in singles)}."
    floor = estimate.breakdown["weights"] + estimate.breakdown["overhead"]
    return (f"Even with every saving the weights and runtime need about {floor:.1f} GB: "
            "choose a smaller model or a device with more memory.")


def _changes(preset: Preset) -> tuple[list[tuple[str, Preset]], Preset]:
    """Single changes that save memory, and the preset with all of them applied."""
    t, lora = preset.train, preset.lora
    options = []
    if t.max_seq_len > 256:
        options.append((f"shorter sequences (max_seq_len {t.max_seq_len // 2})",
                        {"train": replace(t, max_seq_len=t.max_seq_len // 2)}))
    if t.micro_batch > 1:
        options.append((f"micro_batch 1 (raise grad_accum to {t.grad_accum * t.micro_batch})",
                        {"train": replace(t, micro_batch=1, grad_accum=t.grad_accum * t.micro_batch)}))
    if not t.gradient_checkpointing:
        options.append(("gradient checkpointing on", {"train": replace(t, gradient_checkpointing=True)}))
    if preset.quant != "4bit":
        options.append(("4-bit quantization (quant 4bit)", {"quant": "4bit"}))
    if lora.r > 8:
        options.append(("a smaller LoRA rank (r 8)", {"lora": replace(lora, r=8, alpha=16)}))
    tries = [(label, replace(preset, **change)) for label, change in options]
    combined = preset
    for _, change in options:
        if "train" in change:
            merged = replace(combined.train, **_diff(t, change["train"]))
            combined = replace(combined, train=merged)
        else:
            combined = replace(combined, **change)
    return tries, combined


def _diff(old: TrainSpec, new: TrainSpec) -> dict:
    from dataclasses import fields

    return {f.name: getattr(new, f.name) for f in fields(new) if getattr(new, f.name) != getattr(old, f.name)}
