"""Faults at the level of the app: it is killed and restarted while a run trains (the run goes on and the
new app reattaches), and two users at once (each keeps their own chat; the shared run list agrees).

The worker-level faults (SIGKILL of the worker then resume, disk full while checkpointing, a crash)
are in test_training.py; docs/reliability.md lists them all.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from app_launcher import start_app, stop_app

from studio.jobs import manager
from studio.jobs.events import read_events, read_status

from .training_helpers import prepare, tiny_spec

GEN = [8, 0, 0.95, 50, 1.0, 0]  # chat: max new tokens, temperature (greedy), top-p, top-k, repetition, seed



def _wait(predicate, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _cleanup(run_ids: list[str]) -> None:
    """Kill any worker these tests left running (a second stop kills at once)."""
    for run_id in run_ids:
        for _ in range(2):
            try:
                manager.stop(run_id)
            except Exception:  # noqa: BLE001 - already stopped, finished or never created
                break


def _status_of(client, run_id: str) -> tuple[str, list]:
    """The Train tab's view of one run: (progress html, the runs table rows)."""
    table, progress, *_ = client.predict(run_id, api_name="/run_status")
    return progress, table["data"]


def test_app_killed_and_restarted_while_training_reattaches(tmp_path, workspace, tiny_model_dir):
    from gradio_client import Client

    data = prepare(tmp_path, str(tiny_model_dir))
    proc, url = start_app(workspace)
    try:
        client = Client(url, verbose=False)
        client.predict("survivor", data, str(tiny_model_dir), 400, 1, api_name="/start_training")
        run = workspace / "runs" / "survivor"
        _wait(lambda: read_status(run).get("step", 0) >= 2, what="training to start")
        pid = read_status(run)["pid"]
        os.kill(proc.pid, signal.SIGKILL)  # the app dies without a word
        proc.wait(10)
        step = read_status(run)["step"]
        _wait(lambda: read_status(run)["step"] > step + 1, what="the worker to go on without the app")
        assert _alive(pid) and read_status(run)["state"] == "running"

        proc, url = start_app(workspace)  # a new app on the same folders
        client = Client(url, verbose=False)
        progress, rows = _status_of(client, "survivor")
        assert "data-state='running'" in progress
        assert [r[0] for r in rows] == ["survivor"] and rows[0][1] == "running"
        seen = read_status(run)["step"]
        _wait(lambda: f"data-step='{seen}'" not in _status_of(client, "survivor")[0], what="the new app to update")
        client.predict("survivor", api_name="/stop_training")  # and it controls the run it reattached to
        _wait(lambda: read_status(run)["state"] == "stopped", what="the graceful stop")
        _wait(lambda: not _alive(pid), timeout=60, what="the worker to exit after its checkpoint")
        steps = [e["step"] for e in read_events(run) if e.get("type") == "log" and "loss" in e]
        assert steps == list(range(1, steps[-1] + 1))  # one continuous curve across the app's death
    finally:
        _cleanup(["survivor"])
        stop_app(proc)


@pytest.fixture
def app_for_two(tmp_path, workspace, tiny_model_dir):
    data = prepare(tmp_path, str(tiny_model_dir))
    proc, url = start_app(workspace)
    yield url, data
    _cleanup(["from-one", "from-two"])
    stop_app(proc)


def test_two_users_at_once_own_chats_one_run_list(app_for_two, tiny_model_dir, workspace):
    from gradio_client import Client

    url, data = app_for_two
    ref = str(tiny_model_dir)
    clients = {"one": Client(url, verbose=False), "two": Client(url, verbose=False)}
    histories: dict[str, list] = {}
    errors: list[BaseException] = []

    def converse(who: str) -> None:
        try:
            history: list = []
            for turn in range(3):
                history, _, _ = clients[who].predict(ref, "fp32", "(base)", f"{who} asks question {turn}", "", *GEN,
                                                     history, api_name="/chat")
            histories[who] = history
            clients[who].predict(f"from-{who}", data, ref, 400, 1, api_name="/start_training")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=converse, args=(who,)) for who in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for who, history in histories.items():
        asked = [m["content"] for m in history if m["role"] == "user"]
        asked = [a if isinstance(a, str) else "".join(p.get("text", "") for p in a) for a in asked]
        assert asked == [f"{who} asks question {t}" for t in range(3)]  # only their own turns, in order
        assert [m["role"] for m in history] == ["user", "assistant"] * 3

    views = [_status_of(c, "from-one")[1] for c in clients.values()]
    names = [sorted(r[0] for r in view) for view in views]
    assert names[0] == names[1] == ["from-one", "from-two"]  # both users see the same runs
    states = sorted(r[1] for r in views[0])
    assert states in (["queued", "running"], ["completed", "running"], ["queued", "queued"]), states
    assert sum(read_status(workspace / "runs" / n).get("state") == "running" for n in names[0]) <= 1  # one trains


# ---------------------------------------------------------------- the queue never stalls


def _dead(pid: int) -> bool:
    from studio.jobs import process

    return not process.alive({"pid": pid})  # gone, or a zombie nobody reaped yet


def _kill_first_with_second_queued(tmp_path, ref: str):
    data = prepare(tmp_path, ref)
    first = manager.start(tiny_spec("first", data, ref, max_steps=400, save_steps=100))
    second = manager.start(tiny_spec("second", data, ref, max_steps=2, save_steps=2))
    assert read_status(second)["state"] == "queued"
    _wait(lambda: read_status(first).get("step", 0) >= 1, what="the first run to train")
    pid = read_status(first)["pid"]
    os.kill(pid, signal.SIGKILL)  # killed -9 (or by the kernel's OOM killer): it says nothing
    _wait(lambda: _dead(pid), timeout=30, what="the kill")
    return first, second


def test_a_run_killed_with_another_queued_keeps_its_place_and_the_queue_advances_on_the_next_poll(
        tmp_path, tiny_model_dir):
    try:
        first, second = _kill_first_with_second_queued(tmp_path, str(tiny_model_dir))
        assert manager.resume("first") == "running"  # no poll in between: the dead run keeps its place
        assert read_status(second)["state"] == "queued"
        assert sum(read_status(p).get("state") == "running" for p in (first, second)) == 1

        pid = read_status(first)["pid"]  # killed -9 again, this time noticed by a poll
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: _dead(pid), timeout=30, what="the kill")
        rows = {r["run"]: r["state"] for r in manager.list_runs()}  # one poll (the Train tab's timer, `runs list`)
        assert rows == {"first": "failed", "second": "running"}
        assert _alive(read_status(second)["pid"])
        message = read_status(first)["message"]
        assert "died" in message and "python -m studio runs resume first" in message
        assert manager.resume("first") == "queued"  # behind the run now training, not beside it
        assert manager.wait("second", timeout=300)["state"] == "completed"
        _wait(lambda: read_status(first).get("state") == "running", timeout=60, what="the resumed run to start")
    finally:
        _cleanup(["first", "second"])


# ---------------------------------------------------------------- Stop after the last step


def test_stop_during_the_final_save_completes_and_resume_never_overshoots(tmp_path, tiny_model_dir, monkeypatch):
    from studio.errors import RunError
    from studio.jobs import worker

    ref = str(tiny_model_dir)
    data = prepare(tmp_path, ref)
    path = manager.create(tiny_spec("last", data, ref, max_steps=3, save_steps=3))
    answers = []
    real_save = worker.save_adapter

    def stop_pressed_during_the_save(*args, **kwargs):
        answers.append(manager.stop("last"))  # the user presses Stop while the adapter is being written
        (path / worker.STOP_FILE).touch()  # and a Stop that landed just before the save began
        return real_save(*args, **kwargs)

    monkeypatch.setattr(worker, "save_adapter", stop_pressed_during_the_save)
    assert worker.train(path) == "completed"
    assert "saving the adapter" in answers[0]
    status = read_status(path)
    assert status["state"] == "completed" and status["step"] == 3
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (path / worker.STOP_FILE).exists()
    with pytest.raises(RunError, match="has completed all its 3 steps"):
        manager.resume("last")

    # A Stop pressed twice kills the worker during the save: stopped, checkpoint-3 saved, no adapter yet.
    monkeypatch.setattr(worker, "save_adapter", real_save)
    import shutil

    shutil.rmtree(path / "adapter")
    from studio.jobs.events import write_status

    write_status(path, state="stopped", message="Killed on a second Stop.")
    manager.resume("last")
    status = manager.wait("last", timeout=300)
    assert status["state"] == "completed" and status["step"] == 3
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    steps = [e["step"] for e in read_events(path) if e.get("type") == "log"]
    assert max(steps) == 3  # no 4th step of 3
    assert "training nothing more" in (path / "worker.log").read_text()
