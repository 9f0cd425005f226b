"""The OpenAI-compatible server, driven by the official `openai` client: models, chat with the base and
two adapters (streamed and not), stop sequences, tools in the prompt, errors in OpenAI's shape, keys,
a full queue, a client that goes away, and the purity test: 8 concurrent clients, every answer token
for token the one its adapter gives alone."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from studio.inference import Engine

from .serving_helpers import ThreadServer, free_port, random_lora, tools_model

KEY = "test-key"
ASK = [{"role": "user", "content": "Tell me a story about the sea."}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
NEAR_TIE = 1e-4  # top-2 logit gap under which batching's float rounding may flip a greedy pick


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("serving")
    model = tools_model(tiny_model_dir, root / "tools-llama")
    adapters = {"A": random_lora(model, root / "lora-a", 1), "B": random_lora(model, root / "lora-b", 2)}
    old = os.environ.get("STUDIO_API_KEYS")
    os.environ["STUDIO_API_KEYS"] = f"other-key,{KEY}"
    server = ThreadServer(Engine(str(model), "fp32"), adapters)
    server.model_dir, server.adapters = model, adapters
    yield server
    server.stop()
    if old is None:
        os.environ.pop("STUDIO_API_KEYS", None)
    else:
        os.environ["STUDIO_API_KEYS"] = old


def _streamed(client, **kwargs) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_models_lists_the_base_and_both_adapters(served):
    ids = [m.id for m in served.client().models.list().data]
    assert ids[0] == "tools-llama" and {"A", "B"} <= set(ids)


def test_chat_with_the_base_and_two_adapters_streamed_and_not(served):
    client = served.client()
    prompt_ids = served.engine.tokenizer.apply_chat_template(ASK, add_generation_prompt=True, tokenize=False)
    prompt_tokens = len(served.engine.tokenizer(prompt_ids, add_special_tokens=False)["input_ids"])
    answers = {}
    for model in ("tools-llama", "A", "B"):
        whole = client.chat.completions.create(model=model, messages=ASK, temperature=0, max_tokens=12)
        text, chunks = _streamed(client, model=model, messages=ASK, temperature=0, max_tokens=12)
        assert whole.choices[0].message.content == text  # streamed and not: the same greedy answer
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed
        assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens == prompt_tokens
        assert whole.usage.completion_tokens <= 12 and whole.choices[0].finish_reason in ("stop", "length")
        assert whole.model == model and whole.object == "chat.completion"
        answers[model] = text
    assert len(set(answers.values())) == 3, answers  # each adapter answers as itself, not as the base


def test_stop_sequences_end_the_answer_before_them(served):
    client = served.client()
    full = client.chat.completions.create(model="A", messages=ASK, temperature=0, max_tokens=24)
    text = full.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 3]
    expected = text[:text.find(stop)]
    cut = client.chat.completions.create(model="A", messages=ASK, temperature=0, max_tokens=24, stop=[stop, "zzzz"])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    streamed, chunks = _streamed(client, model="A", messages=ASK, temperature=0, max_tokens=24, stop=stop)
    assert streamed == expected and [c for c in chunks if c.choices][-1].choices[0].finish_reason == "stop"
    raw = client.completions.create(model="B", prompt="Once upon a time", temperature=0, max_tokens=10)
    assert raw.object == "text_completion" and raw.usage.completion_tokens <= 10


def test_tool_definitions_are_rendered_into_the_prompt(served):
    client = served.client()
    tokenizer = served.engine.tokenizer
    with_tools = client.chat.completions.create(model="A", messages=ASK, tools=TOOLS, temperature=0, max_tokens=4)
    without = client.chat.completions.create(model="A", messages=ASK, temperature=0, max_tokens=4)
    declined = client.chat.completions.create(model="A", messages=ASK, tools=TOOLS, tool_choice="none",
                                              temperature=0, max_tokens=4)
    rendered = tokenizer.apply_chat_template(ASK, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert "get_weather: Current weather in a city" in rendered
    assert with_tools.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert with_tools.usage.prompt_tokens > without.usage.prompt_tokens + 20 == declined.usage.prompt_tokens + 20


def test_errors_have_openai_shape_and_status(served):
    client = served.client()
    with pytest.raises(openai.NotFoundError) as bad_model:
        client.chat.completions.create(model="no-such-adapter", messages=ASK)
    assert bad_model.value.status_code == 404 and bad_model.value.code == "model_not_found"
    assert "GET /v1/models" in bad_model.value.message
    with pytest.raises(openai.AuthenticationError) as bad_key:
        served.client(key="wrong-key").chat.completions.create(model="A", messages=ASK)
    assert bad_key.value.status_code == 401 and bad_key.value.code == "invalid_api_key"
    no_key = httpx.get(f"{served.url}/models")
    assert no_key.status_code == 401 and set(no_key.json()["error"]) >= {"message", "type", "code"}
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="A", messages=ASK, max_tokens=100_000)
    assert too_long.value.status_code == 400 and too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as bad_param:
        client.chat.completions.create(model="A", messages=ASK, temperature=7)
    assert bad_param.value.param == "temperature"


def test_hosted_mode_without_keys_closes_the_api(served, monkeypatch):
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    monkeypatch.delenv("STUDIO_API_KEYS")
    with pytest.raises(openai.AuthenticationError) as closed:
        served.client(key="anything").models.list()
    assert "STUDIO_API_KEYS" in closed.value.message


def test_a_full_queue_answers_429_and_a_client_that_leaves_frees_its_slot(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("STUDIO_API_KEYS", raising=False)
    engine = Engine(str(tiny_model_dir), "fp32", max_batch=1, max_queue=1)
    server = ThreadServer(engine, {})
    try:
        client = server.client()
        long = client.chat.completions.create(model="base", messages=ASK, max_tokens=1900, temperature=0, stream=True)
        next(iter(long))  # the stream's first chunk may come before the scheduler has taken the request in
        _until(lambda: engine.scheduler.running == 1 and engine.scheduler.waiting == 0)
        waiting = client.chat.completions.create(model="base", messages=ASK, max_tokens=5, temperature=0,
                                                 stream=True)
        _until(lambda: engine.scheduler.waiting == 1)
        with pytest.raises(openai.RateLimitError) as full:
            client.chat.completions.create(model="base", messages=ASK, max_tokens=5)
        assert full.value.status_code == 429 and "--max-queue" in full.value.message
        long.close()  # the client goes away: its row is dropped, the waiting request gets the slot
        answer = "".join(c.choices[0].delta.content or "" for c in waiting if c.choices)
        assert answer and engine.scheduler.steps < 1900  # the long answer did not run to its end
    finally:
        server.stop()


def test_a_client_that_gives_up_on_a_plain_request_is_cancelled(served, monkeypatch):
    ran = []
    submit = served.engine.submit
    monkeypatch.setattr(served.engine, "submit", lambda *a, **k: ran.append(r := submit(*a, **k)) or r)
    with pytest.raises(openai.APITimeoutError):  # the client hangs up after 1 s
        served.client(timeout=1.0).chat.completions.create(model="A", messages=ASK, max_tokens=1900, temperature=0)
    _until(lambda: ran and ran[0].done)
    assert ran[0].finish_reason == "cancelled" and len(ran[0].tokens) < 1900


def _until(condition, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out waiting for the scheduler"
        time.sleep(0.01)


def test_cli_serve_in_hosted_mode_needs_the_key(tiny_model_dir, tmp_path, workspace):
    import shutil

    model = shutil.copytree(tiny_model_dir, workspace / "models" / "tiny-llama")  # hosted: only its own folders
    port = free_port()
    env = dict(os.environ, STUDIO_HOSTED="1", STUDIO_API_KEYS="cli-key")
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "studio", "serve", "--model", str(model), "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        _until(lambda: proc.poll() is not None or _up(port), timeout=120)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        url = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url, api_key="cli-key", max_retries=0)
        assert [m.id for m in good.models.list().data] == [tiny_model_dir.name]
        reply = good.chat.completions.create(model=tiny_model_dir.name, messages=ASK, max_tokens=3)
        assert reply.usage.completion_tokens <= 3
    finally:
        proc.terminate()
        proc.wait(20)


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- purity


PROMPTS = ["Tell me a story about the sea.", "What is two plus two?", "Name three colours.",
           "Write a haiku about autumn leaves falling slowly.", "Hi", "Why is the sky blue? Explain briefly."]


def _references(served, quant: str = "fp32"):
    """Plain transformers for the base, and vanilla PEFT with one adapter each: the answers alone (in q8, the
    same int8 weights the engine holds)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio.models import load_model

    def base():
        if quant == "q8":
            return load_model(str(served.model_dir), quant, "cpu").model
        return AutoModelForCausalLM.from_pretrained(served.model_dir, dtype=torch.float32).eval()

    models = {None: base()}
    for name, path in served.adapters.items():
        models[name] = PeftModel.from_pretrained(base(), path).eval()
    return models


def _greedy(model, engine, prompt_ids: list[int], max_new: int) -> list[int]:
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                             do_sample=False, eos_token_id=sorted(engine.stop_ids), pad_token_id=engine.pad_id)
    return out[0, len(prompt_ids):].tolist()


def _top_two_gap(model, prompt_ids: list[int], prefix: list[int]) -> float:
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt_ids + prefix])).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def test_eight_concurrent_clients_each_get_their_own_adapters_answer_token_for_token(served, monkeypatch):
    _check_purity(served, monkeypatch, "fp32")


def test_purity_holds_on_int8_weights(served, monkeypatch):
    """The fast CPU path (`--quant q8`, studio/q8.py): the same 8 clients on an engine with int8 weights, every
    answer token for token what the q8 base (or it with one adapter, through vanilla PEFT) gives alone."""
    from studio.q8 import Int8Linear

    engine = Engine(str(served.model_dir), "q8")
    assert sum(isinstance(m, Int8Linear) for m in engine.model.modules()) == 2 * 7 + 1  # 2 layers x 7, and the head
    server = ThreadServer(engine, served.adapters)
    server.model_dir, server.adapters = served.model_dir, served.adapters
    try:
        _check_purity(server, monkeypatch, "q8")
        assert engine.stats()["folded"] is None and not engine.fold_ms  # adapters never merged into int8 codes
    finally:
        server.stop()


def _check_purity(served, monkeypatch, quant: str) -> None:
    engine, clients, rounds, max_new = served.engine, 8, 3, 16
    ran = []  # every request as the engine ran it
    submit = engine.submit
    monkeypatch.setattr(engine, "submit", lambda *a, **k: ran.append(r := submit(*a, **k)) or r)
    mixed_before, stacked_before = engine.mixed_steps, engine.stacked_steps
    answers: list[tuple[str, str, str]] = []
    barrier = threading.Barrier(clients)
    errors: list[BaseException] = []

    def client_job(i: int) -> None:
        client = served.client()
        barrier.wait()
        try:
            for j in range(rounds):
                model = ("tools-llama", "A", "B")[(i + j) % 3]
                prompt = PROMPTS[(i * rounds + j) % len(PROMPTS)]
                reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                       temperature=0, max_tokens=max_new)
                answers.append((model, prompt, reply.choices[0].message.content))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client_job, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(answers) == len(ran) == clients * rounds
    assert max(engine.scheduler.rows_per_step) >= 4 and engine.mixed_steps > mixed_before  # really batched, mixed
    assert engine.stacked_steps > stacked_before  # through the stacked LoRA (studio/serving/lora_batch.py)
    references = _references(served, quant)
    near_ties = []
    for request in ran:
        model = references[request.adapter]
        expected = _greedy(model, engine, request.prompt_ids, max_new)
        if request.tokens != expected:
            k = next(i for i, (a, b) in enumerate(zip(request.tokens, expected, strict=False)) if a != b)
            gap = _top_two_gap(model, request.prompt_ids, expected[:k])
            assert gap < NEAR_TIE, (f"cross-talk: {request.adapter or 'base'} diverged at token {k} where its own "
                                    f"top-2 logits are {gap:.2e} apart")
            near_ties.append((request.adapter, k, gap))
    for model, prompt, text in answers:  # what each client read is what the engine produced for it
        adapter = None if model == "tools-llama" else model
        assert any(r.adapter == adapter and r.text == text and prompt in engine.tokenizer.decode(r.prompt_ids)
                   for r in ran)
    print(f"\n[purity {quant}] {len(ran)} requests, largest batch {max(engine.scheduler.rows_per_step)}, "
          f"mixed steps {engine.mixed_steps - mixed_before}, near-ties {near_ties}")
