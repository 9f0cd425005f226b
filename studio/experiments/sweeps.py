"""Sweeps: a run YAML with a `sweep:` section expands into ordinary queued runs, one per point.

```yaml
name: medical                # the sweep's name; each run is named after it and its values
dataset: medical
train: {max_steps: 20}
sweep: {method: grid, parameters: {train.lr: [1.0e-4, 2.0e-4], lora.r: [8, 16]}, metric: eval_loss}
```

`method: random` draws `count` points with `seed` (a parameter is a list of values, or {low, high, log}).
Every point is checked (known setting, valid value, free run name, dataset there) before anything is queued.
The sweep is a small file, sweeps/<name>/sweep.json, beside the run folders it lists: the runs queue, train
and survive an app restart like any run, and the sweep only remembers which runs are its own. No torch import.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import random
import re
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from studio import paths, policy
from studio.config import RunSpec, from_dict
from studio.errors import ConfigError
from studio.util import read_json, write_json_atomic

METHODS = ("grid", "random")
SWEEP_FILE = "sweep.json"
MAX_POINTS = 64  # a sweep queues this many runs at most: a typo in a list should not queue a thousand
NOT_SWEPT = ("name", "dataset_sha256", "parent_run", "parent_step")  # set by the studio, not by a sweep
HIGHER_IS_BETTER = ("accuracy", "margin", "reward", "rouge")  # metric names ranked largest first


@dataclass(frozen=True)
class Sweep:
    name: str
    method: str = "grid"
    parameters: dict = field(default_factory=dict)  # dotted RunSpec path -> list of values (or {low, high, log})
    metric: str = "eval_loss"
    count: int = 0  # random: how many points
    seed: int = 0  # random: the same seed draws the same points
    goal: str = ""  # "min" or "max"; empty: from the metric's name (losses lowest first, accuracies highest)

    @property
    def direction(self) -> str:
        if self.goal:
            return self.goal
        return "max" if any(word in self.metric for word in HIGHER_IS_BETTER) else "min"


# ---------------------------------------------------------------- reading and checking


def is_sweep_file(path: str | Path) -> bool:
    return isinstance(data := read_file(path), dict) and "sweep" in data


def read_file(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.", "Check the path.")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not valid YAML: {exc}", "Fix the syntax (indentation, colons).") from exc


def parse(data: dict) -> tuple[dict, Sweep]:
    """(the base run settings, the sweep) from a run YAML's contents; the sweep section checked."""
    base = {k: v for k, v in data.items() if k != "sweep"}
    section = data.get("sweep")
    if not isinstance(section, dict):
        raise ConfigError("The sweep: section should be a mapping.",
                          "Write it as sweep: {method: grid, parameters: {train.lr: [1.0e-4, 2.0e-4]}}.")
    known = {f.name for f in dataclasses.fields(Sweep)} - {"name"}
    if unknown := sorted(set(section) - known):
        raise ConfigError(f"Unknown sweep setting {unknown[0]!r}.", f"Known: {', '.join(sorted(known))}.")
    sweep = Sweep(name=str(base.get("name") or "sweep"), **section)
    _check_sweep(sweep)
    return base, sweep


def _check_sweep(sweep: Sweep) -> None:
    if sweep.method not in METHODS:
        raise ConfigError(f"sweep.method is {sweep.method!r}.", f"Use one of: {', '.join(METHODS)}.")
    if not isinstance(sweep.parameters, dict) or not sweep.parameters:
        raise ConfigError("The sweep has no parameters.", "Add e.g. parameters: {train.lr: [1.0e-4, 2.0e-4]}.")
    if sweep.goal not in ("", "min", "max"):
        raise ConfigError(f"sweep.goal is {sweep.goal!r}.", "Use min (lower is better) or max, or leave it out.")
    if sweep.method == "random" and (not isinstance(sweep.count, int) or sweep.count < 1):
        raise ConfigError("A random sweep needs a count of points.", "Add count: 4 (and a seed) to the sweep.")
    for key, values in sweep.parameters.items():
        check_path(key)
        _check_values(key, values, sweep.method)


def check_path(key: str) -> None:
    """A dotted RunSpec setting such as train.lr or lora.r; ConfigError naming the known ones otherwise."""
    cls, parts = RunSpec, str(key).split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints or (cls is RunSpec and part in NOT_SWEPT):
            known = ", ".join(".".join([*parts[:i], name]) for name in hints if name not in NOT_SWEPT)
            raise ConfigError(f"The sweep parameter {key!r} is not a setting a sweep can vary.",
                              f"Use a dotted run setting, e.g. train.lr or lora.r (known here: {known}).")
        if dataclasses.is_dataclass(hints[part]) == (i == len(parts) - 1):  # a whole section, or too deep
            raise ConfigError(f"The sweep parameter {key!r} is not a single setting.",
                              "Name one setting inside a section, e.g. train.lr, lora.r or model.quant.")
        cls = hints[part]


def _check_values(key: str, values, method: str) -> None:
    if isinstance(values, dict) and method == "random":
        if set(values) - {"low", "high", "log"} or not {"low", "high"} <= set(values):
            raise ConfigError(f"The range of {key!r} should be {{low, high}} (and log: true for rates).",
                              f"Write {key}: {{low: 1.0e-5, high: 1.0e-3, log: true}}, or a list of values.")
        if float(values["low"]) >= float(values["high"]) or (values.get("log") and float(values["low"]) <= 0):
            raise ConfigError(f"The range of {key!r} is empty or not positive for a log scale.",
                              "Give low < high (both above 0 with log: true).")
        return
    if not isinstance(values, list) or not values:
        raise ConfigError(f"The sweep parameter {key!r} has no list of values.",
                          f"Write {key}: [value1, value2] (a random sweep also takes {{low, high}}).")


# ---------------------------------------------------------------- expanding


def points(sweep: Sweep) -> list[dict]:
    """The settings of each run: every combination (grid), or `count` draws with `seed` (random)."""
    keys = list(sweep.parameters)
    if sweep.method == "grid":
        found = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*sweep.parameters.values())]
    else:
        found = _draw(sweep, keys)
    if len(found) > MAX_POINTS:
        raise ConfigError(f"The sweep has {len(found)} points; at most {MAX_POINTS} are queued at once.",
                          "Use fewer values, or method: random with a count.")
    return found


def _draw(sweep: Sweep, keys: list[str]) -> list[dict]:
    """`count` distinct points drawn with the sweep's seed (fewer when the lists have fewer combinations)."""
    rng = random.Random(sweep.seed)
    found: list[dict] = []
    for _ in range(sweep.count * 50):
        point = {key: _draw_one(rng, sweep.parameters[key]) for key in keys}
        if point not in found:
            found.append(point)
        if len(found) == sweep.count:
            break
    return found


def _draw_one(rng: random.Random, values):
    if isinstance(values, list):
        return rng.choice(values)
    low, high = float(values["low"]), float(values["high"])
    if values.get("log"):
        return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")
    return float(f"{rng.uniform(low, high):.3g}")


def set_path(data: dict, key: str, value) -> dict:
    """A copy of nested `data` with the dotted `key` set to `value`."""
    data = copy.deepcopy(data)
    *sections, last = key.split(".")
    here = data
    for section in sections:
        here = here.setdefault(section, {}) if isinstance(here.get(section, {}), dict) else {}
    here[last] = value
    return data


def run_name(sweep_name: str, point: dict) -> str:
    """The sweep's name and each value: medical-lr0.0001-r8."""
    parts = [sweep_name] + [f"{key.rsplit('.', 1)[-1]}{_short(value)}" for key, value in point.items()]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))
    return name[:100]


def _short(value) -> str:
    if isinstance(value, bool):
        return "-on" if value else "-off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def expand(data: dict) -> tuple[Sweep, list[RunSpec]]:
    """The sweep and one checked RunSpec per point: an unknown setting or a bad value raises before any run."""
    base, sweep = parse(data)
    specs = []
    for point in points(sweep):
        settings = dict(base, name=run_name(sweep.name, point))
        for key, value in point.items():
            settings = set_path(settings, key, value)
        try:
            specs.append(from_dict(RunSpec, settings))
        except ConfigError as exc:
            raise ConfigError(f"Sweep point {point}: {exc.message}", exc.fix) from exc
    names = [s.name for s in specs]
    if len(set(names)) < len(names):
        raise ConfigError("Two sweep points get the same run name.", "Give each parameter distinct values.")
    return sweep, specs


# ---------------------------------------------------------------- on disk


def sweeps_dir() -> Path:
    path = paths.workspace() / "sweeps"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sweep_dir(name: str) -> Path:
    path = sweeps_dir() / paths.check_name(name, "sweep name")
    if not (path / SWEEP_FILE).is_file() or not policy.can_see(path):
        known = ", ".join(list_sweeps()) or "none yet"
        raise ConfigError(f"There is no sweep named {name!r} (known: {known}).",
                          "Queue one with `python -m studio train --config sweep.yaml --background`.")
    return path


def list_sweeps() -> list[str]:
    found = [p for p in sweeps_dir().iterdir() if (p / SWEEP_FILE).is_file() and policy.can_see(p)]
    return [p.name for p in sorted(found, key=lambda p: read_json(p / SWEEP_FILE, {}).get("created", 0), reverse=True)]


def read(name: str) -> dict:
    return read_json(sweep_dir(name) / SWEEP_FILE, {}) or {}


def queue(data: dict) -> tuple[Sweep, list[str]]:
    """Check every point, then record the sweep and queue its runs (oldest first: they train one by one)."""
    from studio.jobs import manager

    sweep, specs = expand(data)
    _check_free(sweep, specs)
    folder = sweeps_dir() / sweep.name
    folder.mkdir()
    policy.stamp(folder)  # hosted: the sweep is the logged-in user's
    record = {**dataclasses.asdict(sweep), "direction": sweep.direction, "runs": [s.name for s in specs],
              "created": time.time(), "stopped": False}
    write_json_atomic(folder / SWEEP_FILE, record)
    queued = []
    try:
        for spec in specs:
            queued.append(manager.create(spec).name)
    except Exception:
        for name in queued:  # a refusal half-way (a quota): the runs already queued leave the queue again
            manager.stop(name)
        raise
    manager.schedule()
    return sweep, queued


def _check_free(sweep: Sweep, specs: list[RunSpec]) -> None:
    """The sweep's and every run's name are free and each dataset is prepared: refused before any run queues."""
    if (sweeps_dir() / paths.check_name(sweep.name, "sweep name")).exists():
        raise ConfigError(f"A sweep named {sweep.name!r} already exists.", "Give the sweep YAML another name:.")
    for spec in specs:
        if (paths.runs_dir() / spec.name).exists():
            raise ConfigError(f"A run named {spec.name!r} already exists.", "Give the sweep YAML another name:.")
    _check_quota(len(specs))
    for dataset in sorted({s.dataset for s in specs}):
        if not (paths.datasets_dir() / dataset / "meta.json").is_file():
            raise ConfigError(f"The dataset {dataset!r} does not exist.",
                              "Prepare it in the Data tab (or `python -m studio data prepare`) first.")


def _check_quota(count: int) -> None:
    """Hosted: the whole sweep must fit the user's runs quota (STUDIO_MAX_RUNS), or none of it queues."""
    from studio.jobs.events import ACTIVE, read_status

    active = [policy.owner_of(p)["owner"] for p in paths.runs_dir().iterdir()
              if (p / "spec.yaml").is_file() and read_status(p).get("state") in ACTIVE]
    policy.check_run_quota(active + [policy.actor().user] * (count - 1))


def stop(name: str) -> dict[str, str]:
    """Stop the sweep: its queued runs leave the queue, a running one stops at its next step (checkpoint kept).
    Returns {run: what happened}."""
    from studio.errors import StudioError
    from studio.jobs import manager
    from studio.jobs.events import ACTIVE, read_status

    folder = sweep_dir(name)
    policy.require_owner(folder, "stop", f"sweep {name!r}")
    record = read(name)
    write_json_atomic(folder / SWEEP_FILE, {**record, "stopped": True, "stopped_at": time.time()})
    done = {}
    for run in _queued_first(record.get("runs", [])):
        path = paths.runs_dir() / run
        if (path / "spec.yaml").is_file() and read_status(path).get("state") in ACTIVE:
            try:
                done[run] = manager.stop(run)
            except StudioError as exc:  # it ended between the read and the stop
                done[run] = exc.message
    return done


def _queued_first(runs: list[str]) -> list[str]:
    """Queued runs before the running one, so stopping the running run cannot start the next of the sweep."""
    from studio.jobs.events import read_status

    return sorted(runs, key=lambda r: read_status(paths.runs_dir() / r).get("state") != "queued")


def metric_value(record, metric: str):
    """The run's `metric` at its end: the final metrics, the card (evaluations), else the last logged value."""
    for source in (record.final_metrics, record.card.get("metrics") or {}):
        if isinstance(source.get(metric), (int, float)):
            return source[metric]
    logged = [e[metric] for e in record.logs if isinstance(e.get(metric), (int, float))]
    return logged[-1] if logged else None


def ranking(name: str) -> list[dict]:
    """The sweep's runs, best first by its metric (finished runs first, then the others as they stand)."""
    from studio.experiments.records import read_folder

    sweep = read(name)
    metric, keys = sweep.get("metric", "eval_loss"), list(sweep.get("parameters", {}))
    rows = []
    for run in sweep.get("runs", []):
        path = paths.runs_dir() / run
        if not (path / "spec.yaml").is_file():
            rows.append({"run": run, "state": "deleted", metric: None})
            continue
        record = read_folder(path)
        values = {key: _get_path(record.spec, key) for key in keys}
        rows.append({"run": run, "state": record.status.get("state", "?"), **values,
                     "step": record.status.get("step", 0), metric: _round(metric_value(record, metric))})
    sign = -1 if sweep.get("direction") == "max" else 1
    done = sorted((r for r in rows if r["state"] == "completed" and r[metric] is not None),
                  key=lambda r: sign * r[metric])
    rest = [r for r in rows if r not in done]
    return [{"rank": i + 1 if r in done else None, **r} for i, r in enumerate(done + rest)]


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def _get_path(data: dict, key: str):
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data
