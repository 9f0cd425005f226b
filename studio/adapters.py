"""Adapter registry on disk: adapters from training runs plus adapters the user imports.

- A training run saves its adapter at `<workspace>/runs/<run_id>/adapter/`; it is listed as
  "run:<run_id>" and deleted with its run.
- An imported adapter lives at `<workspace>/adapters/<name>/`; it is listed by its name.

Both folders hold a standard PEFT adapter (adapter_config.json + adapter_model.safetensors), a
README.md model card and card.json (base model, dataset, LoRA rank/alpha, metrics, created).
Adapters load from safetensors only: pickled `.bin`/`.pt` files are refused, zips are checked
for path traversal and size before anything is extracted, and `validate_adapter` compares the
adapter's tensor shapes and target modules with the base it is meant for.
"""

from __future__ import annotations

import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from studio import paths
from studio.errors import AdapterError
from studio.util import read_json, write_json_atomic

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "card.json"
README_FILE = "README.md"
RUN_PREFIX = "run:"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # torch.load would run code
TEMPLATE_FILE = "chat_template.jinja"  # the template the adapter was trained with (studio.templates)
KEEP_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, README_FILE, TEMPLATE_FILE)  # all an import copies
# A rank-64 adapter on every linear layer of a 70B model is about 1.7 GB in fp16; 4 GiB leaves room
# for fp32 copies and refuses zip bombs long before they fill a disk.
MAX_ADAPTER_BYTES = 4 * 2**30
MAX_ZIP_MEMBERS = 100  # an adapter zip holds a handful of files; thousands mean something else
MAX_COMPRESSION_RATIO = 200  # safetensors barely compress; a 200x ratio is a zip bomb's signature
METRICS_HEADING = "## Metrics"
_TABLE_RE = re.compile(r"^\| metric \| value \|\n\|---\|---\|\n(?:\|.*\|(?:\n|$))*", re.MULTILINE)


@dataclass
class AdapterInfo:
    name: str  # "run:<run_id>" or the imported name
    path: Path  # the folder holding adapter_config.json and adapter_model.safetensors
    card: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return "run" if self.name.startswith(RUN_PREFIX) else "imported"

    @property
    def base_model(self) -> str:
        return str(self.card.get("base_model") or self.card.get("base_model_path") or "unknown")

    def summary(self) -> dict:
        """The card as flat rows for a table: base, dataset, rank, alpha, metrics."""
        lora = self.card.get("lora") or {}
        rows = {"name": self.name, "source": self.source, "base_model": self.base_model,
                "dataset": self.card.get("dataset", ""), "r": lora.get("r", self.card.get("r", "")),
                "alpha": lora.get("alpha", self.card.get("alpha", "")), "created": self.card.get("created", "")}
        for key, value in (self.card.get("metrics") or {}).items():
            rows[f"metrics.{key}"] = round(value, 4) if isinstance(value, float) else value
        return rows


# ---------------------------------------------------------------- listing


def _is_adapter_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def _info(name: str, path: Path) -> AdapterInfo:
    card = read_json(path / CARD_FILE, default=None)
    if not isinstance(card, dict):
        card = card_from_config(path)
    return AdapterInfo(name=name, path=path, card=card)


def list_adapters() -> list[AdapterInfo]:
    """Every adapter in the workspace: training runs first (newest first), then imported ones by name."""
    found = []
    runs = [p for p in paths.runs_dir().iterdir() if _is_adapter_dir(p / "adapter")]
    for run in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True):
        found.append(_info(RUN_PREFIX + run.name, run / "adapter"))
    for folder in sorted(paths.adapters_dir().iterdir()):
        if folder.is_dir() and _is_adapter_dir(folder):
            found.append(_info(folder.name, folder))
    return found


def adapter_names() -> list[str]:
    return [a.name for a in list_adapters()]


def trained_precision(name: str | None) -> str | None:
    """How the base was held when this adapter was trained (its card's quant: 4bit, fp32, ...), if known."""
    if not name:
        return None
    try:
        quant = get_adapter(name).card.get("quant")
    except AdapterError:
        return None
    return quant if isinstance(quant, str) else None


def get_adapter(name: str) -> AdapterInfo:
    """One adapter by its registry name ("run:<id>" or an imported name)."""
    if name.startswith(RUN_PREFIX):
        run_id = paths.check_name(name[len(RUN_PREFIX):], "run id")
        path = paths.runs_dir() / run_id / "adapter"
    else:
        path = paths.adapters_dir() / paths.check_name(name, "adapter name")
    if not _is_adapter_dir(path):
        known = ", ".join(adapter_names()) or "none yet"
        raise AdapterError(f"There is no adapter named {name!r} (known: {known}).",
                           "Train one in the Train tab or import one, then pick it from the list.")
    return _info(name, path)


# ---------------------------------------------------------------- checking files


def check_files(folder: Path) -> None:
    """The folder holds a safetensors PEFT adapter and no pickles; raises AdapterError otherwise."""
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise AdapterError(f"{folder} holds pickled weights ({', '.join(pickles)}); loading a pickle can run "
                           "arbitrary code, so the studio refuses it.",
                           "Convert the adapter to safetensors (load it in PEFT and save_pretrained with "
                           "safe_serialization=True) and import adapter_model.safetensors instead.")
    if not (folder / CONFIG_FILE).is_file():
        raise AdapterError(f"{folder} has no {CONFIG_FILE}, so it is not a PEFT adapter.",
                           f"Import the folder that PEFT's save_pretrained wrote ({CONFIG_FILE} + {WEIGHTS_FILE}).")
    if not (folder / WEIGHTS_FILE).is_file():
        raise AdapterError(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE}.",
                           f"Add the {WEIGHTS_FILE} file saved with the adapter (safetensors only).")
    config = read_json(folder / CONFIG_FILE)
    if not isinstance(config, dict) or "peft_type" not in config:
        raise AdapterError(f"{folder / CONFIG_FILE} is not a valid PEFT adapter config (no peft_type).",
                           "Use the adapter_config.json that PEFT's save_pretrained wrote.")
    if config["peft_type"] != "LORA":
        raise AdapterError(f"The adapter in {folder} is {config['peft_type']}, not LoRA.",
                           "The studio loads LoRA adapters; train or import a LoRA adapter.")
    if config.get("use_dora"):  # PEFT refuses per-row adapter_names for DoRA: it cannot share a mixed batch
        raise AdapterError(f"The adapter in {folder} is a DoRA adapter (use_dora: true); the studio serves plain "
                           "LoRA only, batched with other users' adapters, and PEFT cannot batch DoRA that way.",
                           "Merge it into its base with PEFT (merge_and_unload) and load the merged model, or "
                           "train a plain LoRA adapter (the studio's default).")


def _check_zip(zf: zipfile.ZipFile, source: Path) -> list[zipfile.ZipInfo]:
    """Refuse traversal, links, pickles, bombs and oversize archives before extracting anything."""
    members = zf.infolist()
    if len(members) > MAX_ZIP_MEMBERS:
        raise AdapterError(f"{source.name} holds {len(members)} entries; an adapter zip holds a few files.",
                           "Zip only the adapter folder (adapter_config.json, adapter_model.safetensors).")
    total = 0
    for m in members:
        parts = Path(m.filename.replace("\\", "/")).parts
        if m.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise AdapterError(f"{source.name} has an unsafe entry {m.filename!r} that would be written outside "
                               "the adapter folder; nothing was extracted.",
                               "Re-create the zip from the adapter folder itself (no '../' or absolute paths).")
        if (m.external_attr >> 16) & 0o170000 == 0o120000:  # the Unix mode bits of a symbolic link
            raise AdapterError(f"{source.name} has a symbolic link {m.filename!r}; nothing was extracted.",
                               "Zip the real files, not links.")
        if Path(m.filename).suffix.lower() in PICKLE_SUFFIXES:
            raise AdapterError(f"{source.name} holds pickled weights ({m.filename}); loading a pickle can run "
                               "arbitrary code, so the studio refuses it.",
                               "Export the adapter with safetensors (adapter_model.safetensors) and zip that.")
        if m.compress_size and m.file_size / m.compress_size > MAX_COMPRESSION_RATIO:
            raise AdapterError(f"{source.name}: {m.filename} expands {m.file_size / m.compress_size:.0f}x, "
                               "like a zip bomb; nothing was extracted.", "Zip the adapter files as they are.")
        total += m.file_size
    if total > MAX_ADAPTER_BYTES:
        raise AdapterError(f"{source.name} would extract to {total / 2**30:.1f} GiB, over the "
                           f"{MAX_ADAPTER_BYTES / 2**30:.0f} GiB limit for an adapter.",
                           "Check that the zip holds only a LoRA adapter, not a full model.")
    configs = [m for m in members if Path(m.filename).name == CONFIG_FILE]
    if len(configs) != 1:
        raise AdapterError(f"{source.name} holds {len(configs)} {CONFIG_FILE} files; expected exactly one.",
                           "Zip one adapter folder per file.")
    prefix = str(Path(configs[0].filename).parent)
    return [m for m in members if str(Path(m.filename).parent) == prefix and Path(m.filename).name in KEEP_FILES]


# ---------------------------------------------------------------- importing, exporting, deleting


def _collect(src, staging: Path) -> None:
    """Copy the adapter files from a folder, a zip, or a list of files into `staging`."""
    if isinstance(src, (list, tuple)):
        files = [Path(f) for f in src]
        if len(files) == 1 and files[0].suffix.lower() == ".zip":
            return _collect(files[0], staging)
        for f in files:
            if f.suffix.lower() in PICKLE_SUFFIXES:
                raise AdapterError(f"{f.name} is a pickle; loading it can run arbitrary code, so it is refused.",
                                   "Import adapter_model.safetensors and adapter_config.json instead.")
            if not f.is_file():
                raise AdapterError(f"{f} does not exist.", "Check the file paths.")
            name = f.name if f.name in KEEP_FILES else _guess_name(f)
            shutil.copyfile(f, staging / name)
        return None
    src = Path(src)
    if src.is_dir():
        check_files(src)  # refuses pickles in the source folder too
        for name in KEEP_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, staging / name)
        return None
    if src.is_file() and src.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(src) as zf:
                for m in _check_zip(zf, src):
                    with zf.open(m) as fin, open(staging / Path(m.filename).name, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
        except zipfile.BadZipFile as exc:
            raise AdapterError(f"{src.name} is not a readable zip file ({exc}).", "Re-create the zip.") from exc
        return None
    raise AdapterError(f"Cannot import {src}: give an adapter folder, a .zip, or the two files "
                       f"{CONFIG_FILE} and {WEIGHTS_FILE}.", "Check the path.")


def _guess_name(f: Path) -> str:
    """Uploads get temporary names; recognise the two adapter files by their extension."""
    if f.suffix == ".safetensors":
        return WEIGHTS_FILE
    if f.suffix == ".json":
        return CONFIG_FILE
    raise AdapterError(f"{f.name} is not an adapter file.", f"Import {CONFIG_FILE} and {WEIGHTS_FILE}.")


def import_adapter(src, name: str, base_model=None) -> AdapterInfo:
    """Copy an adapter (folder, zip, or [config, weights] files) into the workspace as `name`.

    With `base_model` (a model reference or a loaded model) the adapter is also checked to fit it.
    """
    name = paths.check_name(name, "adapter name")
    dest = paths.adapters_dir() / name
    if dest.exists():
        raise AdapterError(f"An adapter named {name!r} already exists.", "Choose another name or delete the old one.")
    staging = paths.adapters_dir() / f".{name}.importing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _collect(src, staging)
        check_files(staging)
        warning = validate_adapter(staging, base_model) if base_model is not None else ""
        card = read_json(staging / CARD_FILE, default=None)
        card = card if isinstance(card, dict) else card_from_config(staging)
        if warning:
            card["import_warning"] = warning
        card.setdefault("imported", time.strftime("%Y-%m-%d %H:%M:%S"))
        write_json_atomic(staging / CARD_FILE, card)
        if not (staging / README_FILE).is_file():
            (staging / README_FILE).write_text(card_markdown(name, card), encoding="utf-8")
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return get_adapter(name)


def export_zip(name: str, overwrite: bool = False) -> Path:
    """Zip one adapter (config, safetensors, card, README) into exports/<name>.zip; an existing zip is
    refused unless `overwrite`."""
    info = get_adapter(name)
    out = paths.exports_dir() / f"{name.replace(':', '-')}.zip"
    if out.exists() and not overwrite:
        raise AdapterError(f"{out} already exists; it was left untouched.",
                           "Delete or rename it first, or allow overwriting (--overwrite / the Overwrite box).")
    tmp = out.with_suffix(".zip.partial")
    folder = out.stem
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in KEEP_FILES:
            if (info.path / file).is_file():
                zf.write(info.path / file, f"{folder}/{file}")
    tmp.replace(out)
    return out


def delete_adapter(name: str) -> None:
    """Delete an imported adapter (run adapters go with their run, in the Train tab)."""
    if name.startswith(RUN_PREFIX):
        raise AdapterError(f"{name} belongs to a training run and is deleted with that run.",
                           "Delete the run in the Train tab, or export the adapter first.")
    info = get_adapter(name)
    shutil.rmtree(info.path)  # engines in this process detach it: the Chat tab calls inference.forget_adapter,
    # and every engine's watcher notices a deleted or replaced adapter within a second


# ---------------------------------------------------------------- cards


def card_from_config(folder: Path) -> dict:
    """A card for an adapter that came without one, from what adapter_config.json says."""
    config = read_json(folder / CONFIG_FILE, default={}) or {}
    return {"base_model": config.get("base_model_name_or_path") or "unknown", "dataset": "unknown",
            "lora": {"r": config.get("r"), "alpha": config.get("lora_alpha")}, "metrics": {},
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((folder / CONFIG_FILE).stat().st_mtime))}


def card_markdown(name: str, card: dict) -> str:
    lora = card.get("lora") or {}
    lines = [f"# {name}", "", "A LoRA adapter made or imported with Tuning Studio.", "",
             f"- Base model: {card.get('base_model', 'unknown')}", f"- Dataset: {card.get('dataset', 'unknown')}",
             f"- LoRA rank {lora.get('r')}, alpha {lora.get('alpha')}", "", _metrics_section(card.get("metrics") or {})]
    return "\n".join(lines)


def _metrics_section(metrics: dict) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in metrics.items())
    return f"{METRICS_HEADING}\n\n| metric | value |\n|---|---|\n{rows}\n"


def update_card(path: str | Path, metrics: dict) -> dict:
    """Merge `metrics` into card.json and rewrite the Metrics section of README.md; returns the card."""
    path = Path(path)
    if not _is_adapter_dir(path):
        raise AdapterError(f"{path} is not an adapter folder (no {CONFIG_FILE}).", "Give the adapter's folder.")
    card = read_json(path / CARD_FILE, default=None)
    card = card if isinstance(card, dict) else card_from_config(path)
    card["metrics"] = {**(card.get("metrics") or {}), **metrics}
    write_json_atomic(path / CARD_FILE, card)
    readme = path / README_FILE
    text = readme.read_text(encoding="utf-8") if readme.is_file() else card_markdown(path.name, card)
    table = _metrics_section(card["metrics"]).split("\n\n", 1)[1]
    if _TABLE_RE.search(text):  # the card's metrics table, wherever the card put it: rewrite it in place
        text = _TABLE_RE.sub(lambda m: table, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + _metrics_section(card["metrics"])
    readme.write_text(text, encoding="utf-8")
    return card


# ---------------------------------------------------------------- fit to a base model


def _base_module(base_model):
    """The plain transformers model behind a ref, a LoadedModel, a PeftModel or a model."""
    if isinstance(base_model, (str, Path)):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from studio.models import resolve

        config = AutoConfig.from_pretrained(resolve(str(base_model)))
        with torch.device("meta"):  # shapes only: no memory, no weights read
            return AutoModelForCausalLM.from_config(config), str(base_model)
    model = getattr(base_model, "model", None) if hasattr(base_model, "tokenizer") else base_model
    name = getattr(base_model, "ref", None) or getattr(getattr(model, "config", None), "name_or_path", "the base")
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model, str(name)


def _module_shape(module) -> tuple[int, int] | None:
    """(in, out) features of a layer LoRA can wrap (the wrapped base layer where PEFT wrapped it)."""
    module = getattr(module, "base_layer", module)
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    if hasattr(module, "num_embeddings"):
        return int(module.num_embeddings), int(module.embedding_dim)
    return None


def portable_base_name(ref: str) -> str:
    """The base's name for adapter_config.json and the card: a hub id where one is known (the bundled
    model is HuggingFaceTB/SmolLM2-135M-Instruct), else the folder or file name, never an absolute path."""
    from studio.models import BUNDLED, HUB_DEFAULT

    ref = str(ref).strip()
    if ref == BUNDLED:
        return HUB_DEFAULT
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")):
        return path.stem if path.suffix == ".gguf" else path.name
    return ref  # a hub id already


def _same_base(a: str, b: str) -> bool:
    def norm(name: str) -> str:
        return portable_base_name(name).rsplit("/", 1)[-1].lower()

    return norm(a) == norm(b)


def validate_adapter(path: str | Path, base_model) -> str:
    """Refuse an adapter that was not trained for `base_model` (by target modules and tensor shapes);
    returns a warning ("" when none) where the shapes fit but the base names differ."""
    from safetensors import safe_open

    path = Path(path)
    check_files(path)
    model, base_name = _base_module(base_model)
    config = read_json(path / CONFIG_FILE) or {}
    card = read_json(path / CARD_FILE, default={}) or {}
    adapter_base = card.get("base_model") or config.get("base_model_name_or_path") or "an unknown base"

    def refuse(why: str) -> None:
        raise AdapterError(f"The adapter {path.name} was trained for {adapter_base}, and does not fit the loaded "
                           f"base {base_name}: {why}.",
                           f"Load {adapter_base} as the base model, or pick an adapter trained on {base_name}.")

    try:
        with safe_open(path / WEIGHTS_FILE, framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds for a damaged file
        raise AdapterError(f"{path / WEIGHTS_FILE} cannot be read as safetensors ({exc}).",
                           "The file is damaged or not safetensors: export the adapter again.") from exc
    if not shapes:
        raise AdapterError(f"{path / WEIGHTS_FILE} holds no tensors.", "Export the adapter again.")
    modules = dict(model.named_modules())
    for key, shape in shapes.items():
        _check_tensor(key, shape, modules, refuse)
    if adapter_base != "an unknown base" and not _same_base(adapter_base, base_name):
        return (f"Warning: the adapter {path.name} names its base {adapter_base}, but it is being used with "
                f"{portable_base_name(base_name)}. The shapes fit, so it loads; answers are only as good as the "
                "two bases are alike. Load the named base if you have it.")
    return ""


def _check_tensor(key: str, shape: tuple, modules: dict, refuse) -> None:
    """lora_A is (r, in), lora_B is (out, r); embeddings are transposed (A: (r, vocab), B: (dim, r))."""
    name = key.removeprefix("base_model.model.")
    for part in (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector"):
        if part in name:
            module_name, kind = name.split(part)[0], part.strip(".")
            break
    else:  # modules_to_save copies and trained token rows (PEFT's token_adapter): checked by presence only
        module_name, kind = name.rsplit(".", 1)[0], "full"
        module_name = module_name.split(".modules_to_save")[0].split(".token_adapter")[0]
    module = modules.get(module_name)
    if module is None:
        refuse(f"the base has no layer {module_name!r}")
    expected = _module_shape(module)
    if expected is None or kind in ("full", "lora_magnitude_vector") or len(shape) != 2:
        return
    size_in, size_out = expected
    got = shape[1] if kind in ("lora_A", "lora_embedding_A") else shape[0]
    want = size_in if kind in ("lora_A", "lora_embedding_A") else size_out
    if got != want:
        refuse(f"{key} has shape {list(shape)} but layer {module_name} takes {size_in} -> {size_out} features")
