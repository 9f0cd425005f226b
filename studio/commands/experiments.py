"""sweep, runs compare|report|checkpoints|branch|checkpoint-adapter: the CLI twin of the Experiments tab."""

from __future__ import annotations

import json

import yaml


def add(sub) -> None:
    p = sub.add_parser("sweep", help="list, show (ranked) or stop the sweeps queued from a run YAML's sweep: section")
    ssub = p.add_subparsers(dest="sweep_command", required=True, metavar="ACTION")
    ssub.add_parser("list", help="all sweeps, newest first").set_defaults(func=sweep_list)
    for name, func, text in (("show", sweep_show, "the sweep's runs ranked by its metric"),
                             ("stop", sweep_stop, "take its queued runs out of the queue, stop the running one")):
        q = ssub.add_parser(name, help=text)
        q.add_argument("sweep")
        q.set_defaults(func=func)


def add_runs(rsub) -> None:
    """The experiment actions under `python -m studio runs` (added by studio.commands.train)."""
    q = rsub.add_parser("compare", help="runs side by side: curves, settings that differ, metrics, data, base")
    q.add_argument("runs", nargs="+", metavar="RUN", help="two or more run names")
    q.add_argument("--axis", choices=["step", "tokens"], default="step", help="the shared x axis of the curves")
    q.add_argument("--html", help="also write the comparison (with its curves as SVG) to this HTML file")
    q.add_argument("--json", action="store_true", help="print the comparison as JSON")
    q.set_defaults(func=runs_compare)
    q = rsub.add_parser("report", help="write a self-contained HTML report of a run")
    q.add_argument("run")
    q.add_argument("--out", help="where to write it (default runs/<id>/report.html)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    q.set_defaults(func=runs_report)
    q = rsub.add_parser("checkpoints", help="a run's checkpoints: step, loss, time")
    q.add_argument("run")
    q.set_defaults(func=runs_checkpoints)
    q = rsub.add_parser("branch", help="a new run from a checkpoint, with other settings (parent + step recorded)")
    q.add_argument("run")
    q.add_argument("--step", type=int, required=True, help="the checkpoint's step (see `runs checkpoints`)")
    q.add_argument("--name", required=True, help="the new run's name")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a changed setting, e.g. --set train.lr=5e-5 --set train.max_steps=20")
    q.set_defaults(func=runs_branch)
    q = rsub.add_parser("checkpoint-adapter", help="save a checkpoint as an adapter for chat, eval and export")
    q.add_argument("run")
    q.add_argument("--step", type=int, required=True)
    q.set_defaults(func=runs_checkpoint_adapter)


def queue_sweep(args) -> int:
    """`train --config sweep.yaml`: queue every point (names printed); without --background, wait and rank."""
    from studio.experiments import sweeps

    sweep, names = sweeps.queue(sweeps.read_file(args.config))
    print(f"sweep {sweep.name}: {len(names)} runs queued ({sweep.method}), ranked by {sweep.metric} "
          f"({'highest' if sweep.direction == 'max' else 'lowest'} first)")
    for name in names:
        print(name)
    if args.background:
        print(f"follow it with `python -m studio sweep show {sweep.name}`")
        return 0
    _wait_for(names)
    print(sweep_table(sweep.name))
    return 0


def _wait_for(names: list[str], poll: float = 2.0) -> None:
    from studio.jobs import manager

    for name in names:
        status = manager.wait(name, timeout=24 * 3600, poll=poll)
        print(f"{name}: {status.get('state')} {status.get('message', '')}", flush=True)


def sweep_table(name: str) -> str:
    from studio.experiments import sweeps
    from studio.experiments.compare import table_text

    return table_text(sweeps.ranking(name))


def sweep_list(args) -> int:
    from studio.experiments import sweeps

    names = sweeps.list_sweeps()
    if not names:
        print("no sweeps yet: add a sweep: section to a run YAML and `python -m studio train --config it.yaml`")
    for name in names:
        record = sweeps.read(name)
        print(f"{name:30} {record.get('method', ''):7} {len(record.get('runs', []))} runs, metric "
              f"{record.get('metric')}{' (stopped)' if record.get('stopped') else ''}")
    return 0


def sweep_show(args) -> int:
    print(sweep_table(args.sweep))
    return 0


def sweep_stop(args) -> int:
    from studio.experiments import sweeps

    for run, result in sweeps.stop(args.sweep).items():
        print(f"{run}: {result}")
    return 0


def runs_compare(args) -> int:
    from studio.experiments import compare

    comparison = compare.compare(args.runs, args.axis)
    if args.json:
        print(json.dumps({"runs": comparison.summary, "differences": comparison.differences,
                          "curves": comparison.curves}, indent=2, default=str))
    else:
        print(compare.as_text(comparison))
    if args.html:
        from pathlib import Path

        Path(args.html).write_text(compare.as_html(comparison), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


def runs_report(args) -> int:
    from studio.experiments import report

    print(f"wrote {report.write(args.run, args.out, args.overwrite)}")
    return 0


def runs_checkpoints(args) -> int:
    from studio.experiments.checkpoints import list_checkpoints
    from studio.experiments.compare import table_text
    from studio.jobs import manager

    rows = [{k: v for k, v in r.items() if k != "path"} for r in list_checkpoints(manager.run_dir(args.run))]
    print(table_text(rows) if rows else f"{args.run} has no checkpoint yet")
    return 0


def parse_settings(pairs: list[str]) -> dict:
    """["train.lr=5e-5", ...] -> {"train.lr": 5e-05}: each value read as YAML (numbers, true/false, text)."""
    from studio.errors import ConfigError

    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r} is not KEY=VALUE.", "Write e.g. --set train.lr=5e-5.")
        changes[key.strip()] = yaml.safe_load(value)
    return changes


def runs_branch(args) -> int:
    from studio.experiments import checkpoints

    path = checkpoints.branch(args.run, args.step, args.name, parse_settings(args.set))
    print(f"queued {path.name}: branched from {args.run} at step {args.step} "
          f"(follow it with `python -m studio runs show {path.name}`)")
    return 0


def runs_checkpoint_adapter(args) -> int:
    from studio.experiments import checkpoints

    name = checkpoints.save_as_adapter(args.run, args.step)
    print(f"adapter {name}: pick it in the Chat, Evaluate or Export tab (or --adapter {name} in the CLI)")
    return 0
