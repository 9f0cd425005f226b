"""Branching from a checkpoint (no model loaded): the checkpoint's LoRA files become the adapter <run>-step<N>
(its optimizer pickles left behind), the new run is queued with the parent and step in its spec, a second
branch reuses that adapter, and a LoRA change or a missing step is refused before anything is written."""

from __future__ import annotations

import pytest

from studio import adapters, paths
from studio.config import RunSpec, load_yaml
from studio.errors import StudioError
from studio.experiments import checkpoints
from studio.jobs.events import read_status
from studio.util import write_json_atomic
from tests.integration.experiment_helpers import busy_run, stub_dataset, synthetic_run


@pytest.fixture
def parent():
    stub_dataset("sft-data")
    busy_run()  # the queue holds the branch: nothing trains in this test
    synthetic_run("parent", "sft", 2e-4, {"eval_loss": 1.6}, [{"step": s, "loss": 2.0 - s / 10} for s in (1, 2)])
    checkpoint = paths.runs_dir() / "parent" / "checkpoints" / "checkpoint-2"
    write_json_atomic(checkpoint / adapters.CONFIG_FILE, {"r": 16, "lora_alpha": 32, "peft_type": "LORA"})
    (checkpoint / adapters.WEIGHTS_FILE).write_bytes(b"weights")
    (checkpoint / "optimizer.pt").write_bytes(b"a pickle")


def test_branch_queues_a_run_that_records_its_parent_and_starts_from_the_checkpoint(parent):
    path = checkpoints.branch("parent", 2, "child", {"train.lr": 5e-5})
    spec = load_yaml(RunSpec, path / "spec.yaml")
    assert (spec.parent_run, spec.parent_step, spec.train.lr) == ("parent", 2, 5e-5)
    assert spec.from_adapter == "parent-step2" and read_status(path)["state"] == "queued"
    saved = adapters.get_adapter("parent-step2")
    assert saved.card["checkpoint"] == {"run": "parent", "step": 2}
    assert saved.card["metrics"] == {"loss": 1.5}  # the loss at its step
    assert not (saved.path / "optimizer.pt").exists()
    again = checkpoints.branch("parent", 2, "child-2", {"train.max_steps": 9})  # the same adapter, reused
    assert load_yaml(RunSpec, again / "spec.yaml").from_adapter == "parent-step2"


@pytest.mark.parametrize("step, changes, said", [(2, {"lora.r": 8}, "LoRA shape"), (3, {}, "no complete checkpoint"),
                                                 (2, {"train.lr": 0}, "train.lr")])
def test_a_bad_branch_is_refused_before_anything_is_written(parent, step, changes, said):
    with pytest.raises(StudioError, match=said) as caught:
        checkpoints.branch("parent", step, "child", changes)
    assert caught.value.fix and not (paths.runs_dir() / "child").exists()
    assert not (paths.adapters_dir() / "parent-step2").exists()
