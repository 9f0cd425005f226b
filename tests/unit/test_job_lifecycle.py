"""The run and task life cycle where it used to go wrong: a pid that now names another process (after a
restart of the machine or Space) is never called alive nor killed; a worker's failure is not beaten back
to "running" by its own heartbeat; delete waits for the schedule lock; the app keeps no file open per
launched run; a foreground `studio train` refuses while another run trains; old task folders are pruned."""

from __future__ import annotations

import fcntl
import gc
import json
import subprocess
import sys
import threading
import time
import warnings
from argparse import Namespace
from pathlib import Path

import psutil
import pytest

from studio import paths
from studio.config import ModelSpec, RunSpec, save_yaml
from studio.errors import RunError
from studio.jobs import events, manager, tasks, worker
from studio.jobs.events import read_status, write_status
from studio.util import write_json_atomic

BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@pytest.fixture
def stranger():
    """A live process that merely holds a pid some status.json names (as pids are reused after a restart)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _started(proc) -> float:
    return psutil.Process(proc.pid).create_time()


def _run(name: str, model_ref: str = "/no/such/model", **status) -> Path:
    """A run folder whose spec fails at once if a worker ever trains it (its model does not exist)."""
    path = paths.runs_dir() / name
    path.mkdir(parents=True)
    save_yaml(RunSpec(name=name, dataset="none", model=ModelSpec(ref=model_ref, quant="fp32")), path / "spec.yaml")
    write_status(path, created=time.time(), **status)
    return path


def test_a_run_whose_pid_now_names_another_process_is_failed_and_that_process_lives(stranger):
    hung = _run("hung", state="running", pid=stranger.pid, pid_started=_started(stranger) - 3600, boot_id=BOOT_ID,
                heartbeat=time.time() - 3600)  # its heartbeat stopped long ago: the old check killed the pid
    rebooted = _run("rebooted", state="running", pid=stranger.pid, pid_started=_started(stranger),
                    boot_id="a-boot-before-the-restart", heartbeat=time.time())
    manager.refresh()
    assert read_status(hung)["state"] == "failed" and "died without finishing" in read_status(hung)["message"]
    assert read_status(rebooted)["state"] == "failed"  # a pid of the previous boot is nobody now
    time.sleep(0.2)
    assert stranger.poll() is None  # never killed: it is not the worker


def test_a_second_stop_never_kills_a_process_that_reuses_the_workers_pid(stranger):
    path = _run("reused", state="stopping", pid=stranger.pid, pid_started=_started(stranger) - 60, boot_id=BOOT_ID,
                heartbeat=time.time())
    (path / "stop.request").touch()  # the first Stop
    assert manager.stop("reused") == "killed"
    assert read_status(path)["state"] == "stopped"
    time.sleep(0.2)
    assert stranger.poll() is None


def test_a_task_whose_pid_now_names_another_process_is_failed_and_that_process_lives(stranger):
    folder = paths.tasks_dir() / "old-task"
    folder.mkdir(parents=True)
    write_json_atomic(folder / "task.json", {"kind": "eval_perplexity", "args": {}, "created": time.time()})
    write_status(folder, kind="eval_perplexity", state="running", pid=stranger.pid,
                 pid_started=_started(stranger) - 3600, boot_id=BOOT_ID, heartbeat=time.time() - 3600)
    assert tasks.status(folder)["state"] == "failed"
    time.sleep(0.2)
    assert stranger.poll() is None


def test_a_worker_failure_is_the_final_state_however_long_the_process_lives(monkeypatch):
    for module in (events, worker):  # beat every 0.1 s instead of 5 s
        monkeypatch.setattr(module, "HEARTBEAT_SEC", 0.1, raising=False)
    path = _run("broken", state="running", heartbeat=time.time())
    assert worker.main([str(path)]) == 1  # in this process: it lives on after the failure, as a foreground run does
    time.sleep(1.0)  # ten heartbeats later
    final = read_status(path)
    assert final["state"] == "failed" and "/no/such/model" in final["message"], final


def test_delete_waits_for_the_schedule_lock():
    path = _run("old", state="completed")
    with open(paths.runs_dir() / ".schedule.lock", "w") as lock:  # another process is launching a run now
        fcntl.flock(lock, fcntl.LOCK_EX)
        deleting = threading.Thread(target=manager.delete, args=("old",))
        deleting.start()
        deleting.join(0.5)
        assert path.exists()  # not while the scheduler holds the lock
    deleting.join(10)
    assert not path.exists()


def test_launching_a_run_leaves_no_file_open_in_the_app():
    _run("quick", state="queued")
    with warnings.catch_warnings(record=True) as caught:  # a handle left to the garbage collector says so
        warnings.simplefilter("always", ResourceWarning)
        assert manager.refresh() == "quick"
        gc.collect()
    assert [str(w.message) for w in caught if "worker.log" in str(w.message)] == []
    assert [f.path for f in psutil.Process().open_files() if f.path.endswith("worker.log")] == []
    from studio.jobs import process

    process.kill_group(read_status(paths.runs_dir() / "quick"))  # no need to let it fail on its missing model


def test_foreground_training_refuses_while_another_run_trains(stranger, tmp_path):
    _run("busy", state="running", pid=stranger.pid, pid_started=_started(stranger), boot_id=BOOT_ID,
         heartbeat=time.time())
    config = tmp_path / "run.yaml"
    save_yaml(RunSpec(name="second", dataset="none"), config)
    from studio.commands.train import train

    with pytest.raises(RunError, match="is training now") as raised:
        train(Namespace(config=str(config), background=False))
    assert "--background" in raised.value.fix
    assert not (paths.runs_dir() / "second").exists()


def test_finished_task_folders_older_than_the_setting_are_pruned(monkeypatch):
    def task(name: str, kind: str, age_days: float, state: str = "completed") -> Path:
        folder = paths.tasks_dir() / name
        folder.mkdir(parents=True)
        created = time.time() - age_days * 86400
        (folder / "task.json").write_text(json.dumps({"kind": kind, "args": {}, "created": created}))
        write_status(folder, kind=kind, state=state)
        return folder

    old = task("a-old", "eval_perplexity", 30)
    newest_of_its_kind = task("b-old-prune", "prune", 40)
    recent = task("c-recent", "eval_perplexity", 1)
    monkeypatch.setenv("STUDIO_TASKS_KEEP_DAYS", "14")
    assert tasks.prune_old() == ["a-old"]
    assert not old.exists() and newest_of_its_kind.exists() and recent.exists()
    monkeypatch.setenv("STUDIO_TASKS_KEEP_DAYS", "0")  # keep everything
    task("d-old", "eval_perplexity", 90)
    assert tasks.prune_old() == []
    monkeypatch.setenv("STUDIO_TASKS_KEEP_DAYS", "two weeks")
    with pytest.raises(RunError, match="not a number of days"):
        tasks.prune_old()
