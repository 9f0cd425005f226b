"""Start, stop, resume, list and delete training runs. No torch import: the UI calls this.

The manager keeps no state of its own: everything is in runs/<id>/ on disk, so an app restart
loses nothing and simply "reattaches" by reading the folders (pid + heartbeat say who is alive).
One run trains at a time (per machine); the others wait in the queue, oldest first.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from studio import paths, policy
from studio.config import RunSpec, save_yaml
from studio.errors import RunError
from studio.jobs import process
from studio.jobs.events import (
    ACTIVE,
    STOP_FILE,
    append_event,
    latest_checkpoint,
    read_events,
    read_status,
    resume_hint,
    write_status,
)
from studio.jobs.queue import busy_runs, mark_dead, schedule, schedule_lock, schedule_locked, worker_command

__all__ = ["create", "delete", "list_runs", "make_spec", "refresh", "resume", "resume_hint", "run_dir", "schedule",
           "start", "stop", "summary", "wait", "worker_command", "busy_runs", "create_foreground"]


def run_dir(run_id: str) -> Path:
    paths.check_name(run_id, "run name")
    path = paths.runs_dir() / run_id
    if not (path / "spec.yaml").is_file() or not policy.can_see(path):  # hosted: another user's run is not there
        raise RunError(f"There is no run named {run_id!r}.",
                       "Pick one from the runs list (python -m studio runs list).")
    return path


def create(spec: RunSpec) -> Path:
    """Write runs/<name>/ for a new run and queue it. An existing name is never overwritten.

    The spec records the prepared dataset's content hash: a resume checks it (`store.check_unchanged`).
    """
    from dataclasses import replace

    from studio.data.preference import check_method
    from studio.data.store import prepared_sha256
    from studio.util import read_json

    spec.validate()
    if spec.accelerate_config:  # checked now, recorded as the absolute path of the file the run uses
        from studio.jobs import launch_configs

        spec = replace(spec, accelerate_config=str(launch_configs.check(spec.accelerate_config, spec.model.quant)))
    path = paths.runs_dir() / spec.name
    if path.exists():
        raise RunError(f"A run named {spec.name!r} already exists.", "Choose another run name, or delete the old run.")
    dataset = paths.datasets_dir() / spec.dataset
    if not (dataset / "meta.json").is_file() or not policy.can_see(dataset):
        raise RunError(f"The dataset {spec.dataset!r} does not exist.",
                       "Prepare it in the Data tab (or `python -m studio data prepare`) first.")
    check_method(read_json(paths.datasets_dir() / spec.dataset / "meta.json", {}), spec.train.method)  # SFT vs DPO
    if spec.train.method == "grpo":  # patterns, schema files, reward files (parsed here, imported by the worker)
        from studio import rewards

        rewards.check(spec.grpo.rewards)
    spec = replace(spec, dataset_sha256=prepared_sha256(spec.dataset))
    policy.check_run_quota([policy.owner_of(p)["owner"] for p in _active_runs()])  # hosted: runs per user
    _check_start_adapter(spec)
    path.mkdir(parents=True)
    policy.stamp(path)  # hosted: the run is the logged-in user's
    save_yaml(spec, path / "spec.yaml")
    write_status(path, state="queued", created=time.time(), step=0, total_steps=None, message="Waiting to start.")
    return path


def _active_runs() -> list[Path]:
    return [p for p in paths.runs_dir().iterdir() if p.is_dir() and read_status(p).get("state") in ACTIVE]


def _check_start_adapter(spec: RunSpec) -> None:
    """Hosted: a run continues only an adapter its user may see, by name (the worker itself sees all)."""
    start_from = spec.from_adapter
    if start_from and policy.hosted():
        from studio.adapters import get_adapter

        policy.require_name(start_from)
        get_adapter(start_from)


def create_foreground(spec: RunSpec) -> Path:
    """A run that this process trains now (`studio train --config`): created and marked running under the
    schedule lock, so the queue waits for it, and refused while another run trains (one run at a time)."""
    with schedule_lock():
        busy = busy_runs()
        if busy:
            raise RunError(f"Run {busy[0]!r} is training now; one run trains at a time on this machine.",
                           "Wait for it to finish, or add --background to queue this run behind it.")
        path = create(spec)
        write_status(path, state="running", **process.identity(os.getpid()), heartbeat=time.time(),
                     launched=time.time(), message="Training in the foreground (studio train).")
    return path


def start(spec: RunSpec) -> Path:
    path = create(spec)
    schedule()
    return path


def refresh() -> str | None:
    """Notice dead workers and advance the queue (every read of the runs folder goes through here)."""
    return schedule()


def stop(run_id: str) -> str:
    """First call: graceful (checkpoint, then exit). Second call: kill the worker now."""
    path = run_dir(run_id)
    policy.require_owner(path, "stop", f"run {run_id!r}")
    with schedule_lock():  # a queued run is taken out of the line before the scheduler can launch it
        status = read_status(path)
        state = status.get("state")
        if state == "queued":
            write_status(path, state="stopped", message="Removed from the queue before it started. "
                         + resume_hint(run_id, latest_checkpoint(path)))
            return "stopped"
    if state not in ("running", "stopping"):
        raise RunError(f"Run {run_id!r} is {state}, not running.", "Only a running or queued run can be stopped.")
    if status.get("phase") == "saving":  # after the last step: the save finishes, the run completes
        return "saving the adapter after the last step; it completes in a moment"
    if (path / STOP_FILE).exists():
        process.kill_group(status)  # never a process that merely reuses the worker's pid
        append_event(path, {"type": "killed", "step": status.get("step", 0)})
        write_status(path, state="stopped", finished=time.time(),
                     message="Killed on a second Stop. " + resume_hint(run_id, latest_checkpoint(path)))
        schedule()
        return "killed"
    (path / STOP_FILE).touch()
    return "stopping"


def resume(run_id: str) -> str:
    """Queue a stopped or failed run again; it keeps its place in the line (no later run jumps ahead)."""
    path = run_dir(run_id)
    policy.require_owner(path, "resume", f"run {run_id!r}")
    with schedule_lock():
        mark_dead()  # a worker killed a moment ago is noticed here, not reported as still running
        status = read_status(path)
        state = status.get("state")
        if state in ACTIVE:
            raise RunError(f"Run {run_id!r} is already {state}.", "Wait for it, or stop it first.")
        if state == "completed":
            raise RunError(f"Run {run_id!r} has completed all its {status.get('step', '')} steps.",
                           "Start a new run (or raise Max steps in a new run) to train further.")
        _check_dataset(path)
        write_status(path, state="queued", queued_at=time.time(), message="Waiting to resume.", fix=None)
        schedule_locked()
    return read_status(path).get("state", "queued")


def _check_dataset(path: Path) -> None:
    """A resume trains on the rows the run started with: refuse when its dataset was prepared again."""
    from studio.config import load_yaml
    from studio.data.store import check_unchanged

    spec = load_yaml(RunSpec, path / "spec.yaml")
    check_unchanged(spec.dataset, spec.dataset_sha256, path.name)


def delete(run_id: str) -> None:
    """Delete a run that is not training, under the schedule lock: a queued run cannot launch into the
    folder while it is being deleted."""
    path = run_dir(run_id)
    policy.require_owner(path, "delete", f"run {run_id!r}")
    with schedule_lock():
        mark_dead()
        state = read_status(path).get("state")
        if state in ("running", "stopping"):
            raise RunError(f"Run {run_id!r} is {state}.", "Stop it first, then delete it.")
        shutil.rmtree(path)


def summary(path: Path) -> dict:
    status = read_status(path)
    logs = [e for e in read_events(path) if e.get("type") == "log" and "loss" in e]
    return {"run": path.name, "state": status.get("state", "?"), "step": status.get("step", 0),
            "total_steps": status.get("total_steps"), "loss": logs[-1]["loss"] if logs else None,
            "eta_sec": status.get("eta_sec"), "message": status.get("message", ""),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(status.get("created", 0)))}


def list_runs() -> list[dict]:
    schedule()  # every read of the runs folder notices dead workers and advances the queue
    runs = [p for p in paths.runs_dir().iterdir() if (p / "spec.yaml").is_file() and policy.can_see(p)]
    return [summary(p) for p in sorted(runs, key=lambda p: read_status(p).get("created", 0), reverse=True)]


def wait(run_id: str, timeout: float = 3600, poll: float = 1.0) -> dict:
    """Block until the run leaves the active states (used by the CLI and tests)."""
    path = run_dir(run_id)
    deadline = time.time() + timeout
    while time.time() < deadline:
        schedule()
        status = read_status(path)
        if status.get("state") not in ACTIVE:
            return status
        time.sleep(poll)
    raise RunError(f"Run {run_id!r} did not finish in {timeout:.0f} s.",
                   "Check its log with `python -m studio runs show`.")


def make_spec(name: str, dataset: str, model_ref: str, settings: dict | None, max_steps: int | None = None,
              num_processes: int = 1, accelerate_config: str = "") -> RunSpec:
    """A RunSpec from the UI's pieces: the Presets tab's settings dict {quant, lora{}, train{}}."""
    from studio.config import ConfigError, from_dict

    settings = settings or {}
    data = {"name": (name or "").strip(), "dataset": dataset or "",
            "model": {"ref": model_ref or "bundled", "quant": settings.get("quant", "4bit")},
            "lora": dict(settings.get("lora", {})), "train": dict(settings.get("train", {})),
            "num_processes": int(num_processes or 1), "accelerate_config": accelerate_config or ""}
    if max_steps:
        data["train"]["max_steps"] = int(max_steps)
    if not data["name"]:
        raise ConfigError("The run has no name.", "Type a run name, e.g. 'medical-r16'.")
    return from_dict(RunSpec, data)
