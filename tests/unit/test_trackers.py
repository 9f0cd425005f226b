"""train.report_to: TensorBoard by default, a chosen tracker that is not installed refused before the run
queues (with the pip command), 'none' writes nothing, and each tracker's files stay in the run folder."""

from __future__ import annotations

import importlib.util
import os

import pytest

from studio.config import RunSpec, TrainSpec, from_dict
from studio.errors import ConfigError
from studio.jobs import trackers


def test_tensorboard_is_the_default_and_its_files_go_to_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if k not in ("TENSORBOARD_LOGGING_DIR", trackers.SET_HERE)})
    assert TrainSpec().report_to == "tensorboard"
    assert trackers.report_to("tensorboard", tmp_path / "a") == ["tensorboard"]
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "a" / "tensorboard")
    trackers.report_to("tensorboard", tmp_path / "b")  # the next run in this process gets its own folder
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "b" / "tensorboard")
    assert trackers.report_to("none", tmp_path / "c") == [] and trackers.chosen(" ") == []
    # a worker the queue starts from this process inherits the environment: its run still gets its own folder
    monkeypatch.setattr(os, "environ", dict(os.environ))
    trackers.report_to("tensorboard", tmp_path / "d")
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "d" / "tensorboard")
    # a folder the user chose is kept
    monkeypatch.setattr(os, "environ", {**os.environ, "TENSORBOARD_LOGGING_DIR": "/mine"})
    trackers.report_to("tensorboard", tmp_path / "e")
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == "/mine"


@pytest.mark.parametrize("name", [n for n in ("mlflow", "wandb", "trackio") if importlib.util.find_spec(n) is None])
def test_a_tracker_chosen_but_not_installed_is_refused_with_the_install_command(name):
    data = {"name": "r", "dataset": "d", "train": {"report_to": f"tensorboard,{name}"}}
    with pytest.raises(ConfigError, match=f"chooses {name}") as caught:
        from_dict(RunSpec, data)
    assert f"pip install {name}" in caught.value.fix


def test_an_unknown_tracker_is_refused():
    with pytest.raises(ConfigError, match="'comet'"):
        from_dict(RunSpec, {"name": "r", "dataset": "d", "train": {"report_to": "comet"}})
