"""The run queue: one run trains at a time (per machine), the others wait, oldest first.

`schedule` notices workers that died without saying so and starts the oldest queued run when nothing
trains; it runs under a file lock, so the check-then-launch is atomic across threads and processes.
The manager (Start, Stop, Resume, Delete) and the worker (when its run ends, however it ends) call it.
No torch import.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from studio import paths
from studio.config import RunSpec
from studio.jobs import process
from studio.jobs.events import (
    DEAD_AFTER_SEC,
    STOP_FILE,
    latest_checkpoint,
    log_tail,
    read_status,
    resume_hint,
    write_status,
)

_children: dict[str, subprocess.Popen] = {}  # workers this process started, reaped on refresh


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
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    with open(path / "worker.log", "a", encoding="utf-8") as log:  # the child keeps its own copy of the handle
        log.write(f"\n=== worker started {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        log.flush()
        proc = subprocess.Popen(worker_command(spec, path), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env, cwd=root)
    _children[path.name] = proc
    write_status(path, state="running", **process.identity(proc.pid), heartbeat=time.time(), launched=time.time(),
                 phase=None, message="Starting the worker...")


def _reap() -> None:
    for run_id, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[run_id]


def mark_dead() -> list[str]:
    """Reap finished children, and mark workers that died without saying so as failed (call under the lock).

    A worker is alive when the process recorded at launch (pid, start time, boot) still runs and its
    heartbeat is fresh; a hung one (alive, no heartbeat for DEAD_AFTER_SEC) is killed first.
    """
    _reap()
    dead = []
    for path in sorted(paths.runs_dir().iterdir()):
        status = read_status(path)
        if status.get("state") not in ("running", "stopping"):
            continue
        stale = time.time() - status.get("heartbeat", 0) > DEAD_AFTER_SEC
        alive = process.alive(status)
        if alive and not stale:
            continue
        if alive:
            process.kill_group(status)
        write_status(path, state="failed", finished=time.time(), fix=None, phase=None,
                     message="The worker process died without finishing (killed, out of memory, or crashed). "
                             + resume_hint(path.name, latest_checkpoint(path)), log_tail=log_tail(path, 15))
        dead.append(path.name)
    return dead


@contextmanager
def schedule_lock():
    """A file lock: the check-then-launch is atomic across threads and processes (two users pressing Start
    at once, a worker finishing while the app schedules), so only one run ever trains."""
    with open(paths.runs_dir() / ".schedule.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def schedule() -> str | None:
    """Mark dead workers, then start the oldest queued run when nothing is training. Returns the run
    started, if any. However a run ended (finished, stopped, failed, killed -9), the next one starts here."""
    with schedule_lock():
        return schedule_locked()


def busy_runs() -> list[str]:
    """The runs training now (running or stopping), after marking dead workers (call under the lock)."""
    mark_dead()
    return [p.name for p in paths.runs_dir().iterdir()
            if (p / "spec.yaml").is_file() and read_status(p).get("state") in ("running", "stopping")]


def schedule_locked() -> str | None:
    if busy_runs():
        return None
    runs = [(read_status(p), p) for p in paths.runs_dir().iterdir() if (p / "spec.yaml").is_file()]
    # a resumed run keeps its place in the line (its creation time), so Resume never lets a later run jump it
    queued = sorted((s.get("created", 0), p.name, p) for s, p in runs if s.get("state") == "queued")
    if not queued:
        return None
    _launch(queued[0][2])
    return queued[0][2].name
