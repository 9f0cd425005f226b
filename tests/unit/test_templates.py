"""studio.templates and the parts around it that need no training: the generic fallback, portable
adapter names, GGUF refusals that come before anything is loaded, and estimates from any config."""

from __future__ import annotations

import json

import pytest

from studio import export, templates
from studio.adapters import portable_base_name
from studio.errors import ConfigError, ModelError


def _wordlevel_tokenizer():
    """A tokenizer with no chat template and no family's tokens: only the generic fallback fits it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "</s>", "hi", "there", "user", "assistant", "system", "Q", "A"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>", pad_token="</s>")


def test_generic_fallback_adds_its_markers_as_special_tokens_and_says_so():
    tok = _wordlevel_tokenizer()
    before = len(tok)
    choice = templates.prepare_tokenizer(tok)
    assert choice.source == "fallback" and choice.added_tokens == ["<|im_start|>", "<|im_end|>"]
    assert len(tok) == before + 2
    assert "added to the vocabulary" in choice.why() and "must learn it" in choice.why()
    ids = templates.encode(tok, [{"role": "user", "content": "hi"}])
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # one token, not six pieces of text
    assert tok.convert_tokens_to_ids("<|im_end|>") in choice.stop_ids and tok.eos_token_id in choice.stop_ids


def test_fallback_model_gets_rows_for_the_new_markers():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _wordlevel_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=None,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    templates.prepare_tokenizer(tok)
    templates.prepare_model(model, tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert model.generation_config.eos_token_id == templates.current(tok).stop_ids


def test_bundled_keeps_its_own_template_without_an_extra_bos(bundled_dir):
    from studio.models import load_tokenizer

    tok = load_tokenizer(str(bundled_dir))
    choice = templates.current(tok)
    assert choice.source == "tokenizer" and not choice.add_bos and choice.end_of_turn == "<|im_end|>"
    assert "own chat template" in templates.describe(tok)


def test_portable_base_names():
    assert portable_base_name("bundled") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_base_name("/home/me/models/my-llama") == "my-llama"
    assert portable_base_name("/home/me/gemma-3-270m-q4_k_m.gguf") == "gemma-3-270m-q4_k_m"
    assert portable_base_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"


def test_gguf_refuses_an_unsupported_architecture_before_loading(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()  # a config alone: had the export loaded weights, it would fail for another reason
    (folder / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(ModelError, match="does not support the architecture NoSuchModelForCausalLM"):
        export.to_gguf(folder, "odd", "f16")
    assert not list((export.paths.exports_dir()).glob("odd*"))


def test_gguf_q4_k_m_needs_llama_quantize(tmp_path, monkeypatch):
    monkeypatch.delenv("STUDIO_LLAMA_QUANTIZE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="llama-quantize"):
        export.to_gguf(tmp_path, "x", "q4_k_m")


def test_converter_knows_the_matrix_architectures():
    known = export.supported_architectures()
    for arch in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma2ForCausalLM",
                 "Gemma3ForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM"):
        assert arch in known


def test_estimate_reads_shapes_from_any_config(tmp_path):
    from studio.config import LoraSpec, TrainSpec
    from studio.presets import Shape, estimate_memory, model_shape

    config = {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "hidden_size": 64,
              "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
              "head_dim": 16, "vocab_size": 1000, "sliding_window": 32, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = Shape.of(model_shape(str(tmp_path)))
    assert shape.window == 32 and shape.kv_heads == 1 and shape.linears()["k_proj"] == (64, 16)
    lora, train = LoraSpec(r=8), TrainSpec(max_seq_len=256, micro_batch=1, gradient_checkpointing=False,
                                           packing=False, precision="fp32")
    windowed = estimate_memory(config, "fp32", lora, train, device="cuda").breakdown["activations"]
    full = estimate_memory({**config, "sliding_window": None}, "fp32", lora, train, device="cuda")
    assert windowed < full.breakdown["activations"]  # attention scores span the window, not the sequence


TOOL_USE = ("{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endfor %}"
            "TOOLS: {{ tools | length }}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")


def test_named_chat_templates_use_default_and_tool_use_when_tools_are_given(tiny_model_dir, tmp_path):
    """transformers keeps several named templates as a dict (chat_template.jinja + additional_chat_templates/*.jinja):
    the model's own `default` is used, never the fallback's new markers; `tool_use` where tools are given."""
    import shutil

    from transformers import AutoTokenizer

    from studio.data.render import apply_template
    from studio.models import load_tokenizer

    folder = shutil.copytree(tiny_model_dir, tmp_path / "named")
    tok = AutoTokenizer.from_pretrained(folder)
    own = tok.chat_template
    tok.chat_template = {"default": own, "tool_use": TOOL_USE}
    tok.save_pretrained(folder)
    assert (folder / "additional_chat_templates" / "tool_use.jinja").is_file()

    tok = load_tokenizer(str(folder))
    choice = templates.current(tok)
    assert choice.source == "tokenizer" and choice.template == own and not choice.added_tokens
    assert "own chat template" in templates.describe(tok)
    chat = [{"role": "user", "content": "Weather in Paris?"}]
    assert apply_template(tok, chat, add_generation_prompt=True) == tok.apply_chat_template(
        chat, chat_template=own, tokenize=False, add_generation_prompt=True)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {}}}]
    assert "TOOLS: 1" in apply_template(tok, chat, add_generation_prompt=True, tools=tools)
    tok.save_pretrained(tmp_path / "saved")  # an adapter folder keeps both templates
    assert (tmp_path / "saved" / "additional_chat_templates" / "tool_use.jinja").read_text() == TOOL_USE
