"""Adapter merging: two or more LoRA adapters of one base combined into a new registry adapter.

The combining is PEFT's own `LoraModel.add_weighted_adapter`; the studio checks the inputs first (one base,
LoRA only, the ranks a method needs), loads the base once in its own copy (never the chat engine's), and saves
the result as `<workspace>/adapters/<name>/`: adapter_config.json + adapter_model.safetensors, the first
parent's chat template, and a card naming the parents, their weights and the method. An existing adapter
name is refused, never overwritten. The new adapter is an ordinary imported adapter from then on: Chat,
Evaluate, the arena and Export list it.

The methods (PEFT's `combination_type`; "update" below is a LoRA's scale * B @ A):
- linear: the A and B matrices are weighted sums (each scaled by sqrt(weight * scale)); quick, but B @ A then
  holds cross terms between the parents, so it is only an approximation of the weighted sum of the updates.
  Needs equal ranks.
- cat: A and B stacked; the update is exactly the weighted sum of the parents' updates. Rank = sum of ranks.
- svd: the exact weighted sum of the updates, cut back to `svd_rank` (default: the largest parent rank).
- ties: per matrix, keep the top `density` fraction of each parent's entries by magnitude, elect a sign per
  entry, and average the entries that agree with it (TIES-merging). Needs equal ranks.
- dare_linear / dare_ties: drop entries at random (keep `density`, rescaled by 1/density), then a weighted
  sum (linear) or TIES's sign election (ties). Random: `seed` makes a merge repeatable. Needs equal ranks.
- ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune(_svd): the same on the full updates, then SVD.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from studio import adapters, paths, policy
from studio.adapters import CONFIG_FILE, AdapterInfo, check_files, get_adapter
from studio.errors import AdapterError, ConfigError
from studio.util import Progress, read_json, write_json_atomic
from studio.util import no_progress as _no_progress

METHODS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_linear_svd", "dare_ties", "dare_ties_svd",
           "magnitude_prune", "magnitude_prune_svd")
EQUAL_RANKS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")  # PEFT mixes A and B entry-wise
USES_DENSITY = ("ties", "ties_svd", "dare_linear", "dare_linear_svd", "dare_ties", "dare_ties_svd", "magnitude_prune",
                "magnitude_prune_svd")
AVERAGING = ("ties", "ties_svd", "dare_ties", "dare_ties_svd")  # they average the entries kept: weights 1.0 each
DEFAULT_DENSITY = 0.5  # TIES' and DARE's papers keep 20% to 50%; half is PEFT's documented example
PARENT_PREFIX = "parent_"  # the PEFT names of the parents inside the merge's own model copy
MERGED = "merged"


@dataclass(frozen=True)
class MergeSpec:
    inputs: tuple[str, ...]  # registry names of the parents (run:<id> or imported names), two or more
    name: str  # the new adapter's name under adapters/
    method: str = "ties"  # one of METHODS
    weights: tuple[float, ...] = ()  # one per parent; empty: 1.0 each for TIES-like methods, else 1/n each
    density: float | None = None  # the fraction kept by ties/dare/magnitude_prune (default DEFAULT_DENSITY)
    svd_rank: int | None = None  # the rank of an *_svd result (default: the largest parent rank)
    seed: int = 0  # DARE drops entries at random: the same seed gives the same adapter

    def checked(self) -> MergeSpec:
        """The spec with defaults filled in, or a ConfigError that says which field to change."""
        inputs = tuple(str(n).strip() for n in self.inputs if str(n).strip())
        if len(inputs) < 2:
            raise ConfigError(f"A merge needs two or more adapters; got {len(inputs)}.", "Pick at least two adapters.")
        if len(set(inputs)) != len(inputs):
            raise ConfigError(f"An adapter is listed twice in {list(inputs)}.",
                              "List each adapter once; give it a larger weight instead.")
        if self.method not in METHODS:
            raise ConfigError(f"Unknown merge method {self.method!r}.", f"Use one of: {', '.join(METHODS)}.")
        weights = tuple(float(w) for w in self.weights) or _default_weights(self.method, len(inputs))
        if len(weights) != len(inputs):
            raise ConfigError(f"{len(weights)} weights for {len(inputs)} adapters.",
                              "Give one weight per adapter, in the same order (e.g. --weights 0.5 0.5).")
        if not any(weights):
            raise ConfigError("All weights are 0, so the merge would be an empty adapter.", "Give non-zero weights.")
        density = self.density if self.density is not None else (DEFAULT_DENSITY if self.method in USES_DENSITY
                                                                 else None)
        if density is not None and not 0.0 < float(density) <= 1.0:
            raise ConfigError(f"Density {density} is outside (0, 1].",
                              "Give the fraction of entries to keep, e.g. 0.5 (1.0 keeps everything).")
        if self.svd_rank is not None and int(self.svd_rank) < 1:
            raise ConfigError(f"SVD rank {self.svd_rank} is below 1.", "Give a rank such as 8, or leave it empty.")
        name = paths.check_name(self.name, "adapter name")
        return MergeSpec(inputs, name, self.method, weights, None if density is None else float(density),
                         self.svd_rank, int(self.seed))


def _default_weights(method: str, n: int) -> tuple[float, ...]:
    return (1.0,) * n if method in AVERAGING else (1.0 / n,) * n


# ---------------------------------------------------------------- checks before any weight loads


def parents_of(spec: MergeSpec) -> list[AdapterInfo]:
    """The parents, refused where they cannot be merged: not one base, ranks a method cannot mix."""
    parents = [get_adapter(name) for name in spec.inputs]
    for parent in parents:
        check_files(parent.path)  # safetensors LoRA only, no DoRA
    first = parents[0]
    for other in parents[1:]:
        if not adapters._same_base(first.base_model, other.base_model):
            raise AdapterError(f"{first.name} was trained on {first.base_model} but {other.name} on "
                               f"{other.base_model}; adapters of different bases cannot be merged.",
                               "Pick adapters trained on the same base model (see `python -m studio adapters list`).")
    ranks = {p.name: _rank(p) for p in parents}
    if spec.method in EQUAL_RANKS and len(set(ranks.values())) > 1:
        raise AdapterError(f"{spec.method} mixes the parents' A and B matrices entry by entry, so they need one "
                           f"rank; these have {ranks}.",
                           "Use cat (exact, rank = the sum) or an *_svd method (svd, ties_svd, dare_ties_svd), or "
                           "merge adapters trained with the same rank.")
    return parents


def _rank(parent: AdapterInfo) -> int:
    config = read_json(parent.path / CONFIG_FILE) or {}
    return max([int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def target_free(name: str) -> Path:
    """adapters/<name>, refused where an adapter (or anything) is there already: nothing is overwritten."""
    dest = paths.adapters_dir() / paths.check_name(name, "adapter name")
    if dest.exists():
        raise AdapterError(f"An adapter named {name!r} already exists; it was left untouched.",
                           "Choose another name for the merged adapter, or delete the old one first.")
    return dest


# ---------------------------------------------------------------- the merge


def merge(spec: MergeSpec, ref: str | None = None, progress: Progress = _no_progress) -> AdapterInfo:
    """Combine spec.inputs into the new adapter spec.name with PEFT's add_weighted_adapter; its info.

    `ref` is the base to load (default: what the first parent's card names: base_model_ref, else base_model); each
    parent is checked to fit it (target layers, tensor shapes) before it is attached."""
    spec = spec.checked()
    target_free(spec.name)
    parents = parents_of(spec)
    ref = ref or str(parents[0].card.get("base_model_ref") or parents[0].base_model)
    progress(0.05, f"Loading {ref} to merge on (CPU)...")
    model = _load_parents(ref, parents, progress)
    progress(0.6, f"Merging {len(parents)} adapters ({spec.method})...")
    _combine(model, spec)
    progress(0.85, f"Saving {spec.name}...")
    info = _save(model, spec, parents, ref)
    progress(1.0, f"Merged adapter {info.name} saved.")
    return info


def _load_parents(ref: str, parents: list[AdapterInfo], progress: Progress):
    """The base in its own CPU copy (fp32: PEFT's merge math in full precision) with every parent attached."""
    from peft import PeftModel

    from studio.models import load_model

    loaded = load_model(ref, "fp32", "cpu")
    for parent in parents:
        warning = adapters.validate_adapter(parent.path, loaded)  # refuses an adapter that does not fit this base
        if warning:
            progress(0.3, warning)
    model = PeftModel.from_pretrained(loaded.model, str(parents[0].path), adapter_name=f"{PARENT_PREFIX}0")
    for i, parent in enumerate(parents[1:], start=1):
        model.load_adapter(str(parent.path), adapter_name=f"{PARENT_PREFIX}{i}")
    return model


def _combine(model, spec: MergeSpec) -> None:
    """PEFT's add_weighted_adapter as MERGED; its ValueErrors become errors that say what to change."""
    import torch

    torch.manual_seed(spec.seed)  # DARE's random drops
    names = [f"{PARENT_PREFIX}{i}" for i in range(len(spec.inputs))]
    try:
        model.add_weighted_adapter(adapters=names, weights=list(spec.weights), adapter_name=MERGED,
                                   combination_type=spec.method, svd_rank=spec.svd_rank, density=spec.density)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise AdapterError(f"PEFT could not merge {', '.join(spec.inputs)} with {spec.method}: {exc}",
                           "Try method cat or svd, which accept any ranks and target layers, or check that the "
                           "adapters were trained on the same base with plain LoRA.") from exc


def _save(model, spec: MergeSpec, parents: list[AdapterInfo], ref: str) -> AdapterInfo:
    """Write the merged adapter beside the others through a staging folder renamed into place."""
    dest = target_free(spec.name)
    staging = paths.adapters_dir() / f".{spec.name}.merging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory(dir=paths.adapters_dir()) as tmp:
            model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[MERGED])
            shutil.move(str(Path(tmp) / MERGED), staging)  # PEFT saves a named adapter in a subfolder
        config = _fix_config(staging, parents[0])
        if (parents[0].path / adapters.TEMPLATE_FILE).is_file():
            shutil.copyfile(parents[0].path / adapters.TEMPLATE_FILE, staging / adapters.TEMPLATE_FILE)
        card = merge_card(spec, parents, config, ref)
        write_json_atomic(staging / adapters.CARD_FILE, card)
        (staging / adapters.README_FILE).write_text(merge_markdown(spec.name, card), encoding="utf-8")
        check_files(staging)
        policy.stamp(staging)  # hosted: the merged adapter is the logged-in user's
        staging.rename(target_free(dest.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return get_adapter(spec.name)


def _fix_config(folder: Path, first: AdapterInfo) -> dict:
    """The saved config names the parents' base (not this machine's path); PEFT sets alpha = r for the merged
    weights (scale 1), which rsLoRA's alpha / sqrt(r) would break, so rsLoRA is off in the saved config."""
    config = read_json(folder / CONFIG_FILE) or {}
    config["base_model_name_or_path"] = first.base_model
    config["use_rslora"] = False
    write_json_atomic(folder / CONFIG_FILE, config)
    return config


def merge_card(spec: MergeSpec, parents: list[AdapterInfo], config: dict, ref: str) -> dict:
    """card.json of a merged adapter: the base, the parents with their weights and datasets, the method."""
    import peft

    first = parents[0].card
    prompts = [p.card.get("system_prompt") for p in parents]
    card = {"base_model": parents[0].base_model, "base_model_ref": first.get("base_model_ref") or ref,
            "quant": first.get("quant"), "template": first.get("template"),
            "dataset": " + ".join(str(p.card.get("dataset") or "unknown") for p in parents),
            "lora": {"r": config.get("r"), "alpha": config.get("lora_alpha"),
                     "target_modules": sorted(config.get("target_modules") or [])
                     if not isinstance(config.get("target_modules"), str) else config.get("target_modules")},
            "merge": {**{k: v for k, v in asdict(spec).items() if k not in ("inputs", "name")},
                      "parents": [{"name": p.name, "dataset": p.card.get("dataset"), "r": _rank(p), "weight": w}
                                  for p, w in zip(parents, spec.weights, strict=True)],
                      "peft": peft.__version__},
            "metrics": {}, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if all(p == prompts[0] for p in prompts) and prompts[0] is not None:
        card["system_prompt"] = prompts[0]  # the parents agree on how conversations start
    elif any(p is not None for p in prompts):
        card["system_prompt"] = {"mode": "keep", "text": ""}  # they differ: the template's own default
    return card


def merge_markdown(name: str, card: dict) -> str:
    merge_info = card["merge"]
    parents = "\n".join(f"| {p['name']} | {p['dataset']} | {p['r']} | {p['weight']:g} |" for p in merge_info["parents"])
    extra = ", ".join(f"{k} {merge_info[k]}" for k in ("density", "svd_rank") if merge_info.get(k) is not None)
    return f"""---
library_name: peft
base_model: {card['base_model']}
tags: [lora, tuning-studio, merge]
---
# LoRA adapter `{name}`

Merged with Tuning Studio from {len(merge_info['parents'])} adapters of `{card['base_model']}` by PEFT's
`add_weighted_adapter`, method **{merge_info['method']}**{f' ({extra})' if extra else ''}, seed {merge_info['seed']}
(peft {merge_info['peft']}). Result: LoRA r={card['lora']['r']}, alpha={card['lora']['alpha']}.

| parent | dataset | r | weight |
|---|---|---|---|
{parents}

## Metrics

| metric | value |
|---|---|

Load it with `PeftModel.from_pretrained(base, "<this folder>")`.
"""

