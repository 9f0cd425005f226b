"""How the worker turns a spec into trainer settings on this (CPU) machine."""

from __future__ import annotations

from studio.presets import load_preset


def _spec():
    from studio.config import ModelSpec, RunSpec

    cpu = load_preset("cpu")
    return RunSpec(name="args", dataset="d", model=ModelSpec(quant=cpu.quant), lora=cpu.lora, train=cpu.train)


def test_bf16_autocast_only_where_the_cpu_has_native_bf16(tmp_path, monkeypatch):
    import studio.models
    from studio.jobs.worker import training_args

    monkeypatch.setattr(studio.models, "cpu_has_bf16", lambda: True)
    assert training_args(_spec(), tmp_path, True, False).bf16
    monkeypatch.setattr(studio.models, "cpu_has_bf16", lambda: False)
    assert not training_args(_spec(), tmp_path, True, False).bf16  # emulated bf16 would be slower than fp32


def test_cpu_packing_splits_a_step_into_passes_with_the_same_rows_per_step(tmp_path):
    from studio.jobs.worker import pass_plan, training_args

    spec = _spec()
    plan = pass_plan(spec)
    args = training_args(spec, tmp_path, True, False, plan)
    assert args.per_device_train_batch_size == 2  # 2 packed rows of 512: about 1,024 tokens per pass
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == spec.train.micro_batch
    assert args.optim == "adamw_torch" and args.packing and not args.gradient_checkpointing


def test_cpu_trainer_uses_the_plain_causal_lm_loss():
    from trl import SFTTrainer

    from studio.jobs.worker import trainer_class

    cls = trainer_class()
    assert issubclass(cls, SFTTrainer) and cls.compute_loss is not SFTTrainer.compute_loss


def test_cpu_skips_recomputation_only_when_a_pass_fits_in_free_ram(monkeypatch):
    import psutil

    from studio.config import replace
    from studio.jobs.worker import pass_plan

    spec = _spec()
    assert spec.train.gradient_checkpointing and not pass_plan(spec).gradient_checkpointing  # 3.4 GB, GBs free
    huge = replace(spec, train=replace(spec.train, max_seq_len=65536))  # ~190 GB of activations without it
    assert pass_plan(huge).gradient_checkpointing and pass_plan(huge).micro_batch == 1
    assert not pass_plan(replace(spec, train=replace(spec.train, gradient_checkpointing=False))).gradient_checkpointing

    class Full:
        available = 1e9  # 1 GB free: recompute even the small row
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Full())
    assert pass_plan(spec).gradient_checkpointing and pass_plan(spec).micro_batch == 1


def test_rows_whose_answer_lies_beyond_the_run_max_length_are_left_out(capsys):
    """A run's max length below the dataset's: rows with no answer token within it would train nothing."""
    import datasets

    from studio.jobs.worker import trained_within

    rows = datasets.Dataset.from_dict({"input_ids": [[1] * 8, [1] * 8, [1] * 8],
                                       "assistant_masks": [[0, 0, 1, 1, 1, 1, 1, 1],   # answer from token 2
                                                           [0] * 6 + [1, 1],           # answer from token 6
                                                           [0, 0, 0, 0, 1, 1, 1, 1]]})  # answer from token 4
    kept = trained_within(rows, 4, "training")
    assert [sum(m[:4]) for m in kept["assistant_masks"]] == [2]
    assert "2 of 3 training rows left out" in capsys.readouterr().out
    assert len(trained_within(rows, 8, "training")) == 3
