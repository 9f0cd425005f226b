"""Experiments on a tiny model, trained in this process: TensorBoard's own reader sees the run's loss series,
every checkpoint is listed, and a run branched from a middle checkpoint records its parent and step."""

from __future__ import annotations

import dataclasses
import json

import pytest

from studio.experiments import checkpoints, compare
from studio.jobs import manager, worker
from studio.jobs.events import read_events

from .training_helpers import prepare
from .training_helpers import tiny_spec as helper_spec


def tiny_spec(name, data, model, report_to="tensorboard", **train):
    spec = helper_spec(name, data, model, max_steps=4, save_steps=2)
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, eval_steps=2, report_to=report_to, **train))


def _train(spec):
    path = manager.create_foreground(spec)
    assert worker.train(path, foreground=True) == "completed"
    return path


def test_tensorboard_reader_reads_the_runs_loss_series(tmp_path, tiny_model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = prepare(tmp_path, str(tiny_model_dir), rows=16)
    path = _train(tiny_spec("tb", data, str(tiny_model_dir)))
    logged = {e["step"]: e["loss"] for e in read_events(path) if e.get("type") == "log" and "loss" in e}
    evals = {e["step"]: e["eval_loss"] for e in read_events(path) if e.get("type") == "log" and "eval_loss" in e}
    board = EventAccumulator(str(path / "tensorboard"))
    board.Reload()
    train = {s.step: s.value for s in board.Scalars("train/loss")}
    assert sorted(train) == sorted(logged) == [1, 2, 3, 4]
    assert all(train[step] == pytest.approx(logged[step], rel=1e-6) for step in logged)
    assert {s.step: s.value for s in board.Scalars("eval/loss")} == pytest.approx(evals, rel=1e-6)


def test_checkpoints_listed_and_a_branch_records_its_parent_and_step(tmp_path, tiny_model_dir):
    data = prepare(tmp_path, str(tiny_model_dir), rows=16)
    parent = _train(tiny_spec("parent", data, str(tiny_model_dir), report_to="none"))
    assert not (parent / "tensorboard").exists()  # none: no tracker writes anything
    rows = checkpoints.list_checkpoints(parent)
    assert [r["step"] for r in rows] == [2, 4] and all(r["loss"] > 0 and r["time"] for r in rows)
    logged = {e["step"]: e["loss"] for e in read_events(parent) if "loss" in e}
    assert rows[0]["loss"] == pytest.approx(logged[2], abs=1e-4)  # the loss at that checkpoint's step

    spec = checkpoints.branch_spec("parent", 2, "child", {"train.lr": 1e-3, "train.max_steps": 2})
    child = _train(dataclasses.replace(spec, from_adapter=checkpoints.save_as_adapter("parent", 2)))
    card = json.loads((child / "adapter" / "card.json").read_text())
    assert card["parent"] == {"run": "parent", "step": 2}
    assert "Branched from run `parent` at its checkpoint of step 2" in (child / "adapter" / "README.md").read_text()
    assert card["train"]["lr"] == 1e-3 and card["lora"] == json.loads((parent / "adapter" / "card.json").read_text())[
        "lora"]
    row = next(r for r in compare.compare(["parent", "child"]).summary if r["run"] == "child")
    assert row["parent"] == "parent @ step 2"
    # the checkpoint's weights were the start: the child's first loss is near the parent's after step 2, far
    # from the untrained model's
    first = [e["loss"] for e in read_events(child) if "loss" in e][0]
    assert abs(first - logged[3]) < abs(first - logged[1])
