"""train, runs: the CLI twin of the Train tab (same manager, same worker)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add(sub) -> None:
    p = sub.add_parser("train", help="train in the foreground from a run YAML (a RunSpec), with a progress bar")
    p.add_argument("--config", required=True, help="run YAML: name, dataset, model, lora, train (and sweep:)")
    p.add_argument("--background", action="store_true", help="queue it and return (like the Start button)")
    p.set_defaults(func=train)

    p = sub.add_parser("runs", help="list, show, stop, resume or delete training runs")
    rsub = p.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    rsub.add_parser("list", help="all runs and their states").set_defaults(func=runs_list)
    for name, func, text in (("show", runs_show, "status, last events and log tail of a run"),
                             ("stop", runs_stop, "graceful stop (twice: kill)"),
                             ("resume", runs_resume, "continue from the latest checkpoint"),
                             ("delete", runs_delete, "delete a run folder")):
        q = rsub.add_parser(name, help=text)
        q.add_argument("run")
        if name == "delete":
            q.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        if name in ("resume",):
            q.add_argument("--wait", action="store_true", help="wait for it to finish")
        q.set_defaults(func=func)
    from studio.commands import experiments

    experiments.add_runs(rsub)  # runs compare | report | checkpoints | branch | checkpoint-adapter


def train(args) -> int:
    from studio.commands import experiments
    from studio.config import RunSpec, load_yaml
    from studio.experiments import sweeps
    from studio.jobs import manager, worker

    if sweeps.is_sweep_file(args.config):  # a sweep: section queues one run per point
        return experiments.queue_sweep(args)
    spec = load_yaml(RunSpec, args.config)
    if args.background:
        path = manager.start(spec)
        print(f"queued {path.name}: follow it with `python -m studio runs show {path.name}`")
        return 0
    path = manager.create_foreground(spec)  # refused while another run trains; the queue waits for this one
    print(f"training {path.name} in the foreground (run folder {path})", file=sys.stderr)
    status = worker.Status(path)  # the run's one status writer: a failure is never beaten back to "running"
    try:
        state = worker.train(path, foreground=True, status=status)
    except BaseException as exc:  # the real error lands in status.json, so `runs show` and the Train tab show it
        import time

        message, fix = worker.explain_failure(exc, spec)
        status.finish(state="failed", finished=time.time(), message=message, fix=fix)
        raise
    finally:
        manager.schedule()  # the queue waited for this run: start the next one
    print(json.dumps(_status(path), indent=2, default=str))
    return 0 if state in ("completed", "stopped") else 1


def _status(path: Path) -> dict:
    from studio.jobs.events import read_status

    return read_status(path)


def runs_list(args) -> int:
    from studio.jobs import manager

    rows = manager.list_runs()
    if not rows:
        print("no runs yet: start one with `python -m studio train --config run.yaml`")
    for r in rows:
        total = r["total_steps"] or "?"
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
        print(f"{r['run']:30} {r['state']:10} step {r['step']}/{total:<6} loss {loss:8} {r['created']}")
    return 0


def runs_show(args) -> int:
    from studio.jobs import manager
    from studio.jobs.events import log_tail, read_events

    path = manager.run_dir(args.run)
    manager.refresh()
    print(json.dumps(_status(path), indent=2, default=str))
    for event in read_events(path)[-5:]:
        print(json.dumps(event))
    print("--- log tail ---")
    print(log_tail(path, 20))
    return 0


def runs_stop(args) -> int:
    from studio.jobs import manager

    print(manager.stop(args.run))
    return 0


def runs_resume(args) -> int:
    from studio.jobs import manager

    print(manager.resume(args.run))
    if args.wait:
        status = manager.wait(args.run)
        print(status.get("state"), status.get("message", ""))
        return 0 if status.get("state") == "completed" else 1
    return 0


def runs_delete(args) -> int:
    from studio.jobs import manager

    if not args.yes:
        answer = input(f"Delete run {args.run} and its checkpoints and adapter? [y/N] ") if sys.stdin.isatty() else ""
        if answer.strip().lower() != "y":
            print("not deleted (pass --yes to skip the question)")
            return 1
    manager.delete(args.run)
    print(f"deleted {args.run}")
    return 0
