"""Benchmark tasks through EleutherAI's lm-eval harness, for the base and each adapter on one loaded base.

The model is the studio's own engine (studio.inference): the base is loaded once, each adapter is attached
and swapped in by the engine (the base is the same weights with adapters disabled), and lm-eval's HFLM wraps
the model object it hands out, so nothing is read from a hub and no second copy is loaded. Runs as an
evaluation task in its own process (studio.jobs.tasks kind "lm_eval"); `python -m studio eval lm-eval` calls
the same function.

Tasks are lm-eval task YAML files whose data is local (no hub is reachable here), found in two folders:
- assets/lm_eval_tasks/: the team's tiny tasks (studio_tiny_mc: 30 multiple-choice facts; studio_tiny_arith:
  12 sums answered by generation), for tests and a quick check;
- <workspace>/lm_eval_tasks/: the user's own, e.g. a YAML with `dataset_path: json` and
  `dataset_kwargs: {data_files: {test: my_items.jsonl}}`.
The studio reads each YAML itself (yaml.safe_load: no `!function` Python code runs) and resolves relative
`data_files` against the YAML's folder, then hands lm-eval the config as a dict. Locally, `include_path`
(the CLI's --include-path) also lets lm-eval's own loader read a folder of task YAMLs, code included.
"""

from __future__ import annotations

import time
from pathlib import Path

from studio import paths, policy
from studio.errors import ConfigError
from studio.evaluation import BASE, _engine_with, _stop_if, results_folder
from studio.util import Progress, ShouldStop, write_json_atomic
from studio.util import never as _never
from studio.util import no_progress as _no_progress

BUNDLED_TASKS = Path(__file__).resolve().parents[1] / "assets" / "lm_eval_tasks"
USER_TASKS = "lm_eval_tasks"  # <workspace>/lm_eval_tasks/: the user's own task YAMLs and their data
DEFAULT_TASKS = ("studio_tiny_mc",)


def task_folders() -> list[Path]:
    """Where task YAMLs are looked for: the bundled folder, then the workspace's (a user's task of the same
    name wins)."""
    return [BUNDLED_TASKS, paths.workspace() / USER_TASKS]


def available_tasks() -> dict[str, Path]:
    """{task name: its YAML} over the task folders (a YAML without a `task:` key, e.g. a shared include,
    is skipped)."""
    import yaml

    found: dict[str, Path] = {}
    for folder in task_folders():
        for path in sorted(folder.glob("**/*.y*ml")) if folder.is_dir() else []:
            try:
                config = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, OSError):
                continue  # a YAML with !function tags or broken syntax: reported when it is asked for
            if isinstance(config, dict) and isinstance(config.get("task"), str):
                found[config["task"]] = path
    return found


def task_config(path: Path) -> dict:
    """A task YAML as a dict for lm-eval: `include:` merged in, relative data_files made absolute."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"The task file {path} cannot be read as plain YAML ({str(exc).splitlines()[0]}).",
                          "Task files here may not run Python (`!function`); use lm-eval's built-in "
                          "filters and metrics, or pass the folder with --include-path on a local studio.") from exc
    if "include" in config:
        config = {**task_config(path.parent / config.pop("include")), **config}
    kwargs = dict(config.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if isinstance(files, dict):
        kwargs["data_files"] = {split: _local(path, f) for split, f in files.items()}
    elif files is not None:
        kwargs["data_files"] = _local(path, files)
    if kwargs:
        config["dataset_kwargs"] = kwargs
    return config


def _local(yaml_path: Path, files):
    """A data file named relative to its task YAML, as an absolute path (lists stay lists)."""
    if isinstance(files, list):
        return [_local(yaml_path, f) for f in files]
    file = Path(str(files)).expanduser()
    file = file if file.is_absolute() else yaml_path.parent / file
    if not file.is_file():
        raise ConfigError(f"The task {yaml_path.name} reads {file}, which does not exist.",
                          "Put the data file beside the task YAML, or fix its data_files path.")
    return str(file)


def resolve_tasks(names: list[str], include_path: str | None = None) -> tuple[list, object]:
    """lm-eval task specs (config dicts for the studio's folders, names for include_path) and a TaskManager
    that indexes only include_path (never lm-eval's hundreds of hub-backed defaults)."""
    from lm_eval.tasks import TaskManager

    if include_path and policy.hosted():
        raise ConfigError("A hosted studio runs only its own and its users' task folders.",
                          "Leave out --include-path, and put the task in the workspace's lm_eval_tasks/ folder.")
    manager = TaskManager(include_path=include_path, include_defaults=False)
    known = available_tasks()
    specs = []
    for name in names:
        if name in known:
            specs.append(task_config(known[name]))
        elif name in manager.all_tasks:
            specs.append(name)
        else:
            choices = ", ".join(sorted(known) + manager.all_tasks) or "none"
            raise ConfigError(f"There is no lm-eval task named {name!r} (known: {choices}).",
                              f"Pick a known task, or add its YAML and data to {paths.workspace() / USER_TASKS}.")
    if not specs:
        raise ConfigError("No lm-eval task was chosen.", f"Pick one, e.g. {DEFAULT_TASKS[0]}.")
    return specs, manager


def scores(results: dict, task: str) -> dict:
    """lm-eval's `results[task]` as {metric: value}, stderr beside it: 'acc,none' -> acc, 'acc_stderr,none' ->
    acc_stderr; a metric behind a named filter keeps the filter's name ('exact_match[first-number]')."""
    out = {}
    for key, value in (results.get(task) or {}).items():
        if "," not in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        out[metric if filt == "none" else f"{metric}[{filt}]"] = round(float(value), 4)
    return out


def run_lm_eval(ref: str, quant: str, tasks: list[str], adapters: list[str], limit: int | None = None,
                batch_size: int = 8, num_fewshot: int | None = None, chat_template: bool = False,
                include_path: str | None = None, progress: Progress = _no_progress,
                should_stop: ShouldStop = _never, save: bool = True) -> dict:
    """Each task for the base and each adapter; one table row per (model, task, metric)."""
    import lm_eval

    specs, manager = resolve_tasks(list(tasks), include_path)  # refuse an unknown task before loading a model
    progress(0.02, f"Loading {ref} ({quant})...")
    engine, folders = _engine_with(ref, quant, adapters)
    names = [BASE] + [a for a in adapters if a != BASE]
    results: dict[str, dict] = {}
    samples: dict[str, int] = {}
    for i, name in enumerate(names):
        with engine.use(None if name == BASE else name) as model:
            lm = _wrap(model, engine.tokenizer, batch_size)
            for j, (task, spec) in enumerate(zip(tasks, specs, strict=True)):
                _stop_if(should_stop)
                progress(0.05 + 0.95 * (i * len(specs) + j) / (len(names) * len(specs)), f"{name}: {task}")
                out = lm_eval.simple_evaluate(model=lm, tasks=[spec], task_manager=manager, limit=limit,
                                              num_fewshot=num_fewshot, apply_chat_template=chat_template,
                                              log_samples=False, bootstrap_iters=1000, verbosity="WARNING")
                results.setdefault(name, {})[task] = scores(out["results"], task)
                samples[task] = int((out.get("n-samples") or {}).get(task, {}).get("effective", 0))
    report = {"kind": "lm_eval", "model": ref, "quant": quant, "tasks": list(tasks), "limit": limit,
              "num_fewshot": num_fewshot, "chat_template": chat_template, "samples": samples, "results": results,
              "table": table_rows(results), "lm_eval": _version(), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if save:
        report["saved_to"] = [str(p) for p in save_report(report, folders)]
    return report


def _wrap(model, tokenizer, batch_size: int):
    """lm-eval's HFLM around the engine's model object (the adapter active, or the base with adapters off)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def _version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def table_rows(results: dict) -> list[dict]:
    """One row per (task, metric) with a column per model: base and adapters side by side."""
    rows: dict[tuple, dict] = {}
    for name, per_task in results.items():
        for task, metrics in per_task.items():
            for metric, value in metrics.items():
                if metric.endswith("_stderr") or "_stderr[" in metric:
                    continue
                row = rows.setdefault((task, metric), {"task": task, "metric": metric})
                stderr = metrics.get(metric.replace("[", "_stderr[", 1) if "[" in metric else f"{metric}_stderr")
                row[name] = value if stderr is None else f"{value:.4f} ± {stderr:.4f}"
    return list(rows.values())


def save_report(report: dict, folders: dict) -> list[Path]:
    """lm_eval-<time>.json next to each adapter's run (or exports/evals); each card gets its scores."""
    from studio.adapters import update_card

    stamp = time.strftime("%Y%m%d-%H%M%S")
    written = []
    for folder in dict.fromkeys([results_folder(p) for p in folders.values()] or [results_folder(None)]):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"lm_eval-{stamp}.json"
        write_json_atomic(path, report)
        written.append(path)
    for name, folder in folders.items():
        update_card(folder, {f"lm_eval.{task}.{metric}": value for task, metrics in report["results"][name].items()
                             for metric, value in metrics.items() if "stderr" not in metric})
    return written
