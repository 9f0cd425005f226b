"""The serving decode step (studio/serving/decode.py) against the model's own forward: bit-identical logits and
cache for Llama and Qwen2 (attention biases), one row or left-padded rows, fp32 or q8 weights, with or without a
LoRA adapter; the architectures and settings it does not cover go through the model's forward; and the engine
really decodes through it, with the answer `model.generate` gives."""

from __future__ import annotations

import copy

import pytest
import torch

from studio.serving import decode


def _qwen2(tiny_model_dir, **extra):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **extra)
    torch.manual_seed(1)
    return Qwen2ForCausalLM(config).eval()


def _llama(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _prefill(model, prompts: list[list[int]]):
    """The scheduler's admission: left-padded prompts, their cache, mask, next positions and first tokens."""
    from transformers import DynamicCache

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, past_key_values=cache)
    return cache, mask, mask.sum(-1), out.logits[:, -1].argmax(-1)


def _both_steps(model, prompts, steps: int = 3, base_only: bool = False):
    """Decode `steps` tokens twice from one prefill: the model's forward, then the lean step."""
    cache, mask, positions, last = _prefill(model, prompts)
    lean_cache = copy.deepcopy(cache)
    lean = decode.lean_model(model)
    assert lean is not None
    results = []
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        with torch.inference_mode():
            reference = model(input_ids=last[:, None], attention_mask=mask, position_ids=positions[:, None],
                              use_cache=True, past_key_values=cache, logits_to_keep=1,
                              cache_position=torch.tensor([mask.shape[1] - 1])).logits
            mine = decode.step(lean, lean_cache.layers, last, positions, mask, base_only=base_only)
        results.append((reference, mine))
        positions, last = positions + 1, reference[:, -1].argmax(-1)
    return results, cache, lean_cache


PROMPTS = {"one row": [[5, 17, 99, 3, 42]], "padded rows": [[5, 17, 99, 3, 42], [8, 9], [300, 301, 302]]}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("quant", ["fp32", "q8"])
@pytest.mark.parametrize("rows", list(PROMPTS))
def test_the_lean_step_gives_the_models_logits_and_cache_bit_for_bit(tiny_model_dir, arch, quant, rows):
    from studio import q8

    model = _llama(tiny_model_dir) if arch == "llama" else _qwen2(tiny_model_dir)
    if quant == "q8":
        q8.quantize(model)
    if quant == "q8":
        assert "int8_q_proj" in model.model.layers[0].self_attn.__dict__  # the fused route below is q8's
    results, cache, lean_cache = _both_steps(model, PROMPTS[rows], base_only=True)
    for reference, mine in results:
        assert torch.equal(reference, mine)
    for theirs, ours in zip(cache.layers, lean_cache.layers, strict=True):
        assert torch.equal(theirs.keys, ours.keys) and torch.equal(theirs.values, ours.values)


@pytest.mark.parametrize("quant", ["fp32", "q8"])
def test_the_lean_step_runs_a_lora_adapter_through_peft_s_own_layers(tiny_model_dir, quant):
    from peft import LoraConfig, get_peft_model

    from studio import q8

    base = _llama(tiny_model_dir)
    if quant == "q8":
        q8.quantize(base)
    torch.manual_seed(3)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                            target_modules="all-linear")).eval()
    results, _, _ = _both_steps(model, PROMPTS["padded rows"])
    for reference, mine in results:
        assert torch.equal(reference, mine)
    with model.disable_adapter():  # the base's rows: q8's fused projections under PEFT's (idle) layers
        base_results, _, _ = _both_steps(model, PROMPTS["padded rows"], base_only=True)
    for reference, mine in base_results:
        assert torch.equal(reference, mine)
    assert not torch.allclose(base_results[0][0], results[0][0])  # the adapter really is in those logits


def test_what_the_lean_step_does_not_cover_goes_through_the_models_forward(tiny_model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    assert decode.lean_model(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2))) is None
    assert decode.lean_model(_qwen2(tiny_model_dir, use_sliding_window=True, sliding_window=16)) is None
    eager = _llama(tiny_model_dir)
    eager.config._attn_implementation = "eager"
    assert decode.lean_model(eager) is None


def test_the_engine_decodes_through_the_lean_step_with_generates_answer(tiny_model_dir):
    from studio.inference import Engine, GenerationSettings, encode_chat, sampling_of

    engine = Engine(str(tiny_model_dir), "fp32")
    ids = encode_chat(engine.tokenizer, [{"role": "user", "content": "Name three colours."}])
    settings = GenerationSettings(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0)
    request = engine.submit(ids[0].tolist(), None, sampling_of(settings))
    "".join(request.stream())
    assert engine.lean_steps == len(request.tokens) - 1  # every token after the prefill's first
    with torch.inference_mode():
        out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                    do_sample=False, pad_token_id=engine.pad_id)
    assert request.tokens == out[0, ids.shape[1]:].tolist()[:len(request.tokens)]
    assert len(request.tokens) == 12 or request.tokens[-1] in engine.stop_ids
