"""The model matrix: tiny random-weight models of seven architectures, each with a tokenizer whose
vocabulary holds its family's special tokens, go through the studio's whole path: template choice
(BOS once, end of turn trained), loading in 4/8/16/32-bit, 2 training steps with the CPU recipe,
chat with base and adapter (generation stops on every end-of-turn id), merge, GGUF export through
llama.cpp's converter read back (tensor names, shapes, tokenizer metadata) and its logits compared
with transformers on the merged folder. docs/models.md tabulates what these tests show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from studio import export, templates
from studio.models import load_model, load_tokenizer

HIDDEN, LAYERS, HEADS, KV, HEAD_DIM, INTER = 64, 2, 4, 2, 16, 128

# architecture -> (config class, extra config, special tokens to add, bos, eos, keep the bundled template,
#                  expected template source/family, expected end-of-turn token)
ARCHS = {
    "llama": ("LlamaConfig", {}, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
              "<|begin_of_text|>", "<|eot_id|>", False, ("family", "llama3"), "<|eot_id|>"),
    "qwen2": ("Qwen2Config", {}, [], None, None, True, ("tokenizer", "own"), "<|im_end|>"),
    "qwen3": ("Qwen3Config", {}, [], None, None, False, ("family", "chatml"), "<|im_end|>"),
    "gemma2": ("Gemma2Config", {"query_pre_attn_scalar": HEAD_DIM}, ["<bos>", "<start_of_turn>", "<end_of_turn>"],
               "<bos>", "<eos>", False, ("family", "gemma"), "<end_of_turn>"),
    "gemma3": ("Gemma3TextConfig", {"query_pre_attn_scalar": HEAD_DIM}, ["<bos>", "<start_of_turn>",
               "<end_of_turn>"], "<bos>", "<eos>", False, ("family", "gemma"), "<end_of_turn>"),
    "mistral": ("MistralConfig", {"sliding_window": 64}, ["<s>", "</s>"], "<s>", "</s>", False,
                ("family", "mistral"), None),
    "phi3": ("Phi3Config", {"pad_token_id": None}, ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
             None, "<|end|>", False, ("family", "phi3"), "<|end|>"),
}
CONVO = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is two plus two?"},
         {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And three plus three?"},
         {"role": "assistant", "content": "Six."}]


def build(arch: str, out: Path, bundled_dir: Path) -> Path:
    """A tiny random model of `arch` and a tokenizer (the bundled BPE vocabulary plus the family's tokens)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cls_name, extra, specials, bos, eos, keep_template, _, _ = ARCHS[arch]
    tok = AutoTokenizer.from_pretrained(bundled_dir)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    for key, value in (("bos_token", bos), ("eos_token", eos)):
        if value:
            if value not in tok.get_vocab():
                tok.add_special_tokens({key: value})
            setattr(tok, key, value)
    if arch == "gemma2":
        # Gemma puts BOS in front of every text. (Only here: llama.cpp's converter recognises a BPE
        # pre-tokenizer by the hash of its output, and the bundled vocabulary's hash is known without BOS.)
        tok.add_bos_token = True
    if not keep_template:
        tok.chat_template = None
    tok.pad_token = tok.eos_token
    config = getattr(transformers, cls_name)(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM, max_position_embeddings=512,
        tie_word_embeddings=arch not in ("mistral", "phi3"), bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, **{"pad_token_id": tok.pad_token_id, **extra})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    if arch == "mistral":  # a Mistral vocabulary has no ChatML tokens (they would win as the family's evidence)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            text = (out / name).read_text()
            (out / name).write_text(text.replace("<|im_start|>", "<unused_0>").replace("<|im_end|>", "<unused_1>"))
    if arch == "phi3":  # Phi-4 style: llama.cpp's converter reads a GPT-2 BPE vocabulary when the class says so
        cfg = json.loads((out / "tokenizer_config.json").read_text())
        cfg["tokenizer_class"] = "GPT2Tokenizer"
        (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, bundled_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("matrix")
    return {arch: build(arch, root / f"tiny-{arch}", bundled_dir) for arch in ARCHS}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_template_bos_and_end_of_turn(models, arch):
    from studio.data.render import render_conversation

    tok = load_tokenizer(str(models[arch]))
    choice = templates.current(tok)
    assert (choice.source, choice.family) == ARCHS[arch][6]
    assert arch in ("qwen2",) or "no chat template" in choice.why()
    ids, mask = render_conversation(tok, CONVO, max_len=512)
    if choice.add_bos:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # BOS once, never twice
    else:  # nothing added: exactly the template's text (SmolLM's "BOS" is its own <|im_start|>)
        assert ids == tok(templates.apply(tok, CONVO), add_special_tokens=False)["input_ids"]
    assert ids[:2] != [tok.bos_token_id] * 2
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    end = ARCHS[arch][7]
    end_id = tok.convert_tokens_to_ids(end) if end else tok.eos_token_id
    assert trained.count(end_id) == 2  # both answers end with a trained end of turn
    assert end_id in choice.stop_ids and tok.eos_token_id in choice.stop_ids


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("quant", ["4bit", "8bit", "bf16"])
def test_loads_in_each_precision(models, arch, quant):
    loaded = load_model(str(models[arch]), quant, device="cpu")
    assert loaded.model.generation_config.eos_token_id == templates.current(loaded.tokenizer).stop_ids
    ids = templates.encode(loaded.tokenizer, CONVO[:2])
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits
    assert torch.isfinite(logits.float()).all()


def _train_two_steps(model_dir: Path, name: str) -> str:
    from studio.config import LoraSpec, ModelSpec, RunSpec, TrainSpec
    from studio.data import store
    from studio.jobs import manager, worker

    rows = [{"messages": CONVO}] * 6
    data = model_dir.parent / f"{name}.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    store.prepare(data, str(model_dir), name, max_len=128, eval_split=0.0)
    spec = RunSpec(name=name, dataset=name, model=ModelSpec(ref=str(model_dir), quant="fp32"),
                   lora=LoraSpec(r=4, alpha=8, dropout=0.0, target_modules="all-linear"),
                   train=TrainSpec(max_seq_len=128, micro_batch=1, grad_accum=1, lr=1e-3, warmup_ratio=0.0,
                                   max_steps=2, save_steps=100, eval_steps=0, gradient_checkpointing=False,
                                   optimizer="adamw_torch", precision="fp32", packing=True))
    run_dir = manager.create(spec)
    assert worker.train(run_dir, foreground=True) == "completed"
    adapter = run_dir / "adapter"
    assert (adapter / "chat_template.jinja").read_text() == templates.current(load_tokenizer(str(model_dir))).template
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == model_dir.name  # the folder's name, not this machine's path
    return f"run:{run_dir.name}"


def _gguf_read_back(path: Path, merged: Path, tok) -> None:
    import gguf
    from transformers import AutoModelForCausalLM

    reader = gguf.GGUFReader(str(path))
    names = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.0.attn_q.weight" in names or "blk.0.attn_qkv.weight" in names
    assert names["token_embd.weight"] == (HIDDEN, len(tok))  # GGUF lists dims innermost first
    tokens = reader.get_field("tokenizer.ggml.tokens")
    assert len(tokens.data) == len(tok)
    eos = reader.get_field("tokenizer.ggml.eos_token_id")
    assert int(eos.parts[eos.data[0]][0]) == tok.eos_token_id
    template = reader.get_field("tokenizer.chat_template")
    assert bytes(template.parts[template.data[0]]).decode() == templates.current(tok).template
    want = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    if want.config.model_type in ("qwen2", "qwen3", "gemma3_text"):
        # transformers' GGUF loader rebuilds these configs with defaults for what it does not read (Qwen's
        # head_dim 128, Gemma-3's query_pre_attn_scalar), wrong for tiny shapes: compare the written tensors
        # with the merged weights instead (f16 rounding). The real Gemma-3 270M matches llama.cpp token for
        # token (docs/models.md).
        tensors = {t.name: t for t in reader.tensors}
        for gguf_name, module in (("token_embd.weight", want.model.embed_tokens),
                                  ("blk.0.ffn_down.weight", want.model.layers[0].mlp.down_proj),
                                  ("blk.1.attn_v.weight", want.model.layers[1].self_attn.v_proj)):
            data = torch.tensor(tensors[gguf_name].data.astype("float32")).reshape(module.weight.shape)
            assert torch.allclose(data, module.weight.detach(), atol=2e-3, rtol=1e-2)
        return
    # The GGUF read by transformers' own GGUF loader gives the merged folder's logits (f16 rounding).
    got = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([templates.encode(tok, CONVO[:2])])
    with torch.no_grad():
        a, b = want(input_ids=ids).logits, got(input_ids=ids).logits
    assert float((a - b).abs().max()) < 0.02 * float(a.abs().max()) + 1e-3


@pytest.mark.parametrize("arch", list(ARCHS))
def test_train_chat_merge_and_gguf(models, arch, workspace):
    from peft import PeftModel

    from studio.inference import GenerationSettings, generate_kwargs

    adapter = _train_two_steps(models[arch], f"m-{arch}")
    loaded = load_model(str(models[arch]), "fp32", device="cpu")
    choice = templates.current(loaded.tokenizer)
    config = json.loads((export.adapter_path(adapter) / "adapter_config.json").read_text())
    rows = [loaded.tokenizer.convert_tokens_to_ids(t) for t in choice.trained_tokens]
    assert (config["trainable_token_indices"] or []) == (rows or [])  # a family's turn tokens: rows trained
    assert (choice.source == "family" and arch != "mistral") == bool(rows)  # Mistral's turns are plain text
    kwargs = generate_kwargs(loaded.tokenizer, GenerationSettings(max_new_tokens=4, temperature=0))
    assert kwargs["eos_token_id"] == templates.current(loaded.tokenizer).stop_ids  # chat stops on every end of turn
    ids = torch.tensor([templates.encode(loaded.tokenizer, CONVO[:2])])
    tuned = PeftModel.from_pretrained(loaded.model, str(export.adapter_path(adapter)))
    for model in (tuned, tuned.get_base_model()):
        assert model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs).shape[1] > ids.shape[1]
    report = export.merge(str(models[arch]), adapter, f"{arch}-merged")
    merged = Path(report["path"])
    gen = json.loads((merged / "generation_config.json").read_text())
    assert gen["eos_token_id"] == templates.current(loaded.tokenizer).stop_ids
    assert (merged / "chat_template.jinja").is_file()
    if arch in ("gemma2", "phi3"):  # llama.cpp's Gemma-2/Phi-3 converters read a SentencePiece tokenizer.model
        with pytest.raises(Exception, match="tokenizer.model"):  # refused up front, before the converter runs
            export.to_gguf(merged, f"{arch}.f16", "f16")
        return
    if arch == "qwen2":  # saved as Qwen2Tokenizer, the bundled vocabulary gets Qwen's split regex: a BPE
        with pytest.raises(Exception, match="pre-tokenizer"):  # llama.cpp does not know, said plainly
            export.to_gguf(merged, f"{arch}.f16", "f16")
        return
    path = export.to_gguf(merged, f"{arch}.f16", "f16")
    modelfile = path.with_suffix(".Modelfile").read_text()
    assert f"FROM ./{path.name}" in modelfile and "PARAMETER stop" in modelfile
    _gguf_read_back(path, merged, load_tokenizer(str(merged)))
