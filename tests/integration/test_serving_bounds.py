"""Bounded resources while serving: the KV-cache budget (a request that can never fit gets a 400 saying
why; requests that fit only one at a time wait their turn and both answer), the attached-adapter limit
(the least recently used idle adapter is detached, and comes back on its next request), and an evicted
engine that stops its scheduler thread and lets go of its model; the app's /v1 serves the Model tab's engine."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from studio import inference
from studio.inference import Engine
from studio.serving.api import Backend
from studio.serving.scheduler import CacheBudgetError, Sampling
from studio.serving.server import create_app

from .serving_helpers import random_lora

ASK = [{"role": "user", "content": "Tell me a story about the sea."}]


def test_the_kv_budget_refuses_what_never_fits_and_queues_what_fits_alone(tiny_model_dir):
    engine = Engine(str(tiny_model_dir), "fp32", max_kv_tokens=200)
    client = TestClient(create_app(Backend(lambda: engine)))
    refused = client.post("/v1/chat/completions", json={"model": "base", "messages": ASK, "max_tokens": 400})
    error = refused.json()["error"]
    assert refused.status_code == 400 and error["code"] == "kv_cache_budget_exceeded"
    assert "200" in error["message"] and "max_tokens" in error["message"]
    ids = inference.encode_chat(engine.tokenizer, ASK)[0].tolist()
    sampling = Sampling(max_new_tokens=200 - len(ids))  # each fits the budget alone, never two together
    first, second = engine.submit(ids, None, sampling), engine.submit(ids, None, sampling)
    assert "".join(first.stream()) == "".join(second.stream()) and first.text
    assert max(engine.scheduler.rows_per_step) == 1  # never two rows at once: the budget held
    with pytest.raises(CacheBudgetError):
        engine.submit(ids, None, Sampling(max_new_tokens=201 - len(ids)))


def test_past_the_adapter_limit_the_least_recently_used_idle_adapter_is_detached(tiny_model_dir, tmp_path):
    engine = Engine(str(tiny_model_dir), "fp32", max_adapters=2)
    folders = {n: random_lora(tiny_model_dir, tmp_path / n, seed) for seed, n in enumerate("ABC")}
    ids = inference.encode_chat(engine.tokenizer, ASK)[0].tolist()

    def answer(name: str) -> str:
        return "".join(engine.submit(ids, name, Sampling(max_new_tokens=6)).stream())

    for name in "AB":
        engine.load_adapter(name, folders[name])
    first_a = answer("A")  # A used after B: B is the least recently used
    engine.load_adapter("C", folders["C"])
    assert engine.adapters == ["A", "C"]
    answer("B")  # attached again from its folder, on its own request: A (used before C) made room
    assert sorted(engine.adapters) == ["B", "C"] and answer("A") == first_a


def test_an_evicted_engine_stops_its_thread_and_frees_its_model(tiny_model_dir, other_tiny_model_dir, monkeypatch):
    import gc
    import weakref

    monkeypatch.setattr(inference, "MAX_ENGINES", 1)
    monkeypatch.setattr(inference, "_engines", {})
    old = inference.get_engine(str(tiny_model_dir), "fp32")
    ids = inference.encode_chat(old.tokenizer, ASK)[0].tolist()
    assert "".join(old.submit(ids, None, Sampling(max_new_tokens=4)).stream())
    thread, model = old.scheduler._thread, weakref.ref(old.loaded.model)
    new = inference.get_engine(str(other_tiny_model_dir), "fp32")
    gc.collect()
    assert not thread.is_alive() and model() is None and inference.loaded_engines() == [new]
    with pytest.raises(Exception, match="unloaded"):
        old.submit(ids, None, Sampling(max_new_tokens=4))


def test_the_apps_api_serves_the_model_tabs_engine_not_the_last_one_used(tiny_model_dir, other_tiny_model_dir,
                                                                          monkeypatch):
    from studio.serving.server import app_backend

    monkeypatch.setattr(inference, "_engines", {})
    monkeypatch.setattr(inference, "_serving", None)
    chosen = inference.serve_engine(str(tiny_model_dir), "fp32")  # the Model tab's Load
    inference.get_engine(str(other_tiny_model_dir), "fp32")  # another engine used since (e.g. an evaluation)
    backend = app_backend()
    assert backend.engine() is chosen
    client = TestClient(create_app(backend))
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [tiny_model_dir.name]
    other = client.post("/v1/chat/completions", json={"model": other_tiny_model_dir.name, "messages": ASK})
    assert other.status_code == 404 and "chosen in the Model tab" in other.json()["error"]["message"]
    assert tiny_model_dir.name in other.json()["error"]["message"]
