"""Each change of the CPU fast path turns itself off, with one line in the log, when what it relies on is gone.

A rename in the next transformers or PEFT release must cost that one change, never the run: every test
forces one failure, as such a release would, and checks that the run still trains on the general path.
"""

from __future__ import annotations

import torch
from test_cpu_speed import _packed_row, _peft_model

from studio.jobs import cpu_speed, worker


def _spec(precision: str = "bf16"):
    from studio.config import ModelSpec, RunSpec, replace
    from studio.presets import load_preset

    cpu = load_preset("cpu")
    return RunSpec(name="fallback", dataset="d", model=ModelSpec(quant=cpu.quant), lora=cpu.lora,
                   train=replace(cpu.train, precision=precision))


def _trains(model) -> None:
    """One packed forward + backward: finite loss, LoRA gradients."""
    ids, positions, _ = _packed_row(model.config.vocab_size)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def _off_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[studio] CPU fast path:") and " off" in line]


def test_every_change_applies_when_nothing_is_missing(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(worker, "autocast_bf16", lambda spec: True)
    model = _peft_model(tiny_model_dir)
    done = worker.speed_up_cpu(model, _spec())
    assert done == ["attention per packed sequence", "16-bit dropout masks, one per shared input",
                    "frozen weights in bf16", "LoRA inputs kept in bf16"]
    assert _off_lines(capsys.readouterr().out) == []
    _trains(model)


def test_attention_falls_back_when_transformers_renames_its_sdpa_function(tiny_model_dir, monkeypatch, capsys):
    import transformers.integrations.sdpa_attention as sdpa_attention

    monkeypatch.setattr(worker, "autocast_bf16", lambda spec: True)
    monkeypatch.delattr(sdpa_attention, "sdpa_attention_forward")  # as a rename would (its registered copy stays)
    model = _peft_model(tiny_model_dir)
    done = worker.speed_up_cpu(model, _spec())
    lines = _off_lines(capsys.readouterr().out)
    assert len(lines) == 1 and "attention per packed sequence off" in lines[0] and "ImportError" in lines[0]
    assert done == ["16-bit dropout masks, one per shared input", "frozen weights in bf16",
                    "LoRA inputs kept in bf16"]  # the other changes still apply
    assert model.config._attn_implementation == "sdpa"
    _trains(model)


def test_attention_that_computes_something_else_is_caught_by_its_probe(tiny_model_dir, monkeypatch, capsys):
    # a changed calling convention (here: sequences split in the wrong places) gives other logits
    monkeypatch.setattr(cpu_speed, "_sequence_bounds", lambda cu, pos, length: [0, 1, length])
    model = _peft_model(tiny_model_dir)
    done = worker.speed_up_cpu(model, _spec("fp32"))
    lines = _off_lines(capsys.readouterr().out)
    assert len(lines) == 1 and "packed attention gave other logits than sdpa" in lines[0]
    assert "attention per packed sequence" not in done
    assert model.config._attn_implementation == "sdpa"  # switched back
    _trains(model)


def test_dropout_falls_back_when_peft_renames_its_lora_layer(tiny_model_dir, monkeypatch, capsys):
    import peft.tuners.lora

    monkeypatch.delattr(peft.tuners.lora, "LoraLayer")
    model = _peft_model(tiny_model_dir)
    done = worker.speed_up_cpu(model, _spec("fp32"))
    lines = _off_lines(capsys.readouterr().out)
    assert len(lines) == 1 and "16-bit dropout masks, one per shared input off" in lines[0]
    assert "16-bit dropout masks, one per shared input" not in done
    dropouts = [m for m in model.modules() if isinstance(m, (torch.nn.Dropout, cpu_speed.FastDropout))]
    assert dropouts and all(type(m) is torch.nn.Dropout for m in dropouts)  # every one as PEFT made it
    _trains(model)


def test_bf16_storage_falls_back_and_leaves_every_weight_as_it_was(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(worker, "autocast_bf16", lambda spec: True)
    model = _peft_model(tiny_model_dir)

    def renamed(self):
        raise NotImplementedError("get_input_embeddings is gone")
    monkeypatch.setattr(type(model.get_base_model()), "get_input_embeddings", renamed)
    done = worker.speed_up_cpu(model, _spec())
    lines = _off_lines(capsys.readouterr().out)
    assert len(lines) == 1 and "frozen weights in bf16 off" in lines[0]
    assert "frozen weights in bf16" not in done
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _trains(model)


def test_fast_dropout_that_drops_the_wrong_share_is_not_swapped_in(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(cpu_speed, "DROP_BITS", 8)  # a broken bit trick: the drop rate is far off
    model = _peft_model(tiny_model_dir, dropout=0.3)
    done = worker.speed_up_cpu(model, _spec("fp32"))
    assert "16-bit dropout masks, one per shared input" not in done
    assert len(_off_lines(capsys.readouterr().out)) == 1
    assert not any(isinstance(m, cpu_speed.FastDropout) for m in model.modules())


def test_lora_inputs_keep_their_casts_when_peft_drops_the_switch(tiny_model_dir, monkeypatch, capsys):
    from peft.tuners.tuners_utils import BaseTunerLayer

    monkeypatch.setattr(worker, "autocast_bf16", lambda spec: True)
    # as a PEFT release that dropped the per-layer switch: it always casts to the weights' dtype
    monkeypatch.setattr(BaseTunerLayer, "_cast_input_dtype", lambda self, x, dtype: x.to(dtype))
    model = _peft_model(tiny_model_dir)
    done = worker.speed_up_cpu(model, _spec())
    lines = _off_lines(capsys.readouterr().out)
    assert len(lines) == 1 and "LoRA inputs kept in bf16 off" in lines[0]
    assert "LoRA inputs kept in bf16" not in done and "frozen weights in bf16" in done
    assert not any(getattr(m, "cast_input_dtype_enabled", True) is False for m in model.modules())
