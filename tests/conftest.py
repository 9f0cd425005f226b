"""Shared fixtures: an isolated workspace per test, a session-wide studio home (so the bundled model
is converted once per machine), and tiny random-weight Llama models built here for speed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("STUDIO_HOME", str(ROOT / ".cache" / "test-home"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Path:
    """Each test gets its own runs/, datasets/, adapters/ and exports/."""
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.setenv("STUDIO_WORKSPACE", str(ws))
    return ws


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct, converted once into an HF folder."""
    from studio.models import resolve

    return Path(resolve("bundled"))


def make_tiny_model(out: Path, tokenizer_dir: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random-weight Llama with the bundled tokenizer (and its chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_dir) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", bundled_dir)


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory, bundled_dir) -> Path:
    """A second tiny model with a different shape: adapters trained for one must not fit the other."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny2") / "tiny-llama-96", bundled_dir, hidden=96)
