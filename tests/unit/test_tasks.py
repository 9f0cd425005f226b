"""Evaluation and pruning run as tasks in their own process (studio.jobs.tasks), never in the app's: progress
in status.json and the log, the result in result.json, Stop ends a task as stopped, and a failure says why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from studio.errors import RunError
from studio.jobs import tasks

ROOT = Path(__file__).resolve().parents[2]


def _dataset(model_dir: Path, name: str = "task-med") -> str:
    from studio.data.store import prepare

    prepare(ROOT / "assets" / "medical_demo.jsonl", str(model_dir), name, max_len=128, eval_split=0.2)
    return name


def _perplexity(model_dir: Path, dataset: str) -> Path:
    return tasks.start("eval_perplexity", ref=str(model_dir), quant="fp32", dataset_name=dataset, adapters=[],
                       max_rows=8)


def test_a_perplexity_task_runs_in_its_own_process_and_writes_its_result(tiny_model_dir, workspace):
    folder = _perplexity(tiny_model_dir, _dataset(tiny_model_dir))
    final = tasks.wait(folder, timeout=300)
    assert final["state"] == "completed", (final, (folder / tasks.LOG).read_text())
    assert final["pid"] != os.getpid() and final["fraction"] == 1.0
    assert "perplexity: 8/8" in (folder / tasks.LOG).read_text()  # the progress the UI showed, step by step
    assert tasks.result(folder)["results"]["base"]["perplexity"] > 1
    assert tasks.latest() == folder  # what the Evaluate tab shows after an app restart


def test_a_magnitude_prune_task_saves_the_pruned_model(tiny_model_dir, workspace):
    folder = tasks.start("prune", ref=str(tiny_model_dir), dataset="builtin:pydoc", out_name="tiny-mag-50",
                         overwrite=False, method="magnitude", level="0.5", calib_samples=4, calib_len=32,
                         eval_rows=4)
    final = tasks.wait(folder, timeout=300)
    assert final["state"] == "completed", (final, (folder / tasks.LOG).read_text())
    assert final["pid"] != os.getpid()
    assert "magnitude: block 2/2" in (folder / tasks.LOG).read_text()
    report = tasks.result(folder)
    assert report["measured_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert (workspace / "exports" / "tiny-mag-50" / "config.json").is_file()


def test_stop_ends_a_task_as_stopped_and_one_task_runs_at_a_time(tiny_model_dir):
    dataset = _dataset(tiny_model_dir)
    folder = _perplexity(tiny_model_dir, dataset)
    with pytest.raises(RunError, match="Another evaluation or pruning task is running"):
        _perplexity(tiny_model_dir, dataset)
    assert tasks.stop(folder) == "stopping"  # checked before the first batch: nothing is evaluated
    final = tasks.wait(folder, timeout=300)
    assert final["state"] == "stopped" and "cancelled" in final["message"]
    assert tasks.result(folder) is None


def test_a_failing_task_says_what_went_wrong_and_how_to_fix_it(tiny_model_dir):
    folder = _perplexity(tiny_model_dir, "no-such-dataset")
    final = tasks.wait(folder, timeout=300)
    assert final["state"] == "failed"
    assert "no-such-dataset" in tasks.describe(final) and "Fix: Prepare it first" in tasks.describe(final)


def test_a_wrong_model_path_is_refused_before_a_task_process_starts(tmp_path, workspace):
    """A folder that is not a model (an adapter's, say) is said at Start, in the app, with its fix; no task
    folder and no process is made for it (the process would need seconds to import torch and say the same)."""
    from studio.errors import ModelError

    not_a_model = tmp_path / "my-adapter"
    not_a_model.mkdir()
    (not_a_model / "adapter_config.json").write_text("{}")
    for ref, words in ((str(not_a_model), "has no config.json"), (str(tmp_path / "gone"), "does not exist"),
                       (str(tmp_path / "gone.gguf"), "GGUF file")):
        with pytest.raises(ModelError, match=words) as refused:
            tasks.start("eval_perplexity", ref=ref, quant="fp32", dataset_name="d", adapters=[], max_rows=1)
        assert refused.value.fix
    assert not (workspace / "tasks").exists() or not any((workspace / "tasks").iterdir())
