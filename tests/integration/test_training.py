"""The background worker on a tiny model: it trains, survives kills and stops, queues, and reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from studio.errors import RunError
from studio.jobs import manager
from studio.jobs.events import read_events, read_status

from .training_helpers import prepare, tiny_spec


def _wait_for(predicate, timeout=180, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        manager.refresh()
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _log_steps(path):
    return [e["step"] for e in read_events(path) if e.get("type") == "log" and "loss" in e]


def test_run_completes_and_saves_a_vanilla_peft_adapter(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = prepare(tmp_path, str(tiny_model_dir))
    path = manager.start(tiny_spec("first", data, str(tiny_model_dir)))
    status = manager.wait("first", timeout=300)
    assert status["state"] == "completed", (status, (path / "worker.log").read_text()[-2000:])
    events = [e for e in read_events(path) if e.get("type") == "log"]
    losses = [e["loss"] for e in events if "loss" in e]
    assert losses[-1] < losses[0] - 0.5  # the loss really falls
    assert any("eval_loss" in e for e in events)
    assert all(e["tokens_per_sec"] > 0 and e["memory_mb"] > 0 for e in events if "loss" in e)
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    card = json.loads((path / "adapter" / "card.json").read_text())
    assert card["dataset"] == data and card["metrics"]["eval_loss"] > 0
    assert card["system_prompt"] == {"mode": "keep", "text": ""}  # the dataset's choice, kept with the adapter
    assert "base_model" in (path / "adapter" / "README.md").read_text()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), path / "adapter")
    assert model.peft_config["default"].r == 8


def test_sigkill_then_resume_continues_from_checkpoint(tmp_path, tiny_model_dir):
    data = prepare(tmp_path, str(tiny_model_dir))
    path = manager.start(tiny_spec("killed", data, str(tiny_model_dir), max_steps=30, save_steps=5))
    _wait_for(lambda: (path / "checkpoints" / "checkpoint-10").is_dir() and read_status(path).get("step", 0) >= 12,
              what="step 12")
    os.kill(read_status(path)["pid"], signal.SIGKILL)
    _wait_for(lambda: read_status(path).get("state") == "failed", what="the dead worker to be noticed")
    status = read_status(path)
    assert "died" in status["message"] and "Resume" in status["message"]
    manager.resume("killed")
    status = manager.wait("killed", timeout=300)
    assert status["state"] == "completed"
    resumed = [e for e in read_events(path) if e.get("type") == "resume"]
    assert resumed and resumed[0]["step"] >= 10  # it continued from a checkpoint, not from zero
    steps = _log_steps(path)
    assert steps == sorted(steps) and steps[-1] == 30  # one continuous curve
    assert set(range(1, 31)) <= set(steps)
    assert (path / "events.discarded.jsonl").exists() or resumed[0]["step"] >= 12


def test_graceful_stop_queue_and_resume(tmp_path, tiny_model_dir, workspace):
    data = prepare(tmp_path, str(tiny_model_dir))
    a = manager.start(tiny_spec("long", data, str(tiny_model_dir), max_steps=400, save_steps=50))
    b = manager.start(tiny_spec("next", data, str(tiny_model_dir), max_steps=6))
    assert read_status(b)["state"] == "queued"  # one job at a time: the second waits
    _wait_for(lambda: read_status(a).get("step", 0) >= 3, what="run a to train")
    # another process (the CLI beside the app) reattaches to the runs by reading their folders
    env = dict(os.environ, STUDIO_WORKSPACE=str(workspace))
    out = subprocess.run([sys.executable, "-m", "studio", "runs", "list"], env=env, capture_output=True, text=True)
    listed = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines() if line.strip()}
    assert listed == {"long": "running", "next": "queued"}, out.stdout + out.stderr
    assert manager.stop("long") == "stopping"
    status = manager.wait("long", timeout=120)
    assert status["state"] == "stopped"
    stopped_at = status["step"]
    assert (a / "checkpoints" / f"checkpoint-{stopped_at}").is_dir()  # saved on stop
    assert manager.wait("next", timeout=300)["state"] == "completed"  # the queue moved on
    manager.resume("long")
    _wait_for(lambda: read_status(a).get("step", 0) > stopped_at + 2, what="the resumed run to go on")
    manager.stop("long")
    manager.stop("long")  # a second stop kills at once
    assert read_status(a)["state"] == "stopped"


def test_bad_inputs(tmp_path, tiny_model_dir):
    with pytest.raises(RunError, match="does not exist"):
        manager.create(tiny_spec("nodata", "missing-dataset", str(tiny_model_dir)))
    data = prepare(tmp_path, str(tiny_model_dir))
    manager.create(tiny_spec("dup", data, str(tiny_model_dir)))
    with pytest.raises(RunError, match="already exists"):
        manager.create(tiny_spec("dup", data, str(tiny_model_dir)))
    from studio.errors import ConfigError

    with pytest.raises(ConfigError, match="not allowed"):
        manager.create(tiny_spec("../escape", data, str(tiny_model_dir)))


def _run_in_this_process(path):
    """The worker's recipe and failure handling as `python -m studio.jobs.worker` runs them, in this process
    (the process boundary itself is what the other tests here cover)."""
    from studio.jobs import worker
    from studio.jobs.events import Status

    return worker.run_to_the_end(path, Status(path))


def test_dataset_for_another_tokenizer_fails_clearly(tmp_path, tiny_model_dir):
    import shutil

    other = tmp_path / "other-tokenizer-model"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    (other / "chat_template.jinja").unlink(missing_ok=True)
    data = prepare(tmp_path, str(other), name="othertok")
    path = manager.create(tiny_spec("mismatch", data, str(tiny_model_dir)))
    assert _run_in_this_process(path) == 1
    status = read_status(path)
    assert status["state"] == "failed" and "another tokenizer" in status["message"]
    assert "Prepare the data again" in status["fix"]
    assert path.is_dir()


def test_worker_crash_is_reported(tmp_path, tiny_model_dir):
    from dataclasses import replace

    from studio.config import LoraSpec

    data = prepare(tmp_path, str(tiny_model_dir))
    spec = replace(tiny_spec("crash", data, str(tiny_model_dir)), lora=LoraSpec(target_modules="no_such_module"))
    path = manager.create(spec)
    assert _run_in_this_process(path) == 1
    status = read_status(path)
    assert status["state"] == "failed" and "crashed" in status["message"]


def test_disk_full_while_checkpointing(tmp_path, tiny_model_dir):
    """RLIMIT_FSIZE makes writes past a size fail like a full disk (EFBIG): the checkpoint save
    fails, and the run is marked failed with a message that says so and how to go on."""
    import resource

    data = prepare(tmp_path, str(tiny_model_dir))
    path = manager.create(tiny_spec("diskfull", data, str(tiny_model_dir), max_steps=12, save_steps=4))
    limit = 2**20  # 1 MiB: the data, events and status fit, a checkpoint (its tokenizer.json is 2 MiB) does not

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    subprocess.run([sys.executable, "-m", "studio.jobs.worker", str(path)], preexec_fn=small_disk,
                   capture_output=True, timeout=300)
    status = read_status(path)
    assert status["state"] == "failed", status
    assert "disk is full" in status["message"] and "Resume" in status["fix"]
    assert [e["step"] for e in read_events(path) if "loss" in e][:4] == [1, 2, 3, 4]  # the curve so far is kept


def test_out_of_memory_names_a_preset_that_fits(tiny_model_dir):
    from studio.jobs.worker import explain_failure

    spec = tiny_spec("oom", "data", str(tiny_model_dir))
    message, fix = explain_failure(MemoryError(), spec)
    assert message == "Out of memory."
    assert "preset fits" in fix and "Presets tab" in fix
