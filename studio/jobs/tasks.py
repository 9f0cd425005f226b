"""Evaluation and pruning as tasks, each in its own process like training: `python -m studio.jobs.tasks TASK_DIR`.

The app never loads a model copy for them, and pruning's one-thread setting (pruning._one_thread) stays in
the task's process, away from chat. No torch import at module level: the UI starts, polls and stops tasks.

tasks/<id>/
  task.json      {kind, args, created}: what to run; kind is one of KINDS, args its function's arguments
  status.json    {kind, state, fraction, message, fix, pid, heartbeat, started, finished} (states as in events.py)
  result.json    what the function returned, written once it completed
  task.log       everything the task printed: progress lines, a traceback on a crash
  stop.request   Stop: the task checks it between batches (a second Stop kills the process)
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

from studio import paths, policy
from studio.errors import RunError, StudioError
from studio.jobs import process
from studio.jobs.events import ACTIVE, DEAD_AFTER_SEC, STOP_FILE, Status, read_status, write_status
from studio.models import check_ref
from studio.util import read_json, write_json_atomic

KINDS = ("eval_perplexity", "eval_preference", "eval_battery", "eval_rewards", "prune", "prune_sweep", "lm_eval",
         "merge_adapters")
LOG = "task.log"
KEEP_DAYS_DEFAULT = 14.0  # finished task folders older than this are deleted when a task starts


def keep_days() -> float:
    """How long finished task folders are kept: STUDIO_TASKS_KEEP_DAYS (days; 0 keeps them all), default 14."""
    raw = os.environ.get("STUDIO_TASKS_KEEP_DAYS", "")
    try:
        return float(raw) if raw.strip() else KEEP_DAYS_DEFAULT
    except ValueError:
        raise RunError(f"STUDIO_TASKS_KEEP_DAYS={raw!r} is not a number of days.",
                       "Set it to a number such as 14 (0 keeps every task folder), or unset it.") from None
_children: dict[str, subprocess.Popen] = {}  # tasks this process started, reaped when polled


def start(kind: str, **args) -> Path:
    """Write tasks/<id>/ and start its process. One task at a time: each loads its own copy of a model."""
    if kind not in KINDS:
        raise RunError(f"Unknown task kind {kind!r}.", f"Use one of: {', '.join(KINDS)}.")
    if args.get("overwrite"):
        policy.refuse_overwrite("the task's output")  # hosted: users never overwrite exports
    _check_visible(args)
    if args.get("ref") is not None:  # a wrong model path is said now, not after a process has started for it
        check_ref(args["ref"])
    with open(paths.tasks_dir() / ".start.lock", "w") as lock:  # two Start presses at once start one task
        fcntl.flock(lock, fcntl.LOCK_EX)
        busy = latest(everyone=True)
        if busy and status(busy).get("state") in ACTIVE:
            raise RunError(f"Another evaluation or pruning task is running ({busy.name}).",
                           "Wait for it to finish, or press Stop.")
        prune_old()
        folder = paths.tasks_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        policy.stamp(folder)  # hosted: the task is the logged-in user's
        write_json_atomic(folder / "task.json", {"kind": kind, "args": args, "created": time.time()})
        write_status(folder, kind=kind, state="queued", fraction=0.0, heartbeat=time.time(), message="Starting...")
        _children[folder.name] = _launch(folder)
        write_status(folder, **process.identity(_children[folder.name].pid), heartbeat=time.time())
    return folder


def _check_visible(args: dict) -> None:
    """Hosted: the task process sees every folder, so the caller's names are checked here, by name."""
    if not policy.hosted():
        return
    from studio.adapters import get_adapter
    from studio.data.store import _folder

    for name in (args.get("adapters") or []) + list((args.get("spec") or {}).get("inputs") or []):
        policy.require_name(name)
        get_adapter(name)  # another user's adapter: "there is no adapter named ..."
    dataset = args.get("dataset_name") or args.get("dataset")
    if dataset and not str(dataset).startswith("builtin:"):
        policy.require_name(dataset, "dataset")
        _folder(dataset)  # another user's dataset: "there is no prepared dataset named ..."


def prune_old(days: float | None = None) -> list[str]:
    """Delete finished task folders (their logs and results) older than `days` (the keep_days setting).

    Never an active task, and never the newest task of a kind: what the Evaluate tab shows after a restart.
    Exported models are not here (pruning saves them under exports/), so nothing a user keeps is lost.
    """
    days = keep_days() if days is None else days
    if days <= 0:
        return []
    newest = {latest((kind,), everyone=True) for kind in KINDS}
    cutoff = time.time() - days * 86400
    removed = []
    for folder in paths.tasks_dir().iterdir():
        task = read_json(folder / "task.json", {}) if folder.is_dir() else None
        if not task or folder in newest or task.get("created", time.time()) >= cutoff:
            continue
        if read_status(folder).get("state") in ACTIVE and process.alive(read_status(folder)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


def _launch(folder: Path) -> subprocess.Popen:
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               STUDIO_WORKSPACE=str(paths.workspace()), PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(folder / LOG, "a", encoding="utf-8") as log:
        return subprocess.Popen([sys.executable, "-m", "studio.jobs.tasks", str(folder)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=env, cwd=root)


def latest(kinds: tuple[str, ...] = KINDS, everyone: bool = False) -> Path | None:
    """The newest task of these kinds (after an app restart, what the Evaluate tab shows); on a hosted
    studio the caller's own or a published one, unless `everyone` (one task runs at a time, whoever's)."""
    found = [(read_json(p / "task.json", {}), p) for p in paths.tasks_dir().iterdir()
             if p.is_dir() and (everyone or policy.can_see(p))]
    found = [(task.get("created", 0), p) for task, p in found if task.get("kind") in kinds]
    return max(found)[1] if found else None


def status(folder: Path) -> dict:
    """status.json; a task whose process died without saying so (killed, out of memory) is marked failed."""
    for name, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[name]
    current = read_status(folder)
    if current.get("state") not in ACTIVE:
        return current
    stale = time.time() - current.get("heartbeat", 0) > DEAD_AFTER_SEC
    alive = process.alive(current)
    if (current.get("pid") is None or alive) and not stale:  # no pid: Popen is under way
        return current
    if alive:
        process.kill_group(current)  # hung: never a process that merely reuses the task's pid
    return write_status(folder, state="failed", finished=time.time(),
                        message="The task process died without finishing (killed, out of memory, or crashed).",
                        fix=f"Start it again; its log is {folder / LOG}.")


def result(folder: Path) -> dict | None:
    return read_json(folder / "result.json")


def wait(folder: Path, timeout: float = 3600, poll: float = 0.5) -> dict:
    """Block until the task leaves the active states; its final status (the UI polls the same way)."""
    deadline = time.time() + timeout
    while (current := status(folder)).get("state") in ACTIVE and time.time() < deadline:
        time.sleep(poll)
    return current


def describe(current: dict) -> str:
    """One line for the user: the state, the message and, for a failure, how to fix it."""
    fix = f" Fix: {current['fix']}" if current.get("fix") and current.get("state") == "failed" else ""
    return f"{current.get('message', '')}{fix}".strip()


def stop(folder: Path) -> str:
    """First call: ask the task to stop between batches. Second call: kill its process now."""
    policy.require_owner(folder, "stop", f"the task {folder.name}")
    state = status(folder).get("state")
    if state not in ACTIVE:
        return state or "unknown"
    if (folder / STOP_FILE).exists():
        process.kill_group(read_status(folder))
        write_status(folder, state="stopped", finished=time.time(), message="Killed on a second Stop.")
        return "killed"
    (folder / STOP_FILE).touch()
    return "stopping"


def _call(kind: str, args: dict, progress, should_stop):
    """The function behind `kind`: the same ones `python -m studio eval` and `prune` call."""
    if kind in ("lm_eval", "merge_adapters"):
        return _call_lm_eval_or_merge(kind, args, progress, should_stop)
    if kind == "eval_rewards":  # GRPO: held-out mean reward and exact match (studio.reward_eval)
        from studio.reward_eval import compare_rewards

        return compare_rewards(**args, progress=progress, should_stop=should_stop)
    if kind.startswith("eval_"):
        from studio import evaluation

        compare = {"eval_perplexity": evaluation.compare_perplexity, "eval_preference": evaluation.compare_preference,
                   "eval_battery": evaluation.compare_battery}[kind]
        return compare(**args, progress=progress, should_stop=should_stop)
    from studio import pruning

    if kind == "prune":
        sparsity, pattern = pruning.parse_level(args.pop("level"))
        spec = pruning.PruneSpec(args.pop("method"), sparsity, pattern, calib_samples=args.pop("calib_samples", 16),
                                 calib_len=args.pop("calib_len", 128))
        return pruning.prune_and_save(spec=spec, **args, progress=progress, should_stop=should_stop)
    results = pruning.sweep(**args, progress=progress, should_stop=should_stop)
    return {"results": results, "folder": str(pruning.save_sweep(results))}


def _call_lm_eval_or_merge(kind: str, args: dict, progress, should_stop):
    """lm-eval benchmark tasks (studio.lmeval) and adapter merging (studio.merging), as `python -m studio eval
    lm-eval` and `adapters merge` run them."""
    if kind == "lm_eval":
        from studio.lmeval import run_lm_eval

        return run_lm_eval(**args, progress=progress, should_stop=should_stop)
    from studio.merging import MergeSpec, merge

    spec = args["spec"]
    info = merge(MergeSpec(**{**spec, "inputs": tuple(spec["inputs"]), "weights": tuple(spec.get("weights") or ())}),
                 ref=args.get("ref"), progress=progress)
    return {"name": info.name, "path": str(info.path), "card": info.card}


def run(folder: Path) -> int:
    """The task process: run task.json's function, report progress to status.json, write result.json."""
    task = read_json(folder / "task.json", {})
    state = Status(folder, enabled=True)
    state.update(state="running", **process.identity(os.getpid()), started=time.time(),
                 message=f"Starting {task.get('kind')}...")
    state.start_heartbeat()  # liveness while a model loads

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction:4.0%}] {message}", flush=True)
        state.update(fraction=round(float(fraction), 4), message=message)

    should_stop = (folder / STOP_FILE).exists
    try:
        output = _call(task["kind"], dict(task["args"]), progress, should_stop)
    except StudioError as exc:  # a cancel raises one too: the stop file says which
        ended = "stopped" if should_stop() else "failed"
        print(f"[{ended}] {exc}", flush=True)
        state.finish(state=ended, message=exc.message, fix=exc.fix, finished=time.time())
        return 0 if ended == "stopped" else 1
    except Exception as exc:  # a bug or out of memory: the traceback goes to the log, its gist to the UI
        traceback.print_exc()
        state.finish(state="failed", message=f"{type(exc).__name__}: {exc}", finished=time.time(),
                     fix=f"See the task's log, {folder / LOG}.")
        return 1
    write_json_atomic(folder / "result.json", output)
    state.finish(state="completed", fraction=1.0, finished=time.time(),
                 message=f"Done in {time.time() - state.data['started']:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
