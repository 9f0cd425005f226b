"""Where a run's metrics go besides events.jsonl: the trackers of `train.report_to`.

TensorBoard event files are written into every run folder by default (runs/<id>/tensorboard, read by
`tensorboard --logdir runs/`): local files, nothing leaves the machine. MLflow, Weights & Biases and Trackio
log only when the user installs and names them; each keeps its data in the run folder or offline unless the
user's own environment says otherwise (MLFLOW_TRACKING_URI, WANDB_MODE / WANDB_API_KEY, TRACKIO_SPACE_ID).
The worker hands the list to transformers' own integrations (`TrainingArguments.report_to`). No torch import.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from studio.errors import ConfigError

# name in train.report_to -> the package it needs
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}
TENSORBOARD_DIR = "tensorboard"  # runs/<id>/tensorboard: one folder per run under `tensorboard --logdir runs/`


def chosen(report_to: str) -> list[str]:
    """The trackers named in `report_to` ("tensorboard", "tensorboard,mlflow", "none"), in order, no repeats."""
    names = [n.strip().lower() for n in (report_to or "").split(",") if n.strip()]
    return [] if names in ([], ["none"]) else list(dict.fromkeys(names))


def check(report_to: str) -> None:
    """Refuse an unknown tracker, 'none' beside others, or one whose package is not installed."""
    names = chosen(report_to)
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"train.report_to names {name!r}, which is not a tracker the studio knows.",
                              f"Use some of: {', '.join(TRACKERS)} (comma-separated), or 'none'.")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"train.report_to chooses {name}, but the {TRACKERS[name]!r} package is not "
                              "installed.", f"Install it (`.venv/bin/pip install {TRACKERS[name]}`), or remove "
                              f"{name} from train.report_to.")


def report_to(report_to_setting: str, run_dir: Path) -> list[str]:
    """The list for TrainingArguments.report_to, with each tracker's local folder set in the environment
    (only where the user set none): the worker is a process of its own, so this touches that run alone."""
    names = chosen(report_to_setting)
    check(report_to_setting)
    defaults = {"tensorboard": {"TENSORBOARD_LOGGING_DIR": str(run_dir / TENSORBOARD_DIR)},
                "mlflow": {"MLFLOW_TRACKING_URI": (run_dir / "mlruns").resolve().as_uri(),
                           "MLFLOW_EXPERIMENT_NAME": "tuning-studio", "MLFLOW_RUN_NAME": run_dir.name},
                "wandb": {"WANDB_DIR": str(run_dir), "WANDB_NAME": run_dir.name, "WANDB_PROJECT": "tuning-studio",
                          # no key and no mode chosen: offline files in the run folder (`wandb sync` sends them)
                          **({} if os.environ.get("WANDB_API_KEY") else {"WANDB_MODE": "offline"})},
                "trackio": {"TRACKIO_PROJECT": "tuning-studio"}}
    for name in names:
        for key, value in defaults[name].items():
            _set_default(key, value)
    if names:
        print(f"[studio] trackers: {', '.join(names)}", flush=True)
    return names


SET_HERE = "STUDIO_TRACKER_ENV"  # JSON {variable: value} of what this module set, inherited with the values


def _set_default(key: str, value: str) -> None:
    """Set `key` unless the user's environment chose a value. A value this module set is replaced: the next
    run in the same process (tests), or in a worker the queue starts from this one, gets its own folder."""
    ours = json.loads(os.environ.get(SET_HERE) or "{}")
    if key not in os.environ or os.environ[key] == ours.get(key):
        os.environ[key] = ours[key] = value
        os.environ[SET_HERE] = json.dumps(ours)


def tensorboard_dir(run_dir: Path) -> Path:
    return Path(run_dir) / TENSORBOARD_DIR
