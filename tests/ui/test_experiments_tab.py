"""The Experiments tab's functions on synthetic run folders (no app launched): the overlaid chart holds every
picked run, the differences table names the changed settings, a sweep's ranking and its runs for comparing,
checkpoints listed with the middle one offered for a branch, and the report offered as a download."""

from __future__ import annotations

import json

import pytest
import yaml

from studio import paths
from studio.ui.tabs import experiments as tab
from tests.integration.experiment_helpers import GRID, busy_run, stub_dataset, synthetic_run


@pytest.fixture
def two_runs():
    synthetic_run("sft-a", "sft", 2e-4, {"eval_loss": 1.6}, [{"step": s, "loss": 2.0 - s / 10} for s in (1, 2, 3)])
    synthetic_run("dpo-b", "dpo", 5e-5, {"reward_margin": 0.4},
         [{"step": s, "loss": 0.7, "reward_margin": s / 10} for s in (1, 2)])


def test_compare_overlays_every_picked_run_and_lists_the_differences(two_runs):
    family, plot, differ, summary = tab.compare_runs(["sft-a", "dpo-b"], "step", "loss")
    chart = json.loads(plot.plot)
    assert {row["run"] for row in chart["datasets"][next(iter(chart["datasets"]))]} == {"sft-a", "dpo-b"}
    assert family.choices == [("loss", "loss"), ("reward_margin", "reward_margin")]
    assert "train.method" in set(differ["setting"]) and list(summary["run"]) == ["sft-a", "dpo-b"]


def test_sweep_ranking_and_checkpoints_and_report(two_runs):
    from studio.experiments import sweeps

    stub_dataset()
    busy_run()
    sweeps.queue(GRID)
    ranking, note = tab.sweep_ranking("demo")
    assert len(ranking) == 4 and "0 of 4 runs completed" in note and "eval_loss" in note
    assert tab.sweep_runs("demo").value == sweeps.read("demo")["runs"]
    table, steps = tab.run_checkpoints("sft-a")
    assert list(table["step"]) == ["2"] and steps.value == 2
    report = tab.run_report("sft-a").value["path"]
    assert report.endswith("sft-a-report.html") and "Run sft-a" in open(report).read()
    assert not (paths.runs_dir() / "sft-a" / "report.html").exists()  # the run folder is left as it was
    assert yaml.safe_load((paths.runs_dir() / "sft-a" / "spec.yaml").read_text())["name"] == "sft-a"
