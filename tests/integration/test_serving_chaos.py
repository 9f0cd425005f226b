"""Serving that holds: concurrent streaming `openai` clients on the base and two adapters while, meanwhile,
(a) an imported adapter is deleted, (b) a run is deleted and trained again under the same name (new
files), (c) a DoRA adapter is imported, (d) a client sends a prompt over the context. Every request for
the base and the two untouched adapters completes with the answer it gets alone; a request for a changed
adapter ends with its old answer (finished before the change), a clear error, or the new weights'
answer; RSS after is within 10% of before. Also: a decode forward that fails for one adapter's rows
(PEFT refusing it) ends only those rows, and one that fails halfway through (as an out-of-memory
would) is rolled back and retried without changing any answer."""

from __future__ import annotations

import gc
import shutil
import threading
import time

import openai
import psutil
import pytest

from studio import paths
from studio.adapters import delete_adapter, import_adapter
from studio.errors import AdapterError
from studio.inference import Engine, forget_adapter

from .serving_helpers import ThreadServer, random_lora

CLIENTS = 16
ROUNDS = 3
MAX_NEW = 12
LONG = 100  # the changed adapters' requests: long enough to be running when the change lands
PROMPTS = ["Tell me a story about the sea.", "What is two plus two?", "Name three colours.", "Hi"]
STABLE = ("base", "A", "B")


def _ask(client, model: str, prompt: str, max_tokens: int = MAX_NEW) -> str:
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            temperature=0, max_tokens=max_tokens, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def _dora(base, out):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(base)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)).save_pretrained(out)
    return out


@pytest.fixture()
def chaos(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("STUDIO_API_KEYS", raising=False)
    for name, seed in (("A", 1), ("B", 2), ("gone", 3)):
        import_adapter(random_lora(tiny_model_dir, tmp_path / name, seed), name)
    run = paths.runs_dir() / "r1"
    random_lora(tiny_model_dir, run / "adapter", 4)
    engine = Engine(str(tiny_model_dir), "fp32", max_batch=8)
    server = ThreadServer(engine, {})
    yield server, engine, run
    server.stop()


def test_clients_on_untouched_models_get_their_alone_answers_while_adapters_change(chaos, tiny_model_dir,
                                                                                  tmp_path):
    server, engine, run = chaos
    client = server.client()
    alone = {(m, p): _ask(client, m, p) for m in (*STABLE, "gone", "run:r1") for p in PROMPTS}
    old_run = {p: _ask(client, "run:r1", p, LONG) for p in PROMPTS[:2]}
    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    results: list[tuple[str, str, str | BaseException]] = []
    barrier = threading.Barrier(CLIENTS + 1)

    def client_job(i: int) -> None:
        own = server.client()
        barrier.wait()
        for j in range(ROUNDS):
            model = (*STABLE, "gone", "run:r1")[(i + j) % 5]
            prompt = PROMPTS[(i + 2 * j) % (2 if model == "run:r1" else len(PROMPTS))]
            try:
                results.append((model, prompt, _ask(own, model, prompt, LONG if model in ("gone", "run:r1")
                                                    else MAX_NEW)))
            except openai.APIError as exc:
                results.append((model, prompt, exc))

    threads = [threading.Thread(target=client_job, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    barrier.wait()
    _until(lambda: {"gone", "run:r1"} <= engine.scheduler.adapters_in_use())
    delete_adapter("gone")  # (a) while its requests run, as the Chat tab deletes: files, then engines
    forget_adapter("gone")
    shutil.rmtree(run)  # (b) the run deleted, and a new one trained under the same name
    random_lora(tiny_model_dir, run / "adapter", 9)
    engine.refresh_adapters()  # what the scheduler's watcher runs every second, now: no race with a fast machine
    with pytest.raises(AdapterError, match="DoRA"):  # (c) refused at import, with the reason
        import_adapter(_dora(tiny_model_dir, tmp_path / "dora"), "dora")
    with pytest.raises(AdapterError, match="DoRA"):  # and given by folder (serve --adapters dora=...)
        engine.load_adapter("dora", tmp_path / "dora")
    with pytest.raises(openai.BadRequestError) as too_long:  # (d) over the context, mid-batch
        client.chat.completions.create(model="A", messages=[{"role": "user", "content": "hello world " * 1100}])
    assert too_long.value.code == "context_length_exceeded"
    for t in threads:
        t.join(240)
    assert len(results) == CLIENTS * ROUNDS

    new_run = {p: _ask(client, "run:r1", p, LONG) for p in PROMPTS[:2]}
    assert new_run != old_run  # the new run's weights answer, not the old ones
    changed = {"gone": 0, "run:r1": 0}
    for model, prompt, got in results:
        if model in STABLE:
            assert got == alone[(model, prompt)], (model, prompt, got)  # untouched: its answer alone
        elif isinstance(got, BaseException):
            status = getattr(got, "status_code", None)  # None: the error came inside the stream
            assert (status is None or 400 <= status < 500) and len(got.message) > 40, got  # says why, no 500
            changed[model] += 1
        elif model == "run:r1":
            assert got in (old_run[prompt], new_run[prompt]), got
        else:
            assert got == alone[("gone", prompt)]
    assert changed["gone"] >= 1 and changed["run:r1"] >= 1, changed  # the changes met running requests
    assert [m.id for m in client.models.list().data if m.id in ("gone", "dora")] == []  # /v1/models = registry
    assert "gone" not in engine.adapters
    gc.collect()
    rss_after = psutil.Process().memory_info().rss
    assert rss_after < rss_before * 1.10, (rss_before, rss_after)
    print(f"\n[chaos] {len(results)} requests, changed-adapter errors {changed}, isolated forwards "
          f"{engine.scheduler.isolated}, RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")


def test_a_forward_that_fails_for_one_adapters_rows_ends_only_those_rows(chaos):
    server, engine, _ = chaos
    client = server.client()
    alone = {m: _ask(client, m, PROMPTS[0], 120) for m in STABLE}
    results: dict[str, str | BaseException] = {}

    def job(model: str) -> None:
        try:
            results[model] = _ask(server.client(), model, PROMPTS[0], 120 if model in STABLE else LONG)
        except openai.APIError as exc:
            results[model] = exc

    threads = [threading.Thread(target=job, args=(m,)) for m in (*STABLE, "gone")]
    for t in threads:
        t.start()
    _until(lambda: "gone" in engine.scheduler.adapters_in_use() and engine.scheduler.running >= 4)
    with engine.lock:  # PEFT loses the adapter's layers under the running rows (as a refused DoRA batch would)
        engine.model.delete_adapter(engine._peft_names["gone"])
    for t in threads:
        t.join(120)
    assert isinstance(results["gone"], openai.APIError), results["gone"]
    assert "adapter" in str(results["gone"]) and "Generation failed" in str(results["gone"])  # says what failed
    assert {m: results[m] for m in STABLE} == alone and engine.scheduler.isolated >= 1


def _until(condition, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out waiting for the scheduler"
        time.sleep(0.005)


def test_a_decode_step_that_fails_halfway_loses_no_answer_and_changes_none(tiny_model_dir):
    """A forward that raises in its second layer after its attention (two layers wrote their KV cache), as an
    out-of-memory would: the step is rolled back and retried in halves; every answer is its alone answer."""
    from studio.inference import encode_chat
    from studio.serving.scheduler import Sampling

    engine = Engine(str(tiny_model_dir), "fp32", max_batch=4)
    prompts = [encode_chat(engine.tokenizer, [{"role": "user", "content": p}])[0].tolist() for p in PROMPTS]
    sampling = Sampling(max_new_tokens=60)
    alone = ["".join(engine.submit(ids, None, sampling).stream()) for ids in prompts]
    failures, decode_calls = [], []

    def fail_once(module, args, output):  # the third decode step of all four rows, whatever the machine's speed
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[0] == 4 and hidden.shape[1] == 1 and not failures:
            decode_calls.append(1)
            if len(decode_calls) == 3:
                failures.append(1)
                raise RuntimeError("simulated: out of memory in layer 1")

    handle = engine.model.model.layers[1].post_attention_layernorm.register_forward_hook(fail_once)  # every route
    try:
        requests = [engine.submit(ids, None, sampling) for ids in prompts]
        answers = ["".join(r.stream()) for r in requests]
    finally:
        handle.remove()
    assert failures and engine.scheduler.isolated >= 1 and engine.lean_steps > 0
    assert answers == alone and all(r.finish_reason in ("stop", "length") for r in requests)
