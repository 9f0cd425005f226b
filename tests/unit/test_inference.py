"""The engine refuses bad input with a clear message and leaves the loaded model as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from studio.errors import AdapterError, ConfigError
from studio.inference import Engine, GenerationSettings, get_engine

SETTINGS = GenerationSettings(max_new_tokens=6)
ASK = [{"role": "user", "content": "Hello there"}]


def _lora(base_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    # init_lora_weights=False: random A and B, so the adapter visibly changes the answer
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine(str(tiny_model_dir), "fp32")


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_model_dir, other_tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    good = _lora(tiny_model_dir, root / "good")
    pickled = root / "pickled"
    shutil.copytree(good, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    missing = root / "missing"
    missing.mkdir()
    shutil.copy(good / "adapter_config.json", missing)
    return {"good": good, "other": _lora(other_tiny_model_dir, root / "other"), "pickled": pickled, "missing": missing}


def _snapshot(engine: Engine) -> tuple:
    import torch

    state = {k: v.clone() for k, v in engine.model.state_dict().items()}
    return "".join(engine.answer(ASK, SETTINGS)), engine.adapters, state, torch


@pytest.mark.parametrize(("kind", "message"), [
    ("other", r"trained for .*tiny-llama-96.* does not fit the loaded base .*tiny-llama\b"),
    ("pickled", r"pickled weights \(adapter_model.bin\)"),
    ("missing", r"no adapter_model.safetensors"),
])
def test_bad_adapters_are_refused_and_the_model_is_untouched(engine, loras, kind, message):
    answer, names, state, torch = _snapshot(engine)
    with pytest.raises(AdapterError, match=message):
        engine.load_adapter(kind, loras[kind])
    with pytest.raises(AdapterError, match=message):
        list(engine.answer(ASK, SETTINGS, adapter=str(loras[kind])))
    assert engine.adapters == names
    after = engine.model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert "".join(engine.answer(ASK, SETTINGS)) == answer


@pytest.mark.parametrize(("messages", "settings", "message"), [
    ([{"role": "user", "content": "   "}], SETTINGS, "The prompt is empty"),
    ([], SETTINGS, "The prompt is empty"),
    (ASK, GenerationSettings(max_new_tokens=0), "max_new_tokens=0 is out of range"),
    (ASK, GenerationSettings(max_new_tokens=100_000), "Set max_new_tokens between 1 and 4096"),
    (ASK, GenerationSettings(temperature=-1.0), "temperature=-1.0 is out of range"),
])
def test_bad_requests_get_a_clear_message(engine, loras, messages, settings, message):
    answer, names, _, _ = _snapshot(engine)
    with pytest.raises(ConfigError, match=message):
        list(engine.answer(messages, settings, adapter=str(loras["good"])))
    with pytest.raises(ConfigError, match=message):
        list(engine.compare(messages, settings, None, str(loras["good"])))
    assert engine.adapters == names and "".join(engine.answer(ASK, SETTINGS)) == answer


def test_adapter_changes_the_answer_and_base_stays_the_base(engine, loras):
    base = "".join(engine.answer(ASK, SETTINGS))
    ms = engine.load_adapter("good", loras["good"])
    assert ms > 0 and engine.load_adapter("good", loras["good"]) == 0.0  # attached once
    assert "".join(engine.answer(ASK, SETTINGS, "good")) != base
    assert "".join(engine.answer(ASK, SETTINGS, None)) == base
    with engine.use("good") as model:  # what evaluation code does
        assert model.active_adapter == engine._peft_names["good"]
    engine.unload_adapter("good")
    assert "good" not in engine.adapters


def test_system_prompt_and_multi_turn_reach_the_model(engine):
    from studio.inference import encode_chat

    conversation = [{"role": "system", "content": "Answer in French."}, *ASK,
                    {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "Encore ?"}]
    stats: dict = {}
    "".join(engine.answer(conversation, SETTINGS, stats=stats))
    prompt = engine.tokenizer.decode(encode_chat(engine.tokenizer, conversation)[0])
    assert all(m["content"] in prompt for m in conversation) and prompt.rstrip().endswith("assistant")
    assert stats["prompt_tokens"] == len(encode_chat(engine.tokenizer, conversation)[0]) > 20
    assert stats["tokens"] == SETTINGS.max_new_tokens and stats["tokens_per_s"] > 0


def test_sampling_is_reproducible_by_seed(engine):
    sampled = GenerationSettings(max_new_tokens=8, temperature=1.5, top_k=0, top_p=1.0, seed=7)
    first = "".join(engine.answer(ASK, sampled))
    assert "".join(engine.answer(ASK, sampled)) == first


def test_get_engine_shares_one_engine_per_model_and_quant(tiny_model_dir):
    assert get_engine(str(tiny_model_dir), "fp32") is get_engine(str(tiny_model_dir), "fp32")


def test_4bit_base_takes_adapters_too(tiny_model_dir, loras):
    engine = Engine(str(tiny_model_dir), "4bit")
    base = "".join(engine.answer(ASK, SETTINGS))
    engine.load_adapter("good", loras["good"])
    assert "".join(engine.answer(ASK, SETTINGS, "good")) != base
    assert engine.stats()["folded"] is None  # merging would round the adapter into 4-bit codes
    assert "".join(engine.answer(ASK, SETTINGS)) == base


def test_an_adapter_answering_alone_runs_merged_and_the_base_comes_back_bit_for_bit(tiny_model_dir, loras, tmp_path,
                                                                                     monkeypatch):
    import torch

    second = _lora(tiny_model_dir, tmp_path / "second", seed=1)
    unmerged = Engine(str(tiny_model_dir), "fp32")
    monkeypatch.setattr(unmerged, "_fold", lambda name: None)  # the reference: PEFT's unmerged LoRA path
    for name, path in (("good", loras["good"]), ("second", second)):
        unmerged.load_adapter(name, path)
    expected = {name: "".join(unmerged.answer(ASK, SETTINGS, name)) for name in (None, "good", "second")}

    engine = Engine(str(tiny_model_dir), "fp32")
    originals = [(p, p.detach().clone()) for p in engine.model.parameters()]
    engine.load_adapter("good", loras["good"])
    engine.load_adapter("second", second)
    for name in ("good", "second", "good", None, "second", None):  # swaps, folds and restores
        assert "".join(engine.answer(ASK, SETTINGS, name)) == expected[name]
        assert engine.stats()["folded"] == name
    assert all(torch.equal(p, copy) for p, copy in originals)  # not a rounding step of drift
    "".join(engine.answer(ASK, SETTINGS, "good"))
    left, right = list(engine.compare(ASK, SETTINGS, "good", None))[-1]  # the mixed batch runs unmerged
    assert engine.stats()["folded"] is None and (left, right) == (expected["good"], expected[None])
    assert engine.stats()["mean_fold_ms"] > 0


def test_loading_an_adapter_while_another_is_merged_keeps_the_books_right(tiny_model_dir, loras, tmp_path):
    """The Chat tab's load button while an adapter is merged: PEFT's attach ends in set_adapter, which used to
    unmerge by subtraction (a warning per layer) while the engine still reported the first adapter merged and
    answered on W+Δ-Δ. Now the engine puts the base tensors back first: no warning, what it reports is what runs."""
    import warnings

    import torch

    second = _lora(tiny_model_dir, tmp_path / "second", seed=1)
    reference = Engine(str(tiny_model_dir), "fp32")
    reference.load_adapter("good", loras["good"])
    expected = "".join(reference.answer(ASK, SETTINGS, "good"))

    engine = Engine(str(tiny_model_dir), "fp32")
    originals = [(p, p.detach().clone()) for p in engine.model.parameters()]
    engine.load_adapter("good", loras["good"])
    "".join(engine.answer(ASK, SETTINGS, "good"))
    assert engine.stats()["folded"] == "good"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.load_adapter("second", second)
    assert not [w for w in caught if "merged" in str(w.message)], [str(w.message) for w in caught][:3]
    assert engine.stats()["folded"] is None  # not "already active": the merge was undone before the attach
    assert all(torch.equal(p, copy) for p, copy in originals)  # the base tensors, bit for bit
    stats: dict = {}
    assert "".join(engine.answer(ASK, SETTINGS, "good", stats=stats)) == expected
    assert stats["merge_ms"] > 0 and engine.stats()["folded"] == "good"  # merged again, and says so


def test_engines_are_kept_by_last_use_and_a_load_keeps_no_one_else_waiting(tiny_model_dir, bundled_dir):
    import threading
    import time

    from studio import inference

    tiny = get_engine(str(tiny_model_dir), "fp32")
    loading = threading.Thread(target=get_engine, args=(str(bundled_dir), "fp32"))
    loading.start()
    deadline = time.time() + 60
    while (str(bundled_dir), "fp32") not in inference._loading and loading.is_alive():
        assert time.time() < deadline
        time.sleep(0.001)
    start = time.perf_counter()
    assert get_engine(str(tiny_model_dir), "fp32") is tiny  # while the bundled model loads
    waited = time.perf_counter() - start
    still_loading = loading.is_alive()
    loading.join()
    assert not still_loading or waited < 0.5  # served at once, not after the other load
    assert inference.loaded_engines()[-1].ref == str(bundled_dir)
    get_engine(str(tiny_model_dir), "fp32")
    assert inference.loaded_engines()[-1] is tiny  # the last used is what the app's API serves


def test_an_idle_scheduler_thread_ends_and_the_next_request_starts_another(tiny_model_dir, monkeypatch):
    """Its OpenMP pool ends with it, so an idle engine does not slow another engine's decoding (util.py)."""
    import time

    from studio.serving import scheduler
    from studio.serving.scheduler import Sampling

    monkeypatch.setattr(scheduler, "IDLE_EXIT_S", 0.2)
    monkeypatch.setattr(scheduler, "WATCH_S", 0.05)
    engine = Engine(str(tiny_model_dir), "fp32")
    ids = engine.tokenizer("Hello there")["input_ids"]
    first = "".join(engine.submit(ids, None, Sampling(max_new_tokens=4)).stream())
    thread = engine.scheduler._thread
    deadline = time.monotonic() + 10
    while thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not thread.is_alive() and engine.scheduler._thread is None and engine.scheduler.alive
    assert "".join(engine.submit(ids, None, Sampling(max_new_tokens=4)).stream()) == first  # a new thread answers
    assert engine.scheduler._thread is not thread
    engine.close()
