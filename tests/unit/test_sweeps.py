"""Sweeps: grid and seeded random expansion over dotted RunSpec settings, refusals before anything queues,
the queue holding the sweep's runs in order, stopping, ranking and the CLI (no model is loaded here)."""

from __future__ import annotations

import pytest
import yaml

from studio import paths
from studio.cli import main
from studio.errors import ConfigError
from studio.experiments import sweeps
from studio.jobs.events import read_status, write_status
from tests.integration.experiment_helpers import BASE, GRID, busy_run, stub_dataset


def test_grid_expands_every_combination_named_after_its_values():
    sweep, specs = sweeps.expand(GRID)
    assert [s.name for s in specs] == ["demo-lr0.0001-r8", "demo-lr0.0001-r16", "demo-lr0.0002-r8",
                                       "demo-lr0.0002-r16"]
    assert [(s.train.lr, s.lora.r) for s in specs] == [(1e-4, 8), (1e-4, 16), (2e-4, 8), (2e-4, 16)]
    assert all(s.train.max_steps == 3 and s.dataset == "chat" for s in specs)  # the rest of the YAML is kept
    assert sweep.direction == "min"


def test_random_draws_count_points_and_the_same_seed_draws_the_same():
    data = {**BASE, "sweep": {"method": "random", "count": 5, "seed": 7, "metric": "eval_reward_accuracy",
                              "parameters": {"train.lr": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
                                             "lora.r": [4, 8, 16, 32], "train.scheduler": ["cosine", "linear"]}}}
    sweep, first = sweeps.expand(data)
    _, again = sweeps.expand(data)
    _, other = sweeps.expand({**data, "sweep": {**data["sweep"], "seed": 8}})
    assert len(first) == 5 and [s.name for s in first] == [s.name for s in again]
    assert [s.name for s in first] != [s.name for s in other]
    assert all(1e-5 <= s.train.lr <= 1e-3 and s.lora.r in (4, 8, 16, 32) for s in first)
    assert sweep.direction == "max"  # an accuracy ranks highest first


@pytest.mark.parametrize("parameters, said", [
    ({"train.learning_rate": [1e-4]}, "train.learning_rate"),  # no such setting
    ({"lora": [8]}, "not a single setting"),  # a whole section
    ({"name": ["a", "b"]}, "not a setting a sweep can vary"),
    ({"lora.r": [8, 0]}, "lora.r"),  # a value the setting refuses
    ({"train.scheduler": ["cosine", "sideways"]}, "sideways"),
    ({"train.lr": []}, "no list of values"),
])
def test_invalid_sweeps_are_refused_before_anything_queues(parameters, said):
    stub_dataset()
    with pytest.raises(ConfigError, match=said) as caught:
        sweeps.queue({**BASE, "sweep": {"method": "grid", "parameters": parameters}})
    assert caught.value.fix
    assert list(paths.runs_dir().iterdir()) == [] and sweeps.list_sweeps() == []


def test_a_missing_dataset_or_a_taken_name_queues_nothing():
    with pytest.raises(ConfigError, match="dataset 'chat' does not exist"):
        sweeps.queue(GRID)
    stub_dataset()
    (paths.runs_dir() / "demo-lr0.0002-r16").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        sweeps.queue(GRID)
    assert [p.name for p in paths.runs_dir().iterdir()] == ["demo-lr0.0002-r16"] and sweeps.list_sweeps() == []


def test_queued_sweep_survives_on_disk_ranks_and_stops(capsys):
    stub_dataset()
    busy_run()
    config = paths.workspace() / "sweep.yaml"
    config.write_text(yaml.safe_dump(GRID, sort_keys=False))  # the order of the parameters names the runs
    code = main(["train", "--config", str(config), "--background"])
    out, err = capsys.readouterr()
    assert code == 0, err
    names = ["demo-lr0.0001-r8", "demo-lr0.0001-r16", "demo-lr0.0002-r8", "demo-lr0.0002-r16"]
    assert all(name in out for name in names), out
    assert [read_status(paths.runs_dir() / n)["state"] for n in names] == ["queued"] * 4
    assert sweeps.list_sweeps() == ["demo"] and sweeps.read("demo")["runs"] == names  # on disk: a restart keeps it
    # two finished: ranked by eval loss, lowest first; the queued ones after them
    for name, loss in (("demo-lr0.0001-r8", 2.5), ("demo-lr0.0002-r16", 1.5)):
        write_status(paths.runs_dir() / name, state="completed", metrics={"eval_loss": loss})
    ranked = sweeps.ranking("demo")
    assert [(r["rank"], r["run"], r["eval_loss"]) for r in ranked[:2]] == [(1, "demo-lr0.0002-r16", 1.5),
                                                                          (2, "demo-lr0.0001-r8", 2.5)]
    assert ranked[0]["train.lr"] == 0.0002 and ranked[0]["lora.r"] == 16 and ranked[2]["rank"] is None
    assert main(["sweep", "stop", "demo"]) == 0
    assert [read_status(paths.runs_dir() / n)["state"] for n in names[1:3]] == ["stopped"] * 2
    assert read_status(paths.runs_dir() / "busy")["state"] == "running"  # not the sweep's: left alone
    assert sweeps.read("demo")["stopped"] is True
    assert main(["sweep", "show", "demo"]) == 0 and "demo-lr0.0002-r16" in capsys.readouterr().out
