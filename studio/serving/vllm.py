"""`python -m studio serve --engine vllm`: vLLM's own OpenAI server for the base and the registry's adapters.

On a CUDA machine with `vllm` installed, vLLM serves many LoRA adapters on one base with its own
batching and paged attention; the studio writes no serving engine for that case, it only builds the
command: the resolved base folder, `--enable-lora`, `--max-lora-rank` (the largest adapter rank,
rounded up to a rank vLLM accepts), `--max-loras`, and `--lora-modules name=folder` for every adapter
trained on this base (plus the ones named with --adapters). The model ids are the same as
`studio serve`'s, so client code does not change when the backend does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from studio.errors import ConfigError, StudioError

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "4bit": "auto", "8bit": "auto"}


def adapter_rank(folder: Path) -> int:
    config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    ranks = [int(config.get("r") or 8), *(int(v) for v in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def served_adapters(model_ref: str, base_path: str, named: dict[str, Path | None]) -> tuple[dict[str, Path], list[str]]:
    """(name -> folder) for vLLM: the registry's adapters for this base and the named ones; and why others
    were left out."""
    from studio.adapters import get_adapter, list_adapters

    chosen: dict[str, Path] = {}
    skipped: list[str] = []
    for info in list_adapters():
        if info.base_model in (model_ref, base_path, Path(base_path).name, "unknown"):
            chosen[info.name] = info.path
        else:
            skipped.append(f"{info.name} (trained on {info.base_model}, not {model_ref})")
    for name, path in named.items():
        chosen[name] = Path(path) if path is not None else get_adapter(name).path
    return chosen, skipped


def vllm_command(base_path: str, served_name: str, adapters: dict[str, Path], host: str, port: int,
                 quant: str = "bf16") -> list[str]:
    """vLLM's OpenAI server command line (as a list) for the base and its adapters."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base_path),
           "--served-model-name", served_name, "--host", host, "--port", str(port), "--dtype", DTYPES[quant]]
    if quant == "4bit":
        cmd += ["--quantization", "bitsandbytes"]
    if adapters:
        rank = max(adapter_rank(p) for p in adapters.values())
        allowed = next((r for r in VLLM_RANKS if r >= rank), None)
        if allowed is None:
            raise ConfigError(f"An adapter has rank {rank}, above the {VLLM_RANKS[-1]} vLLM accepts.",
                              "Serve it with `studio serve` (the studio's own engine), or retrain with a lower r.")
        cmd += ["--enable-lora", "--max-lora-rank", str(allowed), "--max-loras", str(min(len(adapters), 8)),
                "--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    return cmd


def launch(model_ref: str, named: dict[str, Path | None], host: str, port: int, quant: str,
           dry_run: bool = False) -> int:
    from studio.models import resolve

    base_path = str(resolve(model_ref))
    served_name = Path(model_ref).name if Path(model_ref).exists() else model_ref
    adapters, skipped = served_adapters(model_ref, base_path, named)
    cmd = vllm_command(base_path, served_name, adapters, host, port, "bf16" if quant == "fp32" else quant)
    for line in skipped:
        print(f"not served: {line}", file=sys.stderr)
    print(shlex.join(cmd), flush=True)
    if dry_run:
        return 0
    check_vllm()
    return subprocess.call(cmd, env=dict(os.environ))


def check_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise StudioError("vLLM is not installed in this environment.",
                          "On a CUDA machine: pip install vllm; on a CPU, use `python -m studio serve` "
                          "(the studio's own engine), which serves the same model ids.")
    import torch

    if not torch.cuda.is_available():
        raise StudioError("vLLM needs a CUDA GPU and none is visible.",
                          "Use `python -m studio serve` on this machine, or run this on a CUDA machine.")
