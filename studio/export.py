"""Ship a fine-tune: merge an adapter into its base, zip an adapter, write GGUF, push to the Hub.

Everything lands under <workspace>/exports/ and nothing there is overwritten without consent
(`overwrite=True`, the --overwrite flag, the "Overwrite" box in the Export tab).

GGUF files are written with gguf-py (the llama.cpp project's own writer) in the layout
llama.cpp's convert_hf_to_gguf.py produces for Llama-architecture models: the same tensor names
(gguf.get_tensor_name_map), q/k rows permuted for llama.cpp's rotary layout, and the tokenizer
stored as a GPT-2-style BPE vocabulary with its merges and chat template. llama.cpp, Ollama and
transformers' GGUF loader (`from_pretrained(folder, gguf_file=name)`) all read it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from studio import paths
from studio.errors import ConfigError, ModelError
from studio.util import Progress, write_json_atomic
from studio.util import no_progress as _no_progress

GGUF_TYPES = ("f16", "q8_0")  # q8_0: 8-bit blocks of 32 weights with one fp16 scale (about 1.06 bytes/weight)
MERGE_CARD = "merge.json"


def target_dir(name: str, overwrite: bool = False, suffix: str = "") -> Path:
    """exports/<name><suffix>, refused when it exists and overwrite is off."""
    out = paths.exports_dir() / (paths.check_name(name, "export name") + suffix)
    if out.exists() and not overwrite:
        raise ConfigError(f"The export target {out} already exists; it was left untouched.",
                          "Choose another name, or allow overwriting (--overwrite / the Overwrite box).")
    return out


def _replace(tmp: Path, out: Path) -> None:
    """Move a finished temporary folder or file into place (the old target is removed only now)."""
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    tmp.rename(out)


# ---------------------------------------------------------------- merge


def adapter_path(adapter: str) -> Path:
    """A registry name ("run:<id>" or an imported name) or a folder holding a PEFT adapter."""
    folder = Path(adapter).expanduser()
    if (folder / "adapter_config.json").is_file():
        return folder
    from studio.adapters import get_adapter

    return get_adapter(adapter).path


def load_merged(ref: str, adapter: str, quant: str = "fp32", progress: Progress = _no_progress):
    """(merged model, tokenizer, notes): the base with the adapter's update added to its weights."""
    from peft import PeftModel

    from studio.adapters import validate_adapter
    from studio.models import load_model

    folder = adapter_path(adapter)
    notes = []
    loaded = load_model(ref, quant, progress=progress)
    model = loaded.model
    if quant in ("4bit", "8bit"):
        # Merging into quantized weights would round the update away: dequantize the very weights the
        # adapter was trained against to 16/32-bit, then merge.
        model = model.dequantize()
        notes.append(f"The {quant} base was dequantized to {str(model.dtype).replace('torch.', '')} before "
                     "merging; the merged model is that size on disk.")
    validate_adapter(folder, model)
    progress(0.5, f"Merging {folder.name} into {ref}...")
    model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    model.eval()
    return model, loaded.tokenizer, notes


def merge(ref: str, adapter: str, out_name: str, quant: str = "fp32", overwrite: bool = False,
          progress: Progress = _no_progress) -> dict:
    """Merge `adapter` into `ref` and save a full HF folder (weights, config, tokenizer, chat template)."""
    out = target_dir(out_name, overwrite)
    start = time.time()
    model, tokenizer, notes = load_merged(ref, adapter, quant, progress)
    progress(0.8, f"Saving {out}...")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)  # tokenizer_config.json / chat_template.jinja carry the chat template
    card = {"base_model": ref, "adapter": str(adapter), "quant_loaded": quant, "notes": notes,
            "dtype": str(model.dtype).replace("torch.", ""), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": round(time.time() - start, 1)}
    write_json_atomic(tmp / MERGE_CARD, card)
    _replace(tmp, out)
    record_with_run(adapter, {"kind": "merge", "path": str(out), **card})
    progress(1.0, f"Merged model saved to {out}.")
    return {**card, "path": str(out)}


def record_with_run(adapter: str, entry: dict) -> None:
    """Append an export to runs/<id>/exports.jsonl when the adapter came from a training run."""
    folder = adapter_path(adapter)
    if folder.name == "adapter" and folder.parent.parent == paths.runs_dir():
        with open(folder.parent / "exports.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=str) + "\n")


def export_adapter_zip(adapter: str, overwrite: bool = False) -> Path:
    """The adapter (config, safetensors, card, README) as exports/<name>.zip."""
    from studio.adapters import export_zip

    target_dir(adapter.replace(":", "-"), overwrite, suffix=".zip")
    return export_zip(adapter, overwrite)


# ---------------------------------------------------------------- GGUF


def _permute(weights, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's rotary layout for q/k rows (convert_hf_to_gguf.py LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _gguf_tokenizer(writer, tokenizer) -> None:
    """The BPE vocabulary, merges, special ids and chat template, as llama.cpp's 'gpt2' tokenizer model."""
    import gguf

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ModelError(f"GGUF export supports byte-level BPE tokenizers; this one is {model.get('type')}.",
                         "Use llama.cpp's convert_hf_to_gguf.py on the merged folder for this model.")
    vocab = {**model["vocab"], **{t.content: i for i, t in tokenizer.added_tokens_decoder.items()}}
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for i, added in tokenizer.added_tokens_decoder.items():
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    # The pre-tokenizer name llama.cpp keys its split regex on; SmolLM has its own, others the GPT-2 default.
    writer.add_tokenizer_pre("smollm" if "smollm" in str(tokenizer.name_or_path).lower() else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        if getattr(tokenizer, key, None) is not None:
            add(int(getattr(tokenizer, key)))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _gguf_config(writer, config, qtype: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(Path(str(config.name_or_path or "model")).name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if qtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return params.get("rope_theta") or getattr(config, "rope_theta", 10000.0)


def _gguf_tensor(name: str, data, qtype: str):
    """(array, raw dtype): norms and other 1-D tensors stay f32, as llama.cpp keeps them."""
    import gguf
    import numpy as np

    if data.ndim == 1:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype == "q8_0" and data.shape[-1] % 32 == 0:  # Q8_0 blocks are 32 values along a row
        return gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), \
            gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def to_gguf(model_dir: str | Path, out_name: str, qtype: str = "f16", overwrite: bool = False,
            progress: Progress = _no_progress) -> Path:
    """Write the HF model folder `model_dir` (e.g. a merged model) as exports/<out_name>.gguf."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if qtype not in GGUF_TYPES:
        raise ConfigError(f"Unknown GGUF type {qtype!r}.", f"Use one of: {', '.join(GGUF_TYPES)}.")
    out = target_dir(out_name, overwrite, suffix=".gguf")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = model.config
    if config.model_type not in ("llama", "mistral"):
        raise ModelError(f"GGUF export here supports Llama-architecture models, not {config.model_type!r}.",
                         "Use llama.cpp's convert_hf_to_gguf.py on the merged folder for this architecture.")
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _gguf_config(writer, config, qtype)
    _gguf_tokenizer(writer, tokenizer)
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # llama.cpp reuses token_embd for the output when output is absent
    for i, (hf_name, tensor) in enumerate(state.items()):
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = name_map.get_name(base)
        if gguf_name is None:
            raise ModelError(f"The tensor {hf_name} has no GGUF name.", "Use llama.cpp's convert_hf_to_gguf.py.")
        data = tensor.detach().float().numpy()
        if base.endswith("self_attn.q_proj"):
            data = _permute(data, config.num_attention_heads, config.num_attention_heads)
        elif base.endswith("self_attn.k_proj"):
            data = _permute(data, config.num_attention_heads, config.num_key_value_heads)
        array, raw = _gguf_tensor(hf_name, data, qtype)
        writer.add_tensor(f"{gguf_name}.{suffix}", array, raw_dtype=raw)
        progress(0.9 * (i + 1) / len(state), f"GGUF {qtype}: {gguf_name}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _replace(tmp, out)
    progress(1.0, f"Wrote {out} ({out.stat().st_size / 2**20:.0f} MiB).")
    return out


# ---------------------------------------------------------------- Hugging Face Hub


def push_to_hub(folder: str | Path, repo_id: str, token: str | None = None, private: bool = True,
                progress: Progress = _no_progress) -> str:
    """Upload a merged model folder, an adapter folder or a single file; returns the repo URL.

    Fails in seconds, with a clear message, without a token or without a network.
    """
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    if not folder.exists():
        raise ConfigError(f"There is nothing to push at {folder}.", "Export the model or adapter first.")
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise ConfigError(f"The repo id {repo_id!r} is not 'user/name'.", "Use e.g. yourname/smollm2-medical.")
    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise ConfigError("Pushing to the Hub needs a Hugging Face token, and none is set.",
                          "Create a write token at huggingface.co/settings/tokens, then set HF_TOKEN or run "
                          "`huggingface-cli login`.")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelError("HF_HUB_OFFLINE=1 is set, so the Hub cannot be reached.",
                         "Unset HF_HUB_OFFLINE on a machine with a network, then push again.")
    api = HfApi(token=token)
    try:
        progress(0.05, "Checking the token...")
        api.whoami()
        progress(0.2, f"Creating {repo_id}...")
        api.create_repo(repo_id, private=private, exist_ok=True)
        progress(0.4, f"Uploading {folder.name}...")
        if folder.is_dir():
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), ignore_patterns=["*.partial"])
        else:
            api.upload_file(repo_id=repo_id, path_or_fileobj=str(folder), path_in_repo=folder.name)
    except Exception as exc:  # noqa: BLE001 - network, auth and HTTP errors all end the same way
        raise ModelError(f"Pushing to {repo_id} failed ({type(exc).__name__}: {str(exc)[:200]}).",
                         "Check the network, that the token can write, and the repo id.") from exc
    progress(1.0, f"Pushed to https://huggingface.co/{repo_id}")
    return f"https://huggingface.co/{repo_id}"

