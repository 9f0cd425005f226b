"""The stacked LoRA of a mixed-adapter batch (studio/serving/lora_batch.py) against PEFT's own routes: the same
logits as PEFT's `adapter_names` for every row (adapters of different ranks and targets, the base), PEFT's route
kept for what it cannot stack (DoRA), and the engine's other routes (one adapter merged, the base alone)
exact after a stacked step."""

from __future__ import annotations

import pytest
import torch

from studio.inference import BASE_PEFT_NAME, Engine


def _adapter(model_dir, out, seed: int, **lora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(lora_alpha=8, init_lora_weights=False, **lora)
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("stacked")
    return {
        "wide": _adapter(tiny_model_dir, root / "wide", 1, r=16, target_modules="all-linear"),
        "narrow": _adapter(tiny_model_dir, root / "narrow", 2, r=4, target_modules=["q_proj", "v_proj"]),
        "dora": _adapter(tiny_model_dir, root / "dora", 3, r=8, target_modules=["q_proj", "v_proj"], use_dora=True),
    }


def _engine(model_dir, adapters, names):
    engine = Engine(str(model_dir), "fp32")
    for name in names:
        engine.load_adapter(name, adapters[name])
    return engine


def _forward(engine, ids, kwargs):
    with torch.inference_mode():
        return engine.model(input_ids=ids, **kwargs).logits


def test_stacked_lora_gives_peft_logits_for_every_row(tiny_model_dir, adapters):
    engine = _engine(tiny_model_dir, adapters, ["wide", "narrow"])
    rows = ["wide", None, "narrow", "wide", None, "narrow"]
    ids = torch.randint(0, 1000, (len(rows), 7), generator=torch.Generator().manual_seed(0))
    with engine.lock:
        stacked = _forward(engine, ids, engine.prepare_step(rows, rows))
        assert engine.stacked_steps == 1 and engine._lora_off  # the stacked route, PEFT's layers off
        engine._peft_route()
        names = [engine._peft_names[a] if a else BASE_PEFT_NAME for a in rows]
        reference = _forward(engine, ids, {"adapter_names": names})
    torch.testing.assert_close(stacked, reference, rtol=1e-5, atol=1e-5)
    base_rows = [i for i, a in enumerate(rows) if a is None]  # a base row gets exactly the base: nothing added
    assert torch.equal(stacked[base_rows], reference[base_rows])
    assert not torch.allclose(stacked[0], stacked[1])  # the adapters really change the rows they serve


def test_after_a_stacked_step_one_adapter_and_the_base_are_exact(tiny_model_dir, adapters):
    engine = _engine(tiny_model_dir, adapters, ["wide", "narrow"])
    ids = torch.randint(0, 1000, (2, 5), generator=torch.Generator().manual_seed(1))
    with engine.use("wide") as model, torch.inference_mode():
        wide_before = model(input_ids=ids).logits
    with engine.use(None) as model, torch.inference_mode():
        base_before = model(input_ids=ids).logits
    with engine.lock:
        _forward(engine, ids, engine.prepare_step(["wide", "narrow"], ["wide", "narrow"]))
        assert engine.stacked_steps == 1
    with engine.use("wide") as model, torch.inference_mode():  # merged again, hooks idle, PEFT's layers on
        assert torch.equal(model(input_ids=ids).logits, wide_before)
    with engine.lock:
        _forward(engine, ids, engine.prepare_step(["wide", None], ["wide", None]))
    with engine.use(None) as model, torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, base_before)
    with engine.lock:  # every row on the base while adapters are attached: the base weights alone
        assert torch.equal(_forward(engine, ids, engine.prepare_step([None, None], [None, None])), base_before)


def test_dora_is_left_to_peft_and_the_engine_then_takes_pefts_route(tiny_model_dir, adapters, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio.serving import lora_batch

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapters["wide"]), adapter_name="wide")
    model.load_adapter(str(adapters["dora"]), adapter_name="dora")
    assert lora_batch.BatchedLora.build(model, ("wide",)) is not None
    assert lora_batch.BatchedLora.build(model, ("dora", "wide")) is None  # DoRA: not a plain LoRA
    engine = _engine(tiny_model_dir, adapters, ["wide", "narrow"])  # (the studio refuses DoRA files itself)
    monkeypatch.setattr(lora_batch.BatchedLora, "build", classmethod(lambda cls, model, names: None))
    with engine.lock:
        kwargs = engine.prepare_step(["wide", "narrow"], ["narrow", None])
    assert kwargs["adapter_names"] == [engine._peft_names["narrow"], BASE_PEFT_NAME]
    assert engine.stacked_steps == 0 and not engine._lora_off


def test_a_detach_and_a_new_adapter_rebuild_the_stacks(tiny_model_dir, adapters):
    engine = _engine(tiny_model_dir, adapters, ["wide", "narrow"])
    with engine.lock:
        engine.prepare_step(["wide", "narrow"], ["wide", "narrow"])
    first = engine._batched
    engine.unload_adapter("narrow")
    assert engine._batched is None and not first._handles  # its hooks removed with it
    engine.load_adapter("again", adapters["narrow"])
    with engine.lock:
        assert engine.prepare_step(["wide", "again"], ["wide", "again"]) == {}
    assert engine.stacked_steps == 2
    assert engine._batched.adapters == tuple(sorted([engine._peft_names["wide"], engine._peft_names["again"]]))


def test_one_adapter_on_int8_weights_takes_the_stacked_route(tiny_model_dir, adapters):
    """A q8 base never merges an adapter, so every row on one adapter is served stacked too (the same logits as
    PEFT's active, unmerged adapter)."""
    engine = Engine(str(tiny_model_dir), "q8")
    engine.load_adapter("wide", adapters["wide"])
    ids = torch.randint(0, 1000, (3, 6), generator=torch.Generator().manual_seed(2))
    with engine.lock:
        stacked = _forward(engine, ids, engine.prepare_step(["wide"] * 3, ["wide"] * 3))
        assert engine.stacked_steps == 1 and engine.mixed_steps == 0  # one adapter: not a mixed step
    with engine.use("wide") as model, torch.inference_mode():
        reference = model(input_ids=ids).logits
    assert engine.stats()["folded"] is None
    torch.testing.assert_close(stacked, reference, rtol=1e-3, atol=1e-3)  # bf16 activations on int8 weights


def test_work_in_a_passing_thread_returns_raises_and_leaves_no_thread_behind():
    """Model loads and adapter attaches run in a thread that ends (studio/util.py: its OpenMP pool goes with it)."""
    import threading

    from studio.util import in_passing_thread

    main = threading.get_ident()
    assert in_passing_thread(lambda x, y=1: (threading.get_ident() != main, x + y), 2, y=3) == (True, 5)
    with pytest.raises(ValueError, match="bad"):
        in_passing_thread(lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert not [t for t in threading.enumerate() if t.name.startswith("studio-passing")]
