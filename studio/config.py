"""One source of truth for settings, shared by the UI, the CLI and the training worker.

Frozen dataclasses, loaded from and saved to YAML. `from_dict` rejects unknown keys, wrong
types and out-of-range values with a ConfigError that names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from studio.errors import ConfigError

QUANT_MODES = ("4bit", "8bit", "bf16", "fp16", "fp32")
# what a base can be held in to answer (Model tab, `studio serve`): q8 = int8 weights on a CPU (studio/q8.py),
# faster to decode but not trainable, so run specs keep QUANT_MODES
SERVING_QUANTS = (*QUANT_MODES, "q8")
QUANTIZED = ("4bit", "8bit", "q8")  # weights in integer codes: adapters stay unmerged on them
PRECISIONS = ("bf16", "fp16", "fp32")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
OPTIMIZERS = ("paged_adamw_8bit", "adamw_8bit", "adamw_torch", "adamw_torch_fused", "sgd")
# supervised answers; preference pairs (chosen vs rejected); rewarded generations; thumbs up/down answers
METHODS = ("sft", "dpo", "orpo", "grpo", "kto")
METHOD_HELP = {
    "method": "sft: learn the answers of a conversation dataset. dpo: learn to prefer the chosen answer over the "
              "rejected one, against a frozen reference (the base with the adapter off). orpo: SFT on the chosen "
              "answer plus an odds-ratio penalty on the rejected one, no reference pass. grpo: the model "
              "answers each prompt several times, reward functions score the answers and it learns from the better "
              "ones (prompt-only data: the dataset's answers are the references the rewards compare against). kto: "
              "learn from unpaired answers marked good or bad (thumbs up/down), against the base as reference.",
    "beta": "DPO: how far the tuned model may move from the reference; higher keeps it closer. 0.1 is TRL's default; "
            "0.05-0.5 is the usual range.",
    "orpo_lambda": "ORPO: weight of the odds-ratio (preference) term next to the SFT loss on the chosen answer "
                   "(the paper's lambda, TRL's ORPOConfig.beta). 0.1 is the paper's default.",
    "from_adapter": "Start from this adapter (a registry name such as run:my-sft, or a folder) and continue training "
                    "it, e.g. DPO after SFT. Empty: a new LoRA adapter.",
    "report_to": "Trackers that log the run besides its own events: tensorboard (event files in the run folder, "
                 "the default), mlflow, wandb, trackio (each when installed; local or offline unless your "
                 "environment says otherwise), comma-separated, or none.",
    "parent_run": "Set when the run branched from another run's checkpoint: that run's name.",
    "parent_step": "Set when the run branched from another run's checkpoint: the checkpoint's step.",
}


@dataclass(frozen=True)
class ModelSpec:
    ref: str = "bundled"  # "bundled", a local HF folder, a local .gguf file, or a hub id
    quant: str = "4bit"  # how the base weights are held: 4bit NF4, 8bit int8, or 16/32-bit
    trust_remote_code: bool = False  # run model code shipped with the checkpoint (off unless asked)

    def validate(self) -> None:
        _choice("model.quant", self.quant, QUANT_MODES)
        if not self.ref.strip():
            raise ConfigError("model.ref is empty.", "Use 'bundled', a local folder or a hub id.")


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16  # rank of the low-rank update
    alpha: int = 32  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the LoRA input
    target_modules: str = "all-linear"  # "all-linear" or comma-separated names (q_proj,v_proj)

    def validate(self) -> None:
        _positive("lora.r", self.r)
        _positive("lora.alpha", self.alpha)
        _between("lora.dropout", self.dropout, 0.0, 0.9)
        if not self.target_modules.strip():
            raise ConfigError("lora.target_modules is empty.", "Use 'all-linear' or 'q_proj,v_proj'.")

    def modules(self) -> str | list[str]:
        if self.target_modules == "all-linear":
            return "all-linear"
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]


@dataclass(frozen=True)
class TrainSpec:
    max_seq_len: int = 1024  # tokens per example; longer rows are truncated
    micro_batch: int = 1  # examples per forward pass
    grad_accum: int = 8  # micro batches per optimizer step
    lr: float = 2e-4  # peak learning rate
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03  # share of steps spent warming up the learning rate (below 1)
    epochs: float = 1.0  # passes over the training split (ignored when max_steps > 0)
    max_steps: int = -1  # stop after this many optimizer steps; -1 means use epochs
    gradient_checkpointing: bool = True  # recompute activations in backward to save memory
    optimizer: str = "paged_adamw_8bit"
    precision: str = "bf16"  # compute dtype for the forward and backward passes
    packing: bool = True  # concatenate rows into full sequences, no padding, no cross-row attention
    liger_kernel: bool = False  # Liger's fused Triton kernels (CUDA with liger-kernel installed; else off, logged)
    logging_steps: int = 1
    eval_steps: int = 10  # evaluate on the eval split every N steps (0: only at the end)
    save_steps: int = 10  # checkpoint every N steps, so a killed run loses at most N steps
    seed: int = 42
    method: str = field(default="sft", metadata={"help": METHOD_HELP["method"]})
    beta: float = field(default=0.1, metadata={"help": METHOD_HELP["beta"]})
    orpo_lambda: float = field(default=0.1, metadata={"help": METHOD_HELP["orpo_lambda"]})
    report_to: str = field(default="tensorboard", metadata={"help": METHOD_HELP["report_to"]})

    def validate(self) -> None:
        from studio.jobs.trackers import check as check_trackers

        for key in ("max_seq_len", "micro_batch", "grad_accum", "logging_steps", "save_steps"):
            _positive(f"train.{key}", getattr(self, key))
        _between("train.lr", self.lr, 1e-8, 1.0)
        _between("train.warmup_ratio", self.warmup_ratio, 0.0, 0.5)  # below 1: a ratio, not a step count
        _choice("train.scheduler", self.scheduler, SCHEDULERS)
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _choice("train.precision", self.precision, PRECISIONS)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError("train.max_steps must be -1 (use epochs) or a positive number.",
                              "Set train.max_steps: 100, or -1 and train.epochs: 1.")
        if self.max_steps == -1 and self.epochs <= 0:
            raise ConfigError("train.epochs must be above 0.", "Set train.epochs: 1.")
        if self.eval_steps < 0:
            raise ConfigError("train.eval_steps must be 0 or more.", "Set train.eval_steps: 10.")
        _choice("train.method", self.method, METHODS)
        _between("train.beta", self.beta, 1e-4, 10.0)
        _between("train.orpo_lambda", self.orpo_lambda, 0.0, 10.0)
        check_trackers(self.report_to)


REWARD_PRESETS = ("numeric_match", "exact_match", "regex", "length", "json", "judge", "file")
EXTRACTIONS = ("last_number", "boxed", "answer_tag")  # where the final answer sits in a completion
REWARD_HELP = {
    "preset": "numeric_match / exact_match: 1 when the final answer equals the dataset's answer (as a number / as "
              "text), else 0. regex: 1 when the pattern is found. length: 1 at the target length in words, falling "
              "to 0 at twice or zero it. json: 1 for valid JSON (matching the schema file, when given). judge: an "
              "LLM behind an OpenAI-compatible endpoint scores the answer 0-10 against the rubric (scaled to 0-1). "
              "file: reward(prompts, completions, **row) -> list[float] from your Python file (off when hosted).",
    "extract": "Where the final answer is read: last_number (the last number in the answer), boxed (\\boxed{...}) "
               "or answer_tag (<answer>...</answer>).",
    "weight": "How much this reward counts in the sum the model learns from.",
}


@dataclass(frozen=True)
class RewardSpec:
    """One reward function of a GRPO run (`studio.rewards` builds it); the fields a preset does not use stay empty."""

    preset: str = field(default="numeric_match", metadata={"help": REWARD_HELP["preset"]})
    weight: float = field(default=1.0, metadata={"help": REWARD_HELP["weight"]})
    extract: str = field(default="last_number", metadata={"help": REWARD_HELP["extract"]})  # match presets
    pattern: str = ""  # regex: a Python regular expression searched in the answer
    target: int = 50  # length: the answer length in words that scores 1
    schema: str = ""  # json: an optional JSON Schema file the answer must match
    endpoint: str = ""  # judge: the base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:7860/v1
    model: str = ""  # judge: the model name to ask for
    rubric: str = ""  # judge: what a good answer looks like, in words
    api_key_env: str = ""  # judge: the environment variable that holds the API key (never the key itself)
    path: str = ""  # file: a Python file defining reward(prompts, completions, **row)

    def validate(self) -> None:
        _choice("reward.preset", self.preset, REWARD_PRESETS)
        _choice("reward.extract", self.extract, EXTRACTIONS)
        _between("reward.weight", self.weight, -100.0, 100.0)
        needs = {"regex": ("pattern", "a pattern such as '\\d+'"), "judge": ("endpoint", "http://127.0.0.1:7860/v1"),
                 "file": ("path", "my_reward.py")}
        if self.preset in needs and not getattr(self, needs[self.preset][0]).strip():
            key, example = needs[self.preset]
            raise ConfigError(f"The {self.preset} reward has no {key}.", f"Set {key}: {example}.")
        if self.preset == "judge" and not self.rubric.strip():
            raise ConfigError("The judge reward has no rubric.", "Set rubric: what a good answer looks like.")
        _positive("reward.target", self.target)


def _default_rewards() -> list[RewardSpec]:
    return [RewardSpec()]


GRPO_HELP = {
    "num_generations": "Answers sampled per prompt; each is scored against the others of its group. It must divide "
                       "the effective batch (micro batch x accumulation x processes).",
    "max_completion_length": "The longest answer generated, in tokens. Generation dominates a GRPO step's time.",
    "beta": "How strongly the model is held near the base (KL penalty). 0 turns the reference pass off.",
    "temperature": "Sampling temperature of the generations; too low and a group's answers are all alike.",
}


@dataclass(frozen=True)
class GrpoSpec:
    num_generations: int = field(default=4, metadata={"help": GRPO_HELP["num_generations"]})
    max_completion_length: int = field(default=64, metadata={"help": GRPO_HELP["max_completion_length"]})
    beta: float = field(default=0.04, metadata={"help": GRPO_HELP["beta"]})
    temperature: float = field(default=1.0, metadata={"help": GRPO_HELP["temperature"]})
    rewards: list[RewardSpec] = field(default_factory=_default_rewards)

    def validate(self) -> None:
        if self.num_generations < 2:
            raise ConfigError(f"grpo.num_generations is {self.num_generations}; GRPO compares answers within a group.",
                              "Set grpo.num_generations to 2 or more (4 is usual).")
        _positive("grpo.max_completion_length", self.max_completion_length)
        _between("grpo.beta", self.beta, 0.0, 10.0)
        _between("grpo.temperature", self.temperature, 0.01, 5.0)
        if not self.rewards:
            raise ConfigError("grpo.rewards is empty: nothing would score the answers.",
                              "Add one, e.g. rewards: [{preset: numeric_match, weight: 1.0}].")


@dataclass(frozen=True)
class KtoSpec:
    desirable_weight: float = 1.0  # weight of the loss on answers marked good (raise it when they are rare)
    undesirable_weight: float = 1.0  # weight of the loss on answers marked bad

    def validate(self) -> None:
        _between("kto.desirable_weight", self.desirable_weight, 0.0, 100.0)
        _between("kto.undesirable_weight", self.undesirable_weight, 0.0, 100.0)


@dataclass(frozen=True)
class Preset:
    """A named bundle of settings for a memory budget (presets/*.yaml)."""

    name: str = "custom"
    description: str = ""
    memory_gb: float = 0.0  # the budget this preset is sized for (GPU VRAM, or RAM for cpu)
    device: str = "cuda"  # "cuda" or "cpu"
    quant: str = "4bit"
    lora: LoraSpec = field(default_factory=LoraSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    def validate(self) -> None:
        _choice("quant", self.quant, QUANT_MODES)
        _choice("device", self.device, ("cuda", "cpu"))
        self.lora.validate()
        self.train.validate()


@dataclass(frozen=True)
class RunSpec:
    """Everything a training run needs; written to runs/<id>/spec.yaml."""

    name: str = "run"
    dataset: str = ""  # name of a prepared dataset under datasets/
    model: ModelSpec = field(default_factory=ModelSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    accelerate_config: str = ""  # optional accelerate config file: launch with `accelerate launch`
    num_processes: int = 1  # >1 launches DDP through accelerate (gloo on CPU, nccl on CUDA)
    from_adapter: str = field(default="", metadata={"help": METHOD_HELP["from_adapter"]})
    # the prepared dataset's content hash, recorded when the run is created; a resume refuses another one
    dataset_sha256: str = ""
    parent_run: str = field(default="", metadata={"help": METHOD_HELP["parent_run"]})
    parent_step: int = field(default=0, metadata={"help": METHOD_HELP["parent_step"]})
    grpo: GrpoSpec = field(default_factory=GrpoSpec)  # method grpo only
    kto: KtoSpec = field(default_factory=KtoSpec)  # method kto only

    @staticmethod
    def normalize(data: dict) -> dict:
        """A top-level `method: grpo` (the short form scripts write) is train.method."""
        if not isinstance(data, dict) or "method" not in data:
            return data
        data = dict(data)
        train = dict(data.get("train") or {})
        method = data.pop("method")
        if "method" in train and train["method"] != method:
            raise ConfigError(f"method is {method!r} but train.method is {train['method']!r}.", "Keep one of them.")
        data["train"] = {**train, "method": method}
        return data

    def validate(self) -> None:
        from studio.paths import check_name

        check_name(self.name, "run name")
        if not self.dataset:
            raise ConfigError("The run has no dataset.", "Prepare one in the Data tab and choose it.")
        _positive("num_processes", self.num_processes)
        self.model.validate()
        self.lora.validate()
        self.train.validate()
        self.grpo.validate()
        self.kto.validate()
        self._check_method_batch()

    def _check_method_batch(self) -> None:
        t = self.train
        batch = t.micro_batch * t.grad_accum * self.num_processes
        if t.method == "grpo" and batch % self.grpo.num_generations:
            raise ConfigError(f"grpo.num_generations ({self.grpo.num_generations}) does not divide the effective batch "
                              f"({t.micro_batch} x {t.grad_accum} accumulation x {self.num_processes} processes = "
                              f"{batch}): every prompt's group of answers must sit in one batch.",
                              f"Set train.grad_accum to a multiple of {self.grpo.num_generations}, or "
                              "grpo.num_generations to a divisor of the batch.")
        if t.method == "kto" and t.micro_batch < 2:
            raise ConfigError("KTO needs at least 2 rows per pass (train.micro_batch): its KL estimate pairs each "
                              "answer with another row's prompt.", "Set train.micro_batch: 2 (or more).")


# ---------------------------------------------------------------- loading and saving


def from_dict(cls: type, data: Any, where: str = ""):
    """Build dataclass `cls` from a plain dict, checking keys, types and ranges."""
    if data is None:
        data = {}
    if hasattr(cls, "normalize"):
        data = cls.normalize(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} should be a mapping, got {type(data).__name__}.",
                          "Write it as 'key: value' lines.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"Unknown setting {key!r}.", f"Remove it; known settings: {', '.join(sorted(names))}.")
    values = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        values[name] = _coerce(hints[name], value, key)
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _coerce(hint: Any, value: Any, key: str):
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        if not isinstance(value, list):
            raise ConfigError(f"Setting {key!r} should be a list, got {value!r}.", f"Write {key} as a '- ...' list.")
        return [from_dict(typing.get_args(hint)[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 2e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value)
    else:
        return value
    raise ConfigError(f"Setting {key!r} should be {hint.__name__}, got {value!r}.",
                      f"Give {key} a {hint.__name__} value.")


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def load_yaml(cls: type, path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.", "Check the path.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not valid YAML: {exc}", "Fix the syntax (indentation, colons).") from exc
    return from_dict(cls, data)


def save_yaml(obj, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), encoding="utf-8")
    return path


def replace(obj, **changes):
    """dataclasses.replace, then validate the result."""
    new = dataclasses.replace(obj, **changes)
    new.validate()
    return new


# ---------------------------------------------------------------- small validators


def _positive(key: str, value) -> None:
    if value <= 0:
        raise ConfigError(f"Setting {key!r} must be positive, got {value!r}.", f"Set {key} to a value above 0.")


def _between(key: str, value, low, high) -> None:
    if not low <= value <= high:
        raise ConfigError(f"Setting {key!r} must be between {low} and {high}, got {value!r}.",
                          f"Set {key} inside that range.")


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"Setting {key!r} is {value!r}, which is not one of {', '.join(choices)}.",
                          f"Pick one of: {', '.join(choices)}.")
