"""One run folder read whole for comparing and reporting: spec, status, events, card, checkpoints.

The spec is read as plain YAML (not through RunSpec), so a run written by another version of the studio,
or of a method this version does not know, still compares and reports. No torch import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from studio.util import read_json

LOG = "log"


@dataclass
class RunRecord:
    name: str
    path: Path
    spec: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    card: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str((self.spec.get("train") or {}).get("method", "sft"))

    @property
    def base(self) -> str:
        return str((self.spec.get("model") or {}).get("ref", "?"))

    @property
    def dataset(self) -> str:
        return str(self.spec.get("dataset", ""))

    @property
    def dataset_sha256(self) -> str:
        return str(self.spec.get("dataset_sha256") or self.card.get("dataset_sha256") or "")

    @property
    def final_metrics(self) -> dict:
        """What training measured at its end (status.json), else the card's."""
        return dict(self.status.get("metrics") or self.card.get("metrics") or {})

    @property
    def evaluations(self) -> dict:
        """Results the Evaluate tab added to the adapter's card after training (perplexity, ROUGE, ...)."""
        trained = self.status.get("metrics") or {}
        return {k: v for k, v in (self.card.get("metrics") or {}).items() if k not in trained}

    @property
    def logs(self) -> list[dict]:
        return [e for e in self.events if e.get("type") == LOG]

    def throughput(self) -> float | None:
        """Tokens per second of the last logged training step (the average since the worker started)."""
        speeds = [e["tokens_per_sec"] for e in self.logs if e.get("tokens_per_sec") and "loss" in e]
        return speeds[-1] if speeds else None

    def parent(self) -> dict | None:
        run = self.spec.get("parent_run")
        return {"run": run, "step": self.spec.get("parent_step")} if run else None

    def exports(self) -> list[dict]:
        path = self.path / "exports.jsonl"
        if not path.is_file():
            return []
        import json

        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load(run_id: str) -> RunRecord:
    """The run by name (policy-checked like every other read of a run); RunError when there is none."""
    from studio.jobs import manager

    return read_folder(manager.run_dir(run_id))


def read_folder(path: Path) -> RunRecord:
    from studio.jobs.events import read_events, read_status

    try:
        spec = yaml.safe_load((path / "spec.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        spec = {}
    card = read_json(path / "adapter" / "card.json", default={}) or {}
    return RunRecord(name=path.name, path=path, spec=spec if isinstance(spec, dict) else {},
                     status=read_status(path), events=read_events(path), card=card if isinstance(card, dict) else {})


def flat_settings(spec: dict, prefix: str = "") -> dict:
    """{"train.lr": 0.0002, "lora.r": 16, ...}: nested settings as dotted keys."""
    flat = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_settings(value, name + "."))
        else:
            flat[name] = value
    return flat


def when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else ""
