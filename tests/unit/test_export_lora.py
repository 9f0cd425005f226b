"""An adapter for llama.cpp and Ollama without merging: llama.cpp's own convert_lora_to_gguf.py writes a GGUF
LoRA (read back here with the `gguf` package), beside a Modelfile FROM the base GGUF with ADAPTER; and a .gguf
base is named by the model inside it (general.name and the file's hash), so merging onto that very file
never warns of a base mismatch."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from ollama_like import parse_modelfile
from test_export import random_adapter

from studio import export
from studio.adapters import portable_base_name, validate_adapter
from studio.errors import ConfigError, ModelError

MODULES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
           "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


@pytest.fixture(autouse=True, scope="module")  # before tiny_gguf, which needs the converter too
def lora_converter():
    try:
        return export.lora_converter_script()
    except ModelError as exc:
        pytest.skip(f"llama.cpp's convert_lora_to_gguf.py is not installed ({exc}); `make gguf-tools` installs it")


def fields(path: Path) -> tuple[dict, dict]:
    """(metadata, {tensor name: float32 array in PyTorch's (out, in) order}) of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(list(reversed(t.shape.tolist())))
               for t in reader.tensors}
    return meta, tensors


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model as f16 GGUF, written once by llama.cpp's converter (as `studio export gguf` does)."""
    from studio.util import no_progress

    out = tmp_path_factory.mktemp("gguf") / "tiny-llama.f16.gguf"
    export._run_converter(tiny_model_dir, out, "f16", no_progress)
    return out


def test_adapter_exports_as_a_gguf_lora_with_a_modelfile(tiny_model_dir, tiny_gguf, workspace):
    from safetensors.numpy import load_file

    folder = random_adapter(tiny_model_dir, workspace / "adapters" / "rand")
    report = export.lora_gguf(str(tiny_model_dir), "rand", "rand-lora", base_gguf=str(tiny_gguf))
    out = Path(report["path"])
    meta, tensors = fields(out / export.LORA_FILE)
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 16.0
    assert meta["general.architecture"] == fields(tiny_gguf)[0]["general.architecture"] == "llama"
    want = {f"blk.{i}.{m}.weight.lora_{ab}" for i in range(2) for m in MODULES.values() for ab in "ab"}
    assert set(tensors) == want  # 2 layers x 7 linear modules x (A, B)
    trained = load_file(folder / "adapter_model.safetensors")
    for ab in ("A", "B"):  # v_proj is not permuted for RoPE: its matrices are the adapter's own, in f16
        got = tensors[f"blk.1.attn_v.weight.lora_{ab.lower()}"]
        np.testing.assert_allclose(got, trained[f"base_model.model.model.layers.1.self_attn.v_proj.lora_{ab}.weight"],
                                   atol=2e-3, rtol=2e-3)
    assert tensors["blk.0.attn_q.weight.lora_a"].shape == (8, 64)  # (rank, in) of a 64-wide model
    parsed = parse_modelfile((out / "Modelfile").read_text())
    assert parsed[:2] == [("from", str(tiny_gguf)), ("adapter", "./" + export.LORA_FILE)]
    assert not (out / export.BASE_FILE).exists()  # the base GGUF is used where it is, not copied
    assert report["llama_server"] == f"llama-server -m {tiny_gguf} --lora {out / export.LORA_FILE}"
    with pytest.raises(ConfigError, match="already exists"):
        export.lora_gguf(str(tiny_model_dir), "rand", "rand-lora", base_gguf=str(tiny_gguf))
    # A base given as an HF folder has no GGUF yet: the export writes base.f16.gguf beside the adapter.
    assert export._base_gguf(str(tiny_model_dir), None) is None


def test_a_gguf_base_is_named_by_its_model_and_hash_and_never_mismatches_itself(tiny_gguf, workspace):
    from gguf import GGUFReader

    from studio.adapters import _same_base
    from studio.jobs.worker import _set_base_name
    from studio.models import resolve

    model_gguf = workspace / "elsewhere" / "model.gguf"  # a user's copy under a generic file name
    model_gguf.parent.mkdir()
    shutil.copyfile(tiny_gguf, model_gguf)
    inner = GGUFReader(tiny_gguf).fields["general.name"].contents()
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()[:12]
    assert portable_base_name(str(model_gguf)) == portable_base_name(str(tiny_gguf)) == f"{inner} (gguf sha256:{sha})"
    assert inner == "Tiny Llama"  # from the model, not the file name "model"

    adapter = random_adapter(Path(resolve(str(model_gguf))), workspace / "adapters" / "from-gguf", scale=0.1)
    _set_base_name(adapter, portable_base_name(str(model_gguf)))  # what a training run from model.gguf writes
    assert validate_adapter(adapter, str(model_gguf)) == ""
    report = export.merge(str(model_gguf), "from-gguf", "merged-on-itself")
    assert not any("names its base" in n for n in report["notes"])
    # Same name inside, other bytes (another quantization): not the same base.
    assert not _same_base(f"{inner} (gguf sha256:{sha})", f"{inner} (gguf sha256:{'0' * 12})")
    assert _same_base("model", str(model_gguf))  # adapters from before named a .gguf base by its file stem


def test_an_adapter_with_trained_token_rows_is_sent_to_merge(tiny_model_dir, workspace):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=[1, 2])
    get_peft_model(base, config).save_pretrained(workspace / "adapters" / "rows")
    with pytest.raises(ConfigError, match="Merge it instead"):
        export.lora_gguf(str(tiny_model_dir), "rows", "rows-lora")
    assert not (workspace / "exports" / "rows-lora").exists()
