"""The shipped accelerate configs (examples/accelerate/) launch the real recipe, or fail before queueing.

On this CPU machine accelerate runs the FSDP config as DDP over gloo (FSDP shards only across GPUs); the
recipe must still launch, train two steps and save one plain adapter, and say in the log what ran.
DeepSpeed ZeRO-3 runs on CPU where the deepspeed package is installed (docs/benchmarks.md has such a run);
without it the run is refused at once with the install command.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import yaml

from studio.errors import RunError
from studio.jobs import launch_configs, manager
from studio.jobs.events import read_events

from .training_helpers import prepare, tiny_spec


def test_every_shipped_config_is_a_launchable_accelerate_file():
    shipped = launch_configs.shipped()
    assert set(shipped) == {"fsdp.yaml", "deepspeed-zero3.yaml"}
    for path in shipped.values():
        data = yaml.safe_load(open(path, encoding="utf-8"))
        assert data["distributed_type"] in ("FSDP", "DEEPSPEED") and data["num_processes"] >= 2
        assert data["mixed_precision"] == "no"  # the run's train.precision decides, not the config


def _spec(name, data, model_dir, config, **train):
    spec = tiny_spec(name, data, str(model_dir), max_steps=2, save_steps=100)
    return replace(spec, accelerate_config=config, train=replace(spec.train, **train))


def _adapter_ok(path) -> None:
    from safetensors.torch import load_file

    weights = load_file(path / "adapter" / "adapter_model.safetensors")
    assert weights and all(w.numel() > 0 for w in weights.values())  # gathered, not empty shards
    assert any("lora_B" in k and w.abs().sum() > 0 for k, w in weights.items())  # trained
    assert not (path / "adapter" / "training_args.bin").exists()  # adapters hold safetensors only


def test_fsdp_config_launches_and_trains_two_steps_on_cpu(tmp_path, tiny_model_dir):
    data = prepare(tmp_path, str(tiny_model_dir))
    spec = _spec("fsdp-cpu", data, tiny_model_dir, "examples/accelerate/fsdp.yaml",
                 packing=True, precision="bf16")  # the CPU fast path on, under the launcher
    path = manager.start(spec)
    status = manager.wait("fsdp-cpu", timeout=400)
    log = (path / "worker.log").read_text()
    assert status["state"] == "completed", log[-3000:]
    assert "rank 0 of 2 processes" in log and "rank 1 of 2 processes" in log
    assert "accelerate config fsdp.yaml: DDP over gloo on the CPU (FSDP shards only across GPUs" in log
    assert [e["step"] for e in read_events(path) if "loss" in e] == [1, 2]
    _adapter_ok(path)


def test_deepspeed_config_trains_where_installed_else_is_refused_at_once(tmp_path, tiny_model_dir):
    data = prepare(tmp_path, str(tiny_model_dir))
    spec = _spec("zero3-cpu", data, tiny_model_dir, "examples/accelerate/deepspeed-zero3.yaml")
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(RunError, match="needs DeepSpeed, which is not installed") as refused:
            manager.start(spec)
        assert "pip install deepspeed" in refused.value.fix
        assert "zero3-cpu" not in [r["run"] for r in manager.list_runs()]  # nothing queued
        return
    path = manager.start(spec)
    status = manager.wait("zero3-cpu", timeout=900)  # the first run builds DeepSpeed's CPU comm op
    log = (path / "worker.log").read_text()
    assert status["state"] == "completed", log[-3000:]
    assert "accelerate config deepspeed-zero3.yaml: DeepSpeed" in log
    _adapter_ok(path)


def test_sharded_configs_refuse_a_quantized_base_before_queueing(tmp_path, tiny_model_dir):
    data = prepare(tmp_path, str(tiny_model_dir))
    spec = _spec("fsdp-4bit", data, tiny_model_dir, "examples/accelerate/fsdp.yaml")
    spec = replace(spec, model=replace(spec.model, quant="4bit"))
    with pytest.raises(RunError, match="FSDP cannot shard a 4bit base"):
        manager.start(spec)
    with pytest.raises(RunError, match="does not exist"):
        manager.start(replace(spec, accelerate_config="examples/accelerate/nope.yaml"))
