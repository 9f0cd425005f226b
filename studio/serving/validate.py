"""Every field of a /v1 request checked before any work starts: a bad request gets a 400 that names the
field (`param`) and says what it takes, in OpenAI's error shape, never a 500 or a silently ignored part.

`check_chat(body)` and `check_completion(body)` raise `BadField`; the routes turn it into the response.
Fields the studio does not implement (n > 1, logprobs, penalties, logit_bias, JSON modes, forced tool
choice, images and audio on a text-only model) are refused by name, so a client never believes it got
something it did not. Unknown top-level fields are ignored, as vLLM and llama.cpp do (clients send
their own extras, e.g. `user`, `metadata`).
"""

from __future__ import annotations

import re

MAX_STOPS = 4  # as OpenAI
MAX_BODY_BYTES = 4_000_000  # a larger body is refused before it is parsed (the prompt limit is far below)
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI's rule for function names (and dots, as vLLM)
MEDIA_PARTS = ("image_url", "input_audio", "file", "image", "audio", "video_url")


class BadField(Exception):
    """One field of the request is wrong: HTTP 400 with `param` naming it."""

    def __init__(self, param: str | None, message: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.message, self.code = param, message, code


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _number(body: dict, name: str, low: float, high: float, integer: bool = False) -> None:
    value = body.get(name)
    if value is None:
        return
    wanted = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted) or value != value:  # NaN != NaN
        raise BadField(name, f"'{name}' must be {'an integer' if integer else 'a number'}; got {_kind(value)} "
                             f"({value!r}).")
    if not low <= value <= high:
        raise BadField(name, f"'{name}' must be between {low} and {high}; got {value!r}.")


def _flag(body: dict, name: str) -> None:
    if body.get(name) is not None and not isinstance(body[name], bool):
        raise BadField(name, f"'{name}' must be true or false; got {_kind(body[name])} ({body[name]!r}).")


def _unsupported(body: dict, name: str, allowed: tuple, why: str) -> None:
    if body.get(name) is not None and body[name] not in allowed:
        raise BadField(name, f"'{name}' {why}", "unsupported_parameter")


def check_common(body: dict) -> None:
    """The fields chat and completions share."""
    if not isinstance(body.get("model"), str) or not body["model"].strip():
        raise BadField("model", "'model' is required: the base or an adapter id from GET /v1/models; got "
                                f"{_kind(body.get('model'))}.", "missing_required_parameter")
    _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise BadField("stream_options", f"'stream_options' must be an object like {{\"include_usage\": true}}; "
                                             f"got {_kind(options)}.")
        _flag(options, "include_usage")
        if not body.get("stream"):
            raise BadField("stream_options", "'stream_options' is only allowed with \"stream\": true.")
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 1e-6, 1.0)
    _number(body, "top_k", -1, 100_000, integer=True)
    _number(body, "max_tokens", 1, 10_000_000, integer=True)
    _number(body, "max_completion_tokens", 1, 10_000_000, integer=True)
    _number(body, "seed", -(2 ** 63), 2 ** 64 - 1, integer=True)
    _number(body, "n", 1, 128, integer=True)
    _unsupported(body, "n", (1,), "must be 1 here: send one request per answer.")
    for name in ("frequency_penalty", "presence_penalty"):
        _number(body, name, -2.0, 2.0)
        _unsupported(body, name, (0, 0.0), "is not supported here; leave it out (or 0).")
    _number(body, "repetition_penalty", 0.5, 3.0)
    _check_stop(body.get("stop"))
    bias = body.get("logit_bias")
    if bias is not None and not isinstance(bias, dict):
        raise BadField("logit_bias", f"'logit_bias' must be an object of token id -> bias; got {_kind(bias)}.")
    if bias:
        raise BadField("logit_bias", "'logit_bias' is not supported here; leave it out.", "unsupported_parameter")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise BadField("user", f"'user' must be a string; got {_kind(body['user'])}.")


def _check_stop(stop) -> None:
    if stop is None:
        return
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise BadField("stop", f"'stop' must be a non-empty string or a list of up to {MAX_STOPS} non-empty "
                               f"strings; got {stop!r}."[:300])


def check_chat(body: dict) -> None:
    """A /v1/chat/completions body, field by field."""
    check_common(body)
    _flag(body, "logprobs")
    _unsupported(body, "logprobs", (False,), "is not supported here; leave it out (or false).")
    _number(body, "top_logprobs", 0, 20, integer=True)
    _unsupported(body, "top_logprobs", (0,), "is not supported here (no logprobs); leave it out.")
    _flag(body, "parallel_tool_calls")
    _check_response_format(body.get("response_format"))
    names = check_tools(body.get("tools"))
    check_tool_choice(body.get("tool_choice"), names)
    check_messages(body.get("messages"))


def check_completion(body: dict) -> None:
    """A /v1/completions body, field by field."""
    check_common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadField("prompt", "'prompt' must be a non-empty string (or a list of exactly one); got "
                                 f"{_kind(prompt)}. Send one request per prompt; token-id prompts are not supported.")
    _unsupported(body, "logprobs", (0,), "is not supported here; leave it out.")
    _flag(body, "echo")
    _unsupported(body, "echo", (False,), "is not supported here; leave it out (or false).")
    _number(body, "best_of", 1, 20, integer=True)
    _unsupported(body, "best_of", (1,), "must be 1 here.")
    _unsupported(body, "suffix", ("",), "(insertion) is not supported here; leave it out.")


def _check_response_format(value) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise BadField("response_format", "'response_format' must be an object like {\"type\": \"text\"}; got "
                                          f"{value!r}."[:300])
    if value["type"] != "text":
        raise BadField("response_format", f"response_format type {value['type']!r} is not supported here (no "
                                          "constrained decoding); leave it out, or ask for JSON in the prompt.",
                       "unsupported_parameter")


# ---------------------------------------------------------------- tools


def check_tools(tools) -> set[str]:
    """The names of the tools, each checked to be {type: "function", function: {name, description?, parameters?}}."""
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise BadField("tools", f"'tools' must be a list of {{type: 'function', function: {{name, description, "
                                f"parameters}}}} objects; got {_kind(tools)}.")
    names = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise BadField(where, f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}; got "
                                  f"{tool!r}."[:300])
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise BadField(f"{where}.function.name", f"{where}.function.name must be 1-64 letters, digits, '_', "
                                                     f"'-' or '.'; got {name!r}."[:300])
        if function.get("description") is not None and not isinstance(function["description"], str):
            raise BadField(f"{where}.function.description", f"{where}.function.description must be a string.")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            raise BadField(f"{where}.function.parameters", f"{where}.function.parameters must be a JSON Schema "
                                                           "object.")
        names.add(name)
    return names


def check_tool_choice(choice, names: set[str]) -> None:
    if choice is None or choice in ("auto", "none"):
        return
    if choice == "required" or isinstance(choice, dict):
        raise BadField("tool_choice", "tool_choice 'required' or a named function is not supported here (the "
                                      "studio does not force a call); use \"auto\" or \"none\".",
                       "unsupported_parameter")
    raise BadField("tool_choice", f"'tool_choice' must be \"auto\" or \"none\"; got {choice!r}."[:300])


# ---------------------------------------------------------------- messages


def check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise BadField("messages", "'messages' must be a non-empty list of {role, content} objects; got "
                                   f"{_kind(messages)}.")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadField(where, f"{where} must be an object with 'role' and 'content'; got {_kind(message)}.")
        role = message.get("role")
        if role not in ROLES:
            raise BadField(f"{where}.role", f"Unknown message role {role!r} in {where}: use system, developer, "
                                            "user, assistant or tool."[:300])
        _check_content(message.get("content"), role, where, bool(message.get("tool_calls")))
        if message.get("name") is not None and not isinstance(message["name"], str):
            raise BadField(f"{where}.name", f"{where}.name must be a string.")
        if role == "tool" and not isinstance(message.get("tool_call_id", ""), str):
            raise BadField(f"{where}.tool_call_id", f"{where}.tool_call_id must be a string (the id of the call "
                                                    "this answers).")
        if message.get("tool_calls") is not None:
            if role != "assistant":
                raise BadField(f"{where}.tool_calls", f"Only assistant messages carry tool_calls ({where} is {role}).")
            _check_calls(message["tool_calls"], where)


def _check_content(content, role: str, where: str, has_calls: bool) -> None:
    if content is None:
        if role == "assistant":
            return  # an assistant turn that only called tools
        raise BadField(f"{where}.content", f"{where}.content is missing: a {role} message needs text.")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise BadField(f"{where}.content", f"{where}.content must be a string or a list of content parts; got "
                                           f"{_kind(content)}.")
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in MEDIA_PARTS:
            raise BadField(at, f"{at} is an '{kind}' part, but the model served here reads text only, so it "
                               "would be ignored. Send text parts only, or serve a vision/audio model elsewhere.",
                           "unsupported_content")
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            continue
        raise BadField(at, f"{at} must be {{\"type\": \"text\", \"text\": \"...\"}}; got {part!r}."[:300])


def _check_calls(calls, where: str) -> None:
    if not isinstance(calls, list):
        raise BadField(f"{where}.tool_calls", f"{where}.tool_calls must be a list of {{id, type: 'function', "
                                              f"function: {{name, arguments}}}}; got {_kind(calls)}.")
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise BadField(at, f"{at} must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                               f"\"arguments\"}}}}; got {call!r}."[:300])
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise BadField(f"{at}.function.name", f"{at}.function.name must be a non-empty string.")
        if not isinstance(function.get("arguments", "{}"), (str, dict)):
            raise BadField(f"{at}.function.arguments", f"{at}.function.arguments must be a JSON string.")
        if call.get("id") is not None and not isinstance(call["id"], str):
            raise BadField(f"{at}.id", f"{at}.id must be a string.")
