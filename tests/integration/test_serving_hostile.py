"""Malformed and hostile requests against the real /v1 app on the tiny model: every one gets a 4xx in
OpenAI's error shape ({"error": {"message", "type", "param", "code"}}), none a 500 or a plain-text page,
and the server answers a normal request right after each. Tool calls written as a bare JSON object are
returned as tool calls, streamed and not."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from studio.inference import Engine
from studio.serving.api import Backend, parse_tool_calls
from studio.serving.server import create_app

GOOD = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def _with(**changes) -> dict:
    body = dict(GOOD, **changes)
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()
USER = {"role": "user", "content": "Hi"}

CHAT_CASES = [  # (what, body, status, param the error names)
    ("model missing", _with(model=DROP), 400, "model"),
    ("model a number", _with(model=5), 400, "model"),
    ("model empty", _with(model=""), 400, "model"),
    ("model unknown", _with(model="no-such"), 404, "model"),
    ("messages missing", _with(messages=DROP), 400, "messages"),
    ("messages a string", _with(messages="hi"), 400, "messages"),
    ("messages empty", _with(messages=[]), 400, "messages"),
    ("message a string", _with(messages=["hi"]), 400, "messages[0]"),
    ("unknown role", _with(messages=[{"role": "wizard", "content": "x"}]), 400, "messages[0].role"),
    ("role missing", _with(messages=[{"content": "x"}]), 400, "messages[0].role"),
    ("content a number", _with(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content"),
    ("content an object", _with(messages=[{"role": "user", "content": {"a": 1}}]), 400, "messages[0].content"),
    ("user content null", _with(messages=[{"role": "user", "content": None}]), 400, "messages[0].content"),
    ("image part", _with(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]), 400, "messages[0].content[1]"),
    ("audio part", _with(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
     400, "messages[0].content[0]"),
    ("unknown part", _with(messages=[{"role": "user", "content": [{"type": "hologram"}]}]), 400,
     "messages[0].content[0]"),
    ("text part without text", _with(messages=[{"role": "user", "content": [{"type": "text"}]}]), 400,
     "messages[0].content[0]"),
    ("part a string", _with(messages=[{"role": "user", "content": ["hi"]}]), 400, "messages[0].content[0]"),
    ("tool_calls a string", _with(messages=[USER, {"role": "assistant", "content": None, "tool_calls": "x"}]),
     400, "messages[1].tool_calls"),
    ("tool_calls of strings", _with(messages=[USER, {"role": "assistant", "content": None, "tool_calls": ["x"]}]),
     400, "messages[1].tool_calls[0]"),
    ("tool call without name", _with(messages=[USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"arguments": "{}"}}]}]), 400,
     "messages[1].tool_calls[0].function.name"),
    ("tool_calls on a user", _with(messages=[{"role": "user", "content": "x", "tool_calls": []}]), 400,
     "messages[0].tool_calls"),
    ("tool_call_id a number", _with(messages=[USER, {"role": "tool", "content": "x", "tool_call_id": 3}]), 400,
     "messages[1].tool_call_id"),
    ("name a number", _with(messages=[{"role": "user", "content": "x", "name": 3}]), 400, "messages[0].name"),
    ("temperature a string", _with(temperature="hot"), 400, "temperature"),
    ("temperature too high", _with(temperature=7), 400, "temperature"),
    ("temperature negative", _with(temperature=-1), 400, "temperature"),
    ("temperature a boolean", _with(temperature=True), 400, "temperature"),
    ("top_p zero", _with(top_p=0), 400, "top_p"),
    ("top_p a list", _with(top_p=[1]), 400, "top_p"),
    ("max_tokens zero", _with(max_tokens=0), 400, "max_tokens"),
    ("max_tokens a float", _with(max_tokens=2.5), 400, "max_tokens"),
    ("max_tokens a string", _with(max_tokens="10"), 400, "max_tokens"),
    ("max_tokens over the context", _with(max_tokens=1_000_000), 400, "messages"),
    ("max_completion_tokens negative", _with(max_completion_tokens=-3), 400, "max_completion_tokens"),
    ("seed a string", _with(seed="x"), 400, "seed"),
    ("seed a float", _with(seed=1.5), 400, "seed"),
    ("n two", _with(n=2), 400, "n"),
    ("n a string", _with(n="1"), 400, "n"),
    ("stream a string", _with(stream="yes"), 400, "stream"),
    ("stream_options true", _with(stream=True, stream_options=True), 400, "stream_options"),
    ("stream_options without stream", _with(stream_options={"include_usage": True}), 400, "stream_options"),
    ("include_usage a string", _with(stream=True, stream_options={"include_usage": "y"}), 400, "include_usage"),
    ("stop a number", _with(stop=5), 400, "stop"),
    ("stop of numbers", _with(stop=[1, 2]), 400, "stop"),
    ("stop empty string", _with(stop=""), 400, "stop"),
    ("five stops", _with(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("logprobs", _with(logprobs=True), 400, "logprobs"),
    ("logprobs a string", _with(logprobs="yes"), 400, "logprobs"),
    ("top_logprobs", _with(top_logprobs=5), 400, "top_logprobs"),
    ("presence_penalty", _with(presence_penalty=1.0), 400, "presence_penalty"),
    ("frequency_penalty out of range", _with(frequency_penalty=9), 400, "frequency_penalty"),
    ("logit_bias", _with(logit_bias={"50256": -100}), 400, "logit_bias"),
    ("logit_bias a list", _with(logit_bias=[1]), 400, "logit_bias"),
    ("response_format json", _with(response_format={"type": "json_object"}), 400, "response_format"),
    ("response_format a string", _with(response_format="json"), 400, "response_format"),
    ("tools a dict", _with(tools={"a": 1}), 400, "tools"),
    ("tools of strings", _with(tools=["get_weather"]), 400, "tools[0]"),
    ("tool of another type", _with(tools=[{"type": "retrieval"}]), 400, "tools[0]"),
    ("tool without a name", _with(tools=[{"type": "function", "function": {}}]), 400, "tools[0].function.name"),
    ("tool with a bad name", _with(tools=[{"type": "function", "function": {"name": "a b!"}}]), 400,
     "tools[0].function.name"),
    ("tool parameters a string", _with(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
     400, "tools[0].function.parameters"),
    ("tool_choice required", _with(tools=[TOOL], tool_choice="required"), 400, "tool_choice"),
    ("tool_choice a number", _with(tools=[TOOL], tool_choice=3), 400, "tool_choice"),
    ("parallel_tool_calls a string", _with(parallel_tool_calls="no"), 400, "parallel_tool_calls"),
    ("user a number", _with(user=5), 400, "user"),
    ("prompt over the character limit", _with(messages=[{"role": "user", "content": "word " * 7000}]), 400,
     "messages"),
    ("prompt over the context", _with(messages=[{"role": "user", "content": "hello world " * 1100}]), 400,
     "messages"),
]

COMPLETION_CASES = [
    ("prompt missing", {"model": "base"}, 400, "prompt"),
    ("prompt a number", {"model": "base", "prompt": 5}, 400, "prompt"),
    ("prompt of token ids", {"model": "base", "prompt": [1, 2, 3]}, 400, "prompt"),
    ("echo", {"model": "base", "prompt": "x", "echo": True}, 400, "echo"),
    ("best_of", {"model": "base", "prompt": "x", "best_of": 3}, 400, "best_of"),
    ("suffix", {"model": "base", "prompt": "x", "suffix": "end"}, 400, "suffix"),
    ("logprobs", {"model": "base", "prompt": "x", "logprobs": 2}, 400, "logprobs"),
]

RAW_CASES = [  # (what, method, path, raw body, status)
    ("invalid JSON", "POST", "/v1/chat/completions", b'{"model": "base", "messages": [', 400),
    ("not an object", "POST", "/v1/chat/completions", b'[1, 2]', 400),
    ("JSON null", "POST", "/v1/chat/completions", b'null', 400),
    ("empty body", "POST", "/v1/completions", b'', 400),
    ("not UTF-8", "POST", "/v1/chat/completions", b'\xff\xfe\x00garbage', 400),
    ("a huge body", "POST", "/v1/chat/completions", b'{"model": "base", "x": "' + b"a" * 4_100_000 + b'"}', 413),
    ("an unknown route", "POST", "/v1/embeddings", b'{}', 404),
    ("a wrong method", "GET", "/v1/chat/completions", b'', 405),
]


@pytest.fixture(scope="module")
def app_client(tiny_model_dir):
    engine = Engine(str(tiny_model_dir), "fp32")
    with TestClient(create_app(Backend(lambda: engine)), raise_server_exceptions=False) as client:
        yield client


def _assert_openai_error(response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and len(error["message"]) > 20, error
    if param is not None:
        assert error["param"] == param or param in error["message"], error


def _assert_still_serving(client) -> None:
    ok = client.post("/v1/chat/completions", json=GOOD)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant", ok.text[:300]


@pytest.mark.parametrize("what,body,status,param", CHAT_CASES, ids=[c[0] for c in CHAT_CASES])
def test_a_bad_chat_request_gets_a_4xx_in_openai_shape_and_the_server_goes_on(app_client, what, body, status,
                                                                             param):
    _assert_openai_error(app_client.post("/v1/chat/completions", json=body), status, param)
    _assert_still_serving(app_client)


@pytest.mark.parametrize("what,body,status,param", COMPLETION_CASES, ids=[c[0] for c in COMPLETION_CASES])
def test_a_bad_completion_request_gets_a_400(app_client, what, body, status, param):
    _assert_openai_error(app_client.post("/v1/completions", json=body), status, param)


@pytest.mark.parametrize("what,method,path,raw,status", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_a_broken_body_or_route_gets_an_openai_error(app_client, what, method, path, raw, status):
    response = app_client.request(method, path, content=raw, headers={"Content-Type": "application/json"})
    _assert_openai_error(response, status)
    _assert_still_serving(app_client)


def test_the_image_refusal_says_the_model_reads_text_only(app_client):
    body = _with(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    error = app_client.post("/v1/chat/completions", json=body).json()["error"]
    assert "text only" in error["message"] and error["code"] == "unsupported_content"


def test_text_parts_tool_turns_and_extra_fields_are_accepted(app_client):
    body = _with(messages=[{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                           {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                           {"role": "assistant", "content": None, "tool_calls": [
                               {"id": "c1", "type": "function",
                                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                           {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
                 tools=[TOOL], tool_choice="auto", user="me", metadata={"x": "y"}, parallel_tool_calls=False,
                 response_format={"type": "text"}, stream=True, stream_options={"include_usage": True})
    response = app_client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]"), response.text[:300]
    assert '"usage"' in response.text


def test_a_bare_json_object_naming_a_given_tool_is_a_tool_call():
    names = {"get_weather"}
    content, calls = parse_tool_calls('{"name": "get_weather", "arguments": {"city": "Paris"}}', names)
    assert content is None and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    _, fenced = parse_tool_calls('```json\n{"name": "get_weather", "parameters": {"city": "Rome"}}\n```', names)
    assert json.loads(fenced[0]["function"]["arguments"]) == {"city": "Rome"}
    for text in ('{"name": "other_tool", "arguments": {}}', '{"name": "get_weather", "city": "x", "arguments": {}}',
                 'The weather: {"name": "get_weather"}', '{"a": 1}'):
        assert parse_tool_calls(text, names) == (text, [])  # not a call of a given tool: plain text
