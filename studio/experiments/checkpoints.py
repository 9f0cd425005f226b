"""Every checkpoint of a run, visible: its step, loss and time; saved as a named adapter (so Chat, Evaluate and
Export use it like any adapter); or the start of a new run with other settings (a branch), which records the
parent run and step in its spec and its adapter's card. No torch import.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from studio import adapters, paths
from studio.config import RunSpec, from_dict, load_yaml, to_dict
from studio.errors import RunError
from studio.experiments.records import when
from studio.experiments.sweeps import check_path, set_path
from studio.util import read_json, write_json_atomic

PREFIX = "checkpoint-"


def list_checkpoints(run_dir: Path) -> list[dict]:
    """[{step, loss, eval_loss, time, path}] of the run's complete checkpoints, oldest first."""
    rows = []
    for folder in (Path(run_dir) / "checkpoints").glob(f"{PREFIX}*"):
        state = read_json(folder / "trainer_state.json", default=None)
        step = folder.name[len(PREFIX):]
        if not isinstance(state, dict) or not step.isdigit():
            continue  # a checkpoint whose save was cut short has no trainer_state.json yet
        history = [h for h in state.get("log_history", []) if h.get("step", 0) <= int(step)]
        losses = [h["loss"] for h in history if "loss" in h]
        evals = [h["eval_loss"] for h in history if "eval_loss" in h]
        rows.append({"step": int(step), "loss": round(losses[-1], 4) if losses else None,
                     "eval_loss": round(evals[-1], 4) if evals else None,
                     "time": when((folder / "trainer_state.json").stat().st_mtime), "path": str(folder)})
    return sorted(rows, key=lambda r: r["step"])


def checkpoint_dir(run_id: str, step: int) -> Path:
    from studio.jobs import manager

    path = manager.run_dir(run_id) / "checkpoints" / f"{PREFIX}{int(step)}"
    if not (path / adapters.WEIGHTS_FILE).is_file() or not (path / "trainer_state.json").is_file():
        steps = [r["step"] for r in list_checkpoints(manager.run_dir(run_id))]
        raise RunError(f"Run {run_id!r} has no complete checkpoint at step {step} (it has: "
                       f"{', '.join(map(str, steps)) or 'none'}).", "Pick one of the steps listed.")
    return path


def adapter_name(run_id: str, step: int) -> str:
    return f"{run_id}-step{int(step)}"[-100:]


def save_as_adapter(run_id: str, step: int) -> str:
    """The checkpoint's LoRA weights as the adapter `<run>-step<N>` (made once; later calls reuse it). Its card
    is the run's, with the checkpoint's step and losses, so Chat prompts it with the run's template."""
    name = adapter_name(run_id, step)
    if (paths.adapters_dir() / name / adapters.CONFIG_FILE).is_file():
        card = adapters.get_adapter(name).card
        if card.get("checkpoint") == {"run": run_id, "step": int(step)}:
            return name
        raise RunError(f"An adapter named {name!r} exists and is not this checkpoint.",
                       "Rename or delete that adapter in the Chat tab, then try again.")
    folder = checkpoint_dir(run_id, step)
    run = folder.parent.parent
    row = next(r for r in list_checkpoints(run) if r["step"] == int(step))
    card = read_json(run / "adapter" / adapters.CARD_FILE, default=None) or _card_from_spec(run)
    card = {**card, "checkpoint": {"run": run_id, "step": int(step)}, "run_id": run_id,
            "metrics": {k: row[k] for k in ("loss", "eval_loss") if row[k] is not None}}
    files = [folder / adapters.CONFIG_FILE, folder / adapters.WEIGHTS_FILE]
    template = next((p for p in (folder / adapters.TEMPLATE_FILE, run / "adapter" / adapters.TEMPLATE_FILE)
                     if p.is_file()), None)
    with tempfile.TemporaryDirectory() as tmp:
        write_json_atomic(Path(tmp) / adapters.CARD_FILE, card)
        adapters.import_adapter(files + [Path(tmp) / adapters.CARD_FILE] + ([template] if template else []), name)
    return name


def _card_from_spec(run: Path) -> dict:
    """A card for a run that has no final adapter yet (stopped, failed or still training)."""
    spec = load_yaml(RunSpec, run / "spec.yaml")
    from studio.adapters import portable_base_name

    return {"base_model": portable_base_name(spec.model.ref), "base_model_ref": spec.model.ref,
            "quant": spec.model.quant, "dataset": spec.dataset, "dataset_sha256": spec.dataset_sha256,
            "lora": to_dict(spec.lora), "train": to_dict(spec.train)}


def branch_spec(run_id: str, step: int, name: str, changes: dict | None = None) -> RunSpec:
    """The parent's spec with `changes` ({"train.lr": 1e-4, ...}), starting from its checkpoint at `step`.

    The LoRA shape comes with the checkpoint, so lora.* cannot change in a branch."""
    from studio.jobs import manager

    parent = load_yaml(RunSpec, manager.run_dir(run_id) / "spec.yaml")
    data = to_dict(dataclasses.replace(parent, name=name, dataset_sha256="", from_adapter="",
                                       parent_run=run_id, parent_step=int(step)))
    for key, value in (changes or {}).items():
        check_path(key)
        if key.startswith("lora."):
            raise RunError(f"A branch keeps its checkpoint's LoRA shape; {key} cannot change.",
                           "Start a new run (not a branch) to train another rank or alpha.")
        data = set_path(data, key, value)
    return from_dict(RunSpec, data)


def branch(run_id: str, step: int, name: str, changes: dict | None = None) -> Path:
    """Queue a new run that continues the checkpoint's weights with other settings (e.g. a lower rate)."""
    from studio.jobs import manager

    paths.check_name(name, "run name")
    if (paths.runs_dir() / name).exists():
        raise RunError(f"A run named {name!r} already exists.", "Choose another name for the branch.")
    spec = branch_spec(run_id, step, name, changes)  # checked before anything is written
    start = save_as_adapter(run_id, step)
    return manager.start(dataclasses.replace(spec, from_adapter=start))
