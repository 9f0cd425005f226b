"""Accelerate configs for scale-out runs: the shipped examples (FSDP, DeepSpeed ZeRO-3) and the checks a run's
config passes before it is queued, so a run never fails minutes later on something knowable now.

No torch import: the manager and the Train tab use this.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from studio.errors import RunError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "accelerate"
KNOWN = {"NO", "MULTI_CPU", "MULTI_GPU", "FSDP", "DEEPSPEED"}  # what the recipe is tested under


def shipped() -> dict[str, str]:
    """{file name: absolute path} of the example configs shipped in examples/accelerate/."""
    return {p.name: str(p) for p in sorted(EXAMPLES.glob("*.yaml"))}


def resolve(config: str) -> Path:
    """The config file: as given, else relative to the repository root (where the worker starts)."""
    for path in (Path(config).expanduser(), ROOT / config, EXAMPLES / config):
        if path.is_file():
            return path.resolve()
    raise RunError(f"The accelerate config {config!r} does not exist.",
                   f"Give the path of an accelerate config file, or one of {', '.join(shipped())}.")


def check(config: str, quant: str) -> Path:
    """Resolve `config` and check that this machine can launch it with a base held in `quant`."""
    path = resolve(config)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RunError(f"The accelerate config {path.name} is not valid YAML: {exc}",
                       "Fix the file, or create one with `accelerate config --config_file FILE`.") from exc
    kind = str(data.get("distributed_type", "NO")).upper()
    if kind not in KNOWN:
        raise RunError(f"The accelerate config {path.name} asks for {kind}, which the studio does not run.",
                       f"Use one of: {', '.join(sorted(KNOWN))}.")
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise RunError(f"{path.name} needs DeepSpeed, which is not installed.",
                       "Install it (`pip install deepspeed`), or pick fsdp.yaml or no accelerate config.")
    if kind in ("FSDP", "DEEPSPEED") and quant in ("4bit", "8bit"):
        raise RunError(f"{kind} cannot shard a {quant} base here: quantized and other weights have different "
                       "dtypes, and the studio does not convert them for sharding.",
                       "Set the model's quant to bf16 for a sharded run, or train 4-bit on one GPU.")
    return path
