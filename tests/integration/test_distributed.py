"""The same recipe under `accelerate launch`: 2 CPU processes (DDP over gloo), one adapter."""

from __future__ import annotations

from dataclasses import replace

from studio.jobs import manager
from studio.jobs.events import read_events

from .training_helpers import prepare, tiny_spec


def test_two_process_cpu_run_saves_one_adapter(tmp_path, tiny_model_dir):
    data = prepare(tmp_path, str(tiny_model_dir))
    spec = replace(tiny_spec("ddp", data, str(tiny_model_dir), max_steps=6, save_steps=3), num_processes=2)
    assert "accelerate" in " ".join(manager.worker_command(spec, tmp_path))
    path = manager.start(spec)
    status = manager.wait("ddp", timeout=400)
    log = (path / "worker.log").read_text()
    assert status["state"] == "completed", log[-3000:]
    assert "rank 0 of 2 processes" in log and "rank 1 of 2 processes" in log
    assert sorted(p.name for p in (path / "adapter").glob("adapter_*")) == [
        "adapter_config.json", "adapter_model.safetensors"]
    steps = [e["step"] for e in read_events(path) if "loss" in e]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # only rank 0 wrote events, once per step
