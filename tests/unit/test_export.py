"""Merge an adapter, zip it, write GGUF that transformers reads back, push to the Hub (offline: fails fast)."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
import torch

from studio import export
from studio.errors import AdapterError, ConfigError, ModelError

PROMPT = [{"role": "user", "content": "What helps a sore throat?"}]


def random_adapter(model_dir: Path, folder: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """A LoRA adapter whose B matrices are random (PEFT's init_lora_weights=False), so it changes outputs;
    `scale` shrinks them (a real model stays fluent under a small update)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    model.save_pretrained(folder)
    return folder


def greedy(model, tokenizer, n: int = 12):
    """(greedy token ids, logits of the prompt) for PROMPT."""
    from studio.inference import encode_chat

    ids = encode_chat(tokenizer, PROMPT)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist(), logits


@pytest.fixture
def merged(tiny_model_dir, workspace):
    random_adapter(tiny_model_dir, workspace / "adapters" / "rand")
    report = export.merge(str(tiny_model_dir), "rand", "tiny-merged")
    return Path(report["path"])


def test_merged_model_matches_base_plus_adapter(tiny_model_dir, merged, workspace):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    assert tok.chat_template  # the chat template travels with the merged folder
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    base_tokens, base_logits = greedy(base, tok)
    with_adapter = PeftModel.from_pretrained(base, str(workspace / "adapters" / "rand")).eval()
    want_tokens, want_logits = greedy(with_adapter, tok)
    got_tokens, got_logits = greedy(AutoModelForCausalLM.from_pretrained(merged).eval(), tok)
    assert not torch.allclose(base_logits, want_logits, atol=1e-3)  # the adapter does change the model
    assert got_tokens == want_tokens
    torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-4)
    assert (merged / export.MERGE_CARD).is_file()


def test_existing_export_target_is_never_overwritten_without_consent(tiny_model_dir, merged):
    before = (merged / "model.safetensors").stat().st_mtime
    with pytest.raises(ConfigError, match="already exists"):
        export.merge(str(tiny_model_dir), "rand", "tiny-merged")
    assert (merged / "model.safetensors").stat().st_mtime == before
    time.sleep(0.01)
    export.merge(str(tiny_model_dir), "rand", "tiny-merged", overwrite=True)
    assert (merged / "model.safetensors").stat().st_mtime > before


def test_merge_refuses_an_adapter_for_another_base(other_tiny_model_dir, tiny_model_dir, workspace):
    random_adapter(other_tiny_model_dir, workspace / "adapters" / "wide")
    with pytest.raises(AdapterError, match="does not fit"):
        export.merge(str(tiny_model_dir), "wide", "mismatch")
    assert not (workspace / "exports" / "mismatch").exists()


def test_merge_of_a_4bit_base_dequantizes_first_with_a_note(tiny_model_dir, workspace):
    random_adapter(tiny_model_dir, workspace / "adapters" / "rand")
    report = export.merge(str(tiny_model_dir), "rand", "from-4bit", quant="4bit")
    assert any("dequantized" in note for note in report["notes"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(report["path"])
    assert model.model.layers[0].self_attn.q_proj.weight.dtype in (torch.float32, torch.bfloat16, torch.float16)


def test_adapter_zip_holds_the_adapter_and_is_not_overwritten(tiny_model_dir, workspace):
    random_adapter(tiny_model_dir, workspace / "adapters" / "rand")
    path = export.export_adapter_zip("rand")
    names = zipfile.ZipFile(path).namelist()
    assert "rand/adapter_model.safetensors" in names and "rand/adapter_config.json" in names
    with pytest.raises(ConfigError, match="already exists"):
        export.export_adapter_zip("rand")
    assert export.export_adapter_zip("rand", overwrite=True) == path


def check_gguf_round_trip(merged: Path, qtype: str, name: str, same_tokens: int) -> None:
    """Write merged as GGUF, read it back with transformers' GGUF loader, compare with the merged model:
    the first `same_tokens` greedy tokens must be identical, the prompt's logits within the type's rounding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = export.to_gguf(merged, name, qtype)
    tok = AutoTokenizer.from_pretrained(merged)
    want_tokens, want_logits = greedy(AutoModelForCausalLM.from_pretrained(merged).eval(), tok)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    gguf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "What helps a sore throat? <|im_start|>user\nDrink warm tea."
    assert gguf_tok.encode(text) == tok.encode(text)
    assert gguf_tok.chat_template == tok.chat_template
    got_tokens, got_logits = greedy(loaded, tok)
    assert got_tokens[:same_tokens] == want_tokens[:same_tokens]
    tolerance = {"f16": 0.01, "q8_0": 0.05}[qtype]  # fp16 keeps ~1e-3 relative; q8_0 ~1/127 of each block's max
    assert float((got_logits - want_logits).abs().max()) < tolerance * float(want_logits.abs().max())


def test_gguf_loads_back_in_transformers_with_the_same_greedy_tokens(merged, workspace):
    check_gguf_round_trip(merged, "f16", "tiny.f16", same_tokens=12)
    assert (workspace / "exports" / "tiny.f16.gguf").is_file()
    # A random-weight model's logits are nearly tied, so q8_0 rounding may flip later tokens here;
    # tests/unit/test_export_bundled.py checks q8_0's greedy tokens on the real bundled model.
    check_gguf_round_trip(merged, "q8_0", "tiny.q8_0", same_tokens=1)


def test_gguf_of_an_existing_file_or_unknown_type_is_refused(merged):
    export.to_gguf(merged, "once", "f16")
    with pytest.raises(ConfigError, match="already exists"):
        export.to_gguf(merged, "once", "f16")
    with pytest.raises(ConfigError, match="Unknown GGUF type"):
        export.to_gguf(merged, "other", "q4_k")


def test_push_without_token_or_network_fails_fast(merged, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(merged.parent / "hf-home"))  # no stored login either
    start = time.time()
    with pytest.raises(ConfigError, match="token"):
        export.push_to_hub(merged, "someone/tiny")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with pytest.raises(ModelError, match="Hub"):
        export.push_to_hub(merged, "someone/tiny")
    with pytest.raises(ConfigError, match="user/name"):
        export.push_to_hub(merged, "no-slash")
    assert time.time() - start < 5
