"""The shared loader: every mode on CPU, and a clear StudioError for each kind of bad input."""

from __future__ import annotations

import pytest

from studio.errors import ModelError
from studio.models import hardware, load_model, model_info, resolve


@pytest.mark.parametrize("quant", ["fp32", "bf16", "fp16", "8bit", "4bit"])
def test_tiny_model_loads_in_every_mode(tiny_model_dir, quant):
    import torch

    loaded = load_model(str(tiny_model_dir), quant, device="cpu")
    info = model_info(loaded)
    assert info["chat_template"] and info["layers"] == 2 and info["parameters"] > 0
    linear = loaded.model.model.layers[0].self_attn.q_proj
    expected = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}.get(quant, "Linear")
    assert type(linear).__name__ == expected
    if quant in ("bf16", "fp16", "fp32"):
        assert linear.weight.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[quant]
    ids = loaded.tokenizer("hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.model(ids).logits
    assert logits.shape[-1] == len(loaded.tokenizer) and torch.isfinite(logits.float()).all()


def test_quantized_modes_use_less_memory(tiny_model_dir):
    sizes = {q: model_info(load_model(str(tiny_model_dir), q, device="cpu"))["memory_footprint_mb"]
             for q in ("fp32", "bf16")}
    assert sizes["bf16"] < sizes["fp32"] * 0.6


def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve(str(tmp_path / "nope"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json") as err:
        resolve(str(tmp_path))
    assert "config.json" in err.value.fix


def test_truncated_gguf(tmp_path):
    from studio.models import bundled_gguf

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(bundled_gguf().read_bytes()[:4096])
    with pytest.raises(ModelError, match="Cannot read the GGUF") as err:
        resolve(str(bad))
    assert "download it again" in err.value.fix


def test_garbage_gguf(tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(ModelError, match="GGUF"):
        resolve(str(bad))


def test_unknown_quant(tiny_model_dir):
    with pytest.raises(ModelError, match="Unknown quantization mode 'int3'"):
        load_model(str(tiny_model_dir), "int3")


def test_4bit_without_bitsandbytes(tiny_model_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what Python does when the import fails
    with pytest.raises(ModelError, match="needs bitsandbytes") as err:
        load_model(str(tiny_model_dir), "4bit")
    assert "bf16/fp32" in err.value.fix


def test_hub_id_offline_fails_fast(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(ModelError, match="not in the local cache"):
        resolve("some-org/some-model-that-is-not-cached")
    assert time.time() - start < 5


def test_hardware_detection():
    hw = hardware()
    assert hw.cpu_cores >= 1 and hw.ram_total_gb > 0
    assert "CPU" in hw.summary()


def test_bundled_is_converted_once(bundled_dir):
    import os

    assert (bundled_dir / "model.safetensors").is_file() and (bundled_dir / "tokenizer_config.json").is_file()
    mtime = os.path.getmtime(bundled_dir / "model.safetensors")
    assert resolve("bundled") == str(bundled_dir)
    assert os.path.getmtime(bundled_dir / "model.safetensors") == mtime
