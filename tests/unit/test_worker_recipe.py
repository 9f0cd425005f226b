"""Recipe choices the worker makes once and keeps: the pass plan, the stop check's device, Liger kernels."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from studio.config import replace
from studio.jobs import worker
from studio.presets import load_preset

NCCL_LIKE = "studio_nccl_like"  # a fake process group serving one device type only, as NCCL serves CUDA only


def _spec(**train):
    from studio.config import ModelSpec, RunSpec

    cpu = load_preset("cpu")
    return RunSpec(name="recipe", dataset="d", model=ModelSpec(quant=cpu.quant), lora=cpu.lora,
                   train=replace(cpu.train, **train))


def test_the_pass_plan_of_the_first_launch_is_kept_when_free_ram_changes(tmp_path):
    spec = _spec()
    first = worker.recorded_pass_plan(spec, tmp_path, free_gb=64.0)  # plenty of RAM: no recomputation
    assert not first.gradient_checkpointing and first.micro_batch == 2
    assert worker.pass_plan(spec, free_gb=0.5).gradient_checkpointing  # what a fresh choice would be now
    again = worker.recorded_pass_plan(spec, tmp_path, free_gb=0.5)  # the resume, with little RAM free
    assert again == first
    saved = json.loads((tmp_path / worker.PLAN_FILE).read_text())
    assert saved["micro_batch"] == 2 and saved["gradient_checkpointing"] is False
    assert not list(tmp_path.glob(f".{worker.PLAN_FILE}*"))  # no temporary file left behind


def _nccl_like_group():
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore, _create_fake_pg

    if NCCL_LIKE not in dist.Backend.backend_list:
        dist.Backend.register_backend(NCCL_LIKE, _create_fake_pg, extended_api=True, devices=["meta"])
    dist.init_process_group(backend=NCCL_LIKE, store=FakeStore(), rank=0, world_size=2)


def test_the_stop_flag_is_all_reduced_on_the_runs_device():
    import torch.distributed as dist

    _nccl_like_group()
    try:
        with pytest.raises(RuntimeError, match="device type cpu"):  # what NCCL does with a CPU tensor
            dist.all_reduce(__import__("torch").tensor([0.0]), op=dist.ReduceOp.MAX)
        flag = worker._max_over_ranks(True, "meta")  # the run's device: the collective accepts it
        assert flag.device.type == "meta"
    finally:
        dist.destroy_process_group()


def test_the_callback_hands_the_trainers_device_to_the_stop_check(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(worker, "_stop_requested", lambda run_dir, device="cpu": seen.append(device) or False)
    callback = worker.make_callback(tmp_path, worker.Status(tmp_path, enabled=False), is_main=True)
    state = SimpleNamespace(global_step=0, max_steps=4, num_input_tokens_seen=0)
    callback.on_train_begin(SimpleNamespace(device="cuda:1"), state, SimpleNamespace())
    state.global_step = 1
    callback.on_step_end(SimpleNamespace(device="cuda:1"), state, SimpleNamespace())
    assert seen == ["cuda:1"]


def test_liger_is_a_recipe_choice_off_unless_asked(tmp_path, capsys):
    spec = _spec()
    assert not spec.train.liger_kernel  # the default recipe, recorded as such in spec.yaml
    assert not worker.training_args(spec, tmp_path, False, False).use_liger_kernel
    asked = _spec(liger_kernel=True)
    assert not worker.training_args(asked, tmp_path, False, False).use_liger_kernel  # no CUDA here
    assert "Liger kernels off (no CUDA device)" in capsys.readouterr().out


def test_warmup_ratio_reaches_transformers_as_a_share_of_the_steps(tmp_path):
    args = worker.training_args(_spec(warmup_ratio=0.1), tmp_path, False, False)
    assert args.get_warmup_steps(200) == 20  # transformers >= 5 reads a float below 1 as a ratio


def test_requirements_pin_the_recipes_floor_and_constraints_hold_the_versions_ci_ran():
    from importlib.metadata import version
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    requirements = (root / "requirements.txt").read_text()
    assert "transformers>=5," in requirements and "torch>=2.5" in requirements
    pins = dict(line.split("==", 1) for line in (root / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for package in ("transformers", "peft", "trl", "accelerate", "datasets"):
        assert pins[package] == version(package), f"constraints.txt: {package} is not the version tests run"
    assert "torch" not in pins  # the Makefile picks the CPU or CUDA build
    assert "-c constraints.txt" in (root / "Makefile").read_text()
