"""Real training on the tiny model where a run used to end wrong: a Stop the ranks agreed on ends every
rank as stopped (not only the rank that still sees the stop file), and a resume refuses a dataset that
was prepared again since the run started."""

from __future__ import annotations

import pytest

from studio.errors import DataError
from studio.jobs import manager, worker
from studio.jobs.events import read_status, write_status

from .training_helpers import prepare, tiny_spec, write_chat_file


def test_a_stop_the_ranks_agreed_on_ends_the_run_stopped_on_every_rank(tmp_path, tiny_model_dir, monkeypatch):
    votes = []

    def another_rank_saw_the_stop_file(run_dir, device="cpu"):
        # Under DDP the all-reduce answers "stop" on every rank, while this rank's file system may no
        # longer show the file (rank 0 removes it once it stopped): the decision must be the agreed one.
        votes.append(device)
        return len(votes) >= 2

    monkeypatch.setattr(worker, "_stop_requested", another_rank_saw_the_stop_file)
    data = prepare(tmp_path, str(tiny_model_dir))
    path = manager.create(tiny_spec("agreed", data, str(tiny_model_dir), max_steps=12, save_steps=4))
    assert worker.train(path) == "stopped"
    status = read_status(path)
    assert status["state"] == "stopped" and status["step"] == 2, status
    assert not (path / "adapter").exists()  # not saved as if all 12 steps were done
    assert (path / "checkpoints" / "checkpoint-2").is_dir()  # Resume continues from the stop


def test_a_resume_refuses_a_dataset_prepared_again_with_other_rows(tmp_path, tiny_model_dir):
    from studio.data.store import prepare as store_prepare
    from studio.data.store import prepared_sha256

    ref = str(tiny_model_dir)
    data = prepare(tmp_path, ref, rows=48)
    first = prepared_sha256(data)
    store_prepare(write_chat_file(tmp_path / "same.jsonl", 48), ref, data, max_len=64, eval_split=0.125,
                  overwrite=True)
    assert prepared_sha256(data) == first  # the same file and settings give the same rows, and the same hash
    path = manager.create(tiny_spec("hashed", data, ref))
    assert manager.run_dir("hashed") == path
    write_status(path, state="stopped")
    store_prepare(write_chat_file(tmp_path / "other.jsonl", 40), ref, data, max_len=64, eval_split=0.125,
                  overwrite=True)
    try:
        with pytest.raises(DataError, match="prepared again since the run started") as raised:
            manager.resume("hashed")
    finally:
        if read_status(path).get("state") in ("running", "queued"):  # the old code launched it: end that worker
            manager.stop("hashed")
            manager.stop("hashed")
    assert "Start a new run" in raised.value.fix
    assert read_status(path)["state"] == "stopped"  # not queued on the changed rows
