"""Start, stop, resume, list and delete training runs. No torch import: the UI calls this.

The manager keeps no state of its own: everything is in runs/<id>/ on disk, so an app restart
loses nothing and simply "reattaches" by reading the folders (pid + heartbeat say who is alive).
One run trains at a time (per machine); the others wait in the queue, oldest first.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from studio import paths, policy
from studio.config import RunSpec, save_yaml
from studio.errors import RunError
from studio.jobs.events import ACTIVE, append_event, latest_checkpoint, log_tail, read_events, read_status, write_status
from studio.jobs.worker import HEARTBEAT_SEC, STOP_FILE

DEAD_AFTER_SEC = HEARTBEAT_SEC * 12  # no heartbeat for a minute: the worker is hung or gone
_children: dict[str, subprocess.Popen] = {}  # workers this process started, reaped on refresh


def run_dir(run_id: str) -> Path:
    paths.check_name(run_id, "run name")
    path = paths.runs_dir() / run_id
    if not (path / "spec.yaml").is_file() or not policy.can_see(path):  # hosted: another user's run is not there
        raise RunError(f"There is no run named {run_id!r}.",
                       "Pick one from the runs list (python -m studio runs list).")
    return path


def create(spec: RunSpec) -> Path:
    """Write runs/<name>/ for a new run and queue it. An existing name is never overwritten."""
    spec.validate()
    if spec.accelerate_config:  # checked now, recorded as the absolute path of the file the run uses
        from dataclasses import replace

        from studio.jobs import launch_configs

        spec = replace(spec, accelerate_config=str(launch_configs.check(spec.accelerate_config, spec.model.quant)))
    path = paths.runs_dir() / spec.name
    if path.exists():
        raise RunError(f"A run named {spec.name!r} already exists.", "Choose another run name, or delete the old run.")
    dataset = paths.datasets_dir() / spec.dataset
    if not (dataset / "meta.json").is_file() or not policy.can_see(dataset):
        raise RunError(f"The dataset {spec.dataset!r} does not exist.",
                       "Prepare it in the Data tab (or `python -m studio data prepare`) first.")
    from studio.data.preference import check_method
    from studio.util import read_json

    check_method(read_json(paths.datasets_dir() / spec.dataset / "meta.json", {}), spec.train.method)  # SFT vs DPO
    policy.check_run_quota([policy.owner_of(p)["owner"] for p in _active_runs()])  # hosted: runs per user
    _check_start_adapter(spec)
    path.mkdir(parents=True)
    policy.stamp(path)  # hosted: the run is the logged-in user's
    save_yaml(spec, path / "spec.yaml")
    write_status(path, state="queued", created=time.time(), step=0, total_steps=None, message="Waiting to start.")
    return path


def _check_start_adapter(spec: RunSpec) -> None:
    """Hosted: a run continues only an adapter its user may see, by name (the worker itself sees all)."""
    start_from = spec.from_adapter
    if start_from and policy.hosted():
        from studio.adapters import get_adapter

        policy.require_name(start_from)
        get_adapter(start_from)


def start(spec: RunSpec) -> Path:
    path = create(spec)
    schedule()
    return path


def worker_command(spec: RunSpec, path: Path) -> list[str]:
    """Plain python for one device; `accelerate launch` (DDP, or FSDP/DeepSpeed from a config) beyond."""
    worker = ["-m", "studio.jobs.worker", str(path)]
    if spec.num_processes <= 1 and not spec.accelerate_config:
        return [sys.executable, *worker]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if spec.accelerate_config:
        cmd += ["--config_file", spec.accelerate_config]
    else:
        # --multi_gpu selects accelerate's torchrun launcher; on a machine without CUDA the processes
        # join over gloo on the CPU. (--cpu would run a single process.)
        cmd += ["--multi_gpu", "--num_processes", str(spec.num_processes), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    return cmd + worker


def _launch(path: Path) -> None:
    from studio.config import load_yaml

    spec = load_yaml(RunSpec, path / "spec.yaml")
    (path / STOP_FILE).unlink(missing_ok=True)
    log = open(path / "worker.log", "a", encoding="utf-8")
    log.write(f"\n=== worker started {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
    log.flush()
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(worker_command(spec, path), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=env, cwd=root)
    _children[path.name] = proc
    write_status(path, state="running", pid=proc.pid, heartbeat=time.time(), launched=time.time(), phase=None,
                 message="Starting the worker...")


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def resume_hint(run_id: str, checkpoint: Path | None) -> str:
    """How to continue a run, for the Train tab and the CLI alike."""
    where = f"from {checkpoint.name}" if checkpoint else "from the start"
    return f"Press Resume in the Train tab (or run `python -m studio runs resume {run_id}`) to continue {where}."


def _mark_dead() -> list[str]:
    """Reap finished children, and mark workers that died without saying so as failed (call under the lock)."""
    for run_id, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[run_id]
    dead = []
    for path in sorted(paths.runs_dir().iterdir()):
        status = read_status(path)
        if status.get("state") not in ("running", "stopping"):
            continue
        stale = time.time() - status.get("heartbeat", 0) > DEAD_AFTER_SEC
        if _alive(status.get("pid")) and not stale:
            continue
        if stale and _alive(status.get("pid")):
            _kill_group(status["pid"])
        write_status(path, state="failed", finished=time.time(), fix=None, phase=None,
                     message="The worker process died without finishing (killed, out of memory, or crashed). "
                             + resume_hint(path.name, latest_checkpoint(path)), log_tail=log_tail(path, 15))
        dead.append(path.name)
    return dead


def refresh() -> str | None:
    """Notice dead workers and advance the queue (every read of the runs folder goes through here)."""
    return schedule()


@contextmanager
def _schedule_lock():
    """A file lock: the check-then-launch is atomic across threads and processes (two users pressing Start
    at once, a worker finishing while the app schedules), so only one run ever trains."""
    with open(paths.runs_dir() / ".schedule.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def schedule() -> str | None:
    """Mark dead workers, then start the oldest queued run when nothing is training. Returns the run
    started, if any. However a run ended (finished, stopped, failed, killed -9), the next one starts here."""
    with _schedule_lock():
        return _schedule_locked()


def _schedule_locked() -> str | None:
    _mark_dead()
    runs = [(read_status(p), p) for p in paths.runs_dir().iterdir() if (p / "spec.yaml").is_file()]
    if any(s.get("state") in ("running", "stopping") for s, _ in runs):
        return None
    # a resumed run keeps its place in the line (its creation time), so Resume never lets a later run jump it
    queued = sorted((s.get("created", 0), p.name, p) for s, p in runs if s.get("state") == "queued")
    if not queued:
        return None
    _launch(queued[0][2])
    return queued[0][2].name


def _active_runs() -> list[Path]:
    return [p for p in paths.runs_dir().iterdir() if p.is_dir() and read_status(p).get("state") in ACTIVE]


def stop(run_id: str) -> str:
    """First call: graceful (checkpoint, then exit). Second call: kill the worker now."""
    path = run_dir(run_id)
    policy.require_owner(path, "stop", f"run {run_id!r}")
    with _schedule_lock():  # a queued run is taken out of the line before the scheduler can launch it
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
        _kill_group(status.get("pid"))
        append_event(path, {"type": "killed", "step": status.get("step", 0)})
        write_status(path, state="stopped", finished=time.time(),
                     message="Killed on a second Stop. " + resume_hint(run_id, latest_checkpoint(path)))
        schedule()
        return "killed"
    (path / STOP_FILE).touch()
    return "stopping"


def _kill_group(pid: int | None) -> None:
    if not pid:
        return
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)  # the worker and, under accelerate, all its ranks
    except (ProcessLookupError, PermissionError):
        pass


def resume(run_id: str) -> str:
    """Queue a stopped or failed run again; it keeps its place in the line (no later run jumps ahead)."""
    path = run_dir(run_id)
    policy.require_owner(path, "resume", f"run {run_id!r}")
    with _schedule_lock():
        _mark_dead()  # a worker killed a moment ago is noticed here, not reported as still running
        status = read_status(path)
        state = status.get("state")
        if state in ACTIVE:
            raise RunError(f"Run {run_id!r} is already {state}.", "Wait for it, or stop it first.")
        if state == "completed":
            raise RunError(f"Run {run_id!r} has completed all its {status.get('step', '')} steps.",
                           "Start a new run (or raise Max steps in a new run) to train further.")
        write_status(path, state="queued", queued_at=time.time(), message="Waiting to resume.", fix=None)
        _schedule_locked()
    return read_status(path).get("state", "queued")


def delete(run_id: str) -> None:
    path = run_dir(run_id)
    policy.require_owner(path, "delete", f"run {run_id!r}")
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
