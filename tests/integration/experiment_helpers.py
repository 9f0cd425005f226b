"""Synthetic run folders, prepared-dataset stubs and a busy queue for the experiments tests (no model loaded)."""

from __future__ import annotations

import os
import time

import yaml

from studio import paths
from studio.config import RunSpec, TrainSpec, to_dict
from studio.jobs import process
from studio.jobs.events import append_event, write_status
from studio.util import write_json_atomic

BASE = {"name": "demo", "dataset": "chat", "train": {"max_steps": 3}}
GRID = {**BASE, "sweep": {"method": "grid", "parameters": {"train.lr": [1.0e-4, 2.0e-4], "lora.r": [8, 16]},
                          "metric": "eval_loss"}}


def stub_dataset(name: str = "chat") -> None:
    """A prepared dataset as the manager sees it: meta.json and a split file (no tokenizer needed)."""
    folder = paths.datasets_dir() / name
    folder.mkdir(parents=True)
    write_json_atomic(folder / "meta.json", {"name": name, "format": "openai"})
    (folder / "train.parquet").write_bytes(b"rows")


def busy_run() -> None:
    """A run that trains now (this process, heartbeat fresh): the queue holds everything behind it."""
    path = paths.runs_dir() / "busy"
    path.mkdir(parents=True)
    (path / "spec.yaml").write_text(yaml.safe_dump({**BASE, "name": "busy"}))
    write_status(path, state="running", created=time.time() - 60, heartbeat=time.time(),
                 **process.identity(os.getpid()))


def synthetic_run(name: str, method: str, lr: float, metrics: dict, logs: list[dict], parent: str = "") -> None:
    """A finished run folder as the worker leaves it: spec, status, events, adapter card, a checkpoint."""
    path = paths.runs_dir() / name
    path.mkdir(parents=True)
    spec = RunSpec(name=name, dataset=f"{method}-data", train=TrainSpec(method=method, lr=lr),
                   dataset_sha256=f"{method}" * 20, parent_run=parent, parent_step=2 if parent else 0)
    (path / "spec.yaml").write_text(yaml.safe_dump(to_dict(spec), sort_keys=False))
    write_status(path, state="completed", created=time.time(), step=len(logs), total_steps=len(logs), metrics=metrics)
    for event in logs:
        append_event(path, {"type": "log", **event})
    (path / "adapter").mkdir()
    write_json_atomic(path / "adapter" / "card.json", {"metrics": {**metrics, "perplexity": 7.5}, "train_seconds": 3})
    checkpoint = path / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    write_json_atomic(checkpoint / "trainer_state.json", {"log_history": [{"step": 1, "loss": 2.0},
                                                                          {"step": 2, "loss": 1.5}]})

