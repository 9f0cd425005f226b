"""A real OpenAI-compatible server on a free port for the serving tests: the tiny model with a chat
template that renders tools, two random LoRA adapters, uvicorn in a thread (so a test can also look at
the engine it serves from)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

# ChatML with tool definitions, tool calls and tool results: what a tools-capable template (Qwen, Hermes,
# Llama 3.1) does, in a few lines.
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou may call these tools:\n"
    "{%- for tool in tools %}\n{{ tool.function.name }}: {{ tool.function.description }} "
    "{{ tool.function.parameters | tojson }}{%- endfor %}\n"
    "Answer with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>.<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{%- endfor %}"
    "<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tools_model(tiny_model_dir: Path, out: Path) -> Path:
    """A copy of the tiny model whose tokenizer carries TOOLS_TEMPLATE."""
    from transformers import AutoTokenizer

    shutil.copytree(tiny_model_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = TOOLS_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


def random_lora(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA with random A and B (init_lora_weights=False), so it visibly changes every answer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


class ThreadServer:
    """`studio.serving.server.create_app` under uvicorn on a free port, in a background thread."""

    def __init__(self, engine, extra_adapters: dict[str, Path]):
        import uvicorn

        from studio.serving.api import Backend
        from studio.serving.server import create_app

        self.engine = engine
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(create_app(Backend(lambda: engine, extra_adapters)), host="127.0.0.1",
                                port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the test server did not start in 30 s")
            time.sleep(0.05)

    def client(self, key: str = "test-key", **kwargs):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=key, max_retries=0, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
