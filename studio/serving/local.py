"""The real server in this process on a free port, and random LoRAs for a base: what the soak test
(studio/serving/soak.py) and the serving benchmark (benchmarks/serve_bench.py) drive."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_adapters(model_dir: str, out: Path, names=("A", "B")) -> dict[str, Path]:
    """One random LoRA per name (r=16 on every projection, as the presets train), saved under `out`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    found = {}
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        config = LoraConfig(r=16, lora_alpha=1, init_lora_weights=False,  # small random delta: answers stay text
                            target_modules=LORA_TARGETS)
        get_peft_model(model, config).save_pretrained(out / name)
        found[name] = out / name
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine, adapters: dict[str, Path]):
    """The /v1 routes for `engine` under uvicorn in a thread; returns (server, base URL)."""
    import uvicorn

    from studio.serving.api import Backend
    from studio.serving.server import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Backend(lambda: engine, adapters)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/v1"
