"""OpenAI-compatible routes on the studio's engine: /v1/models, /v1/chat/completions, /v1/completions.

`router(backend)` is mounted under /v1 of the running Gradio app (the Chat tab's engine, one copy of
the base) and served alone by `python -m studio serve`. The `model` of a request picks the base or an
adapter, hot-swapped on the one loaded base; requests for different adapters decode in the same
batch (studio/serving/scheduler.py). Every field is checked before any work (studio/serving/validate.py).
Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with its HTTP statuses: 400
bad parameters or a prompt over the context or the KV budget, 401 a missing or wrong key, 404 an unknown
model, 409 an adapter changed while answering, 413 a body too large, 429 a full queue, 503 the model
unloaded; `guarded` answers anything else in the same shape (500), never as a plain-text page. Each
request's events reach its route through an asyncio queue fed by the scheduler thread (`AsyncSink`).

Auth: when STUDIO_API_KEYS="alice=key1,bob=key2" (or plain "key1,key2") is set, every request needs
`Authorization: Bearer <key>`. In hosted mode (studio.hosted) a key is always required: without
STUDIO_API_KEYS the API is closed; each key acts as its user (studio.policy: what it may see, and
STUDIO_RATE_LIMIT requests per minute, 429 beyond).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError

from studio.errors import AdapterError, ConfigError, StudioError

BASE_ALIASES = ("base", "(base)")  # always accepted as the base's id, besides the listed one
MAX_STOPS = 4  # as OpenAI
DEFAULT_CHAT_TOKENS = 512  # max_tokens when a chat request gives none (capped by the context)
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
POLL_S = 0.25  # how often a waiting reader checks that its client is still connected
TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)  # Hermes/Qwen-style tool calls
BARE_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)  # a bare JSON call some models fence


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _from_studio(exc: Exception) -> ApiError:
    from studio.inference import AdapterChanged, ContextError
    from studio.serving.scheduler import CacheBudgetError, EngineClosed, Overloaded

    if not isinstance(exc, StudioError):  # a failure inside generation: say what it was, in OpenAI's shape
        return ApiError(500, f"Generation failed: {type(exc).__name__}: {exc}. Retry; if it persists, check the "
                             "server log.", "server_error", None)

    text = f"{exc.message} {exc.fix}".strip()
    if isinstance(exc, Overloaded):
        return ApiError(429, text, "rate_limit_error", "queue_full")
    if isinstance(exc, AdapterChanged):
        return ApiError(409, text, "invalid_request_error", "adapter_changed", "model")
    if isinstance(exc, EngineClosed):
        return ApiError(503, text, "server_error", "model_unloaded", "model")
    if isinstance(exc, CacheBudgetError):
        return ApiError(400, text, "invalid_request_error", "kv_cache_budget_exceeded", "max_tokens")
    if isinstance(exc, ContextError):
        return ApiError(400, text, "invalid_request_error", "context_length_exceeded", "messages")
    if isinstance(exc, (ConfigError, AdapterError)):
        return ApiError(400, text, "invalid_request_error", None)
    return ApiError(500, text, "server_error", None)


@dataclass
class Backend:
    """Where the routes find their engine, and the adapters given by path on the command line."""

    engine_factory: object  # () -> Engine: the loaded engine (loaded on first call where needed)
    extra_adapters: dict[str, Path] = field(default_factory=dict)  # name -> folder (serve --adapters name=path)
    chosen_in: str = "--model"  # where the served base was chosen, for the message refusing another base

    def engine(self):
        return self.engine_factory()

    def base_id(self, engine) -> str:
        from studio.serving.snippets import model_id

        return model_id(engine.ref)

    def model_ids(self, engine) -> list[str]:
        from studio.adapters import adapter_names

        extra = [name for name, folder in self.extra_adapters.items() if Path(folder).is_dir()]
        return list(dict.fromkeys([self.base_id(engine), *extra, *adapter_names()]))  # the registry, as it is now

    def resolve(self, engine, model: str) -> str | None:
        """The adapter a `model` id asks for (None: the base), attached on first use; 404 if unknown."""
        if model in (self.base_id(engine), engine.ref, *BASE_ALIASES):
            return None
        if model in self.extra_adapters and Path(self.extra_adapters[model]).is_dir():
            engine.load_adapter(model, self.extra_adapters[model])
            return model
        if model in self.model_ids(engine):
            engine.load_adapter(model)
            return model
        raise ApiError(404, f"The model '{model}' does not exist here. Available: "
                            f"{', '.join(self.model_ids(engine))} (see GET /v1/models). This server serves one "
                            f"base, {self.base_id(engine)} (chosen in {self.chosen_in}), and its adapters; "
                            f"for another base, choose it in {self.chosen_in}.",
                       "invalid_request_error", "model_not_found", "model")


# ---------------------------------------------------------------- auth


def key_users() -> dict[str, str | None]:
    """key -> user from STUDIO_API_KEYS: "alice=key1,bob=key2" names each key's user; a plain "key1" has none
    (on a hosted studio it uses the published adapters only, like a visitor)."""
    pairs: dict[str, str | None] = {}
    for item in (i.strip() for i in os.environ.get("STUDIO_API_KEYS", "").split(",")):
        user, _, key = item.partition("=")
        named = re.fullmatch(r"[A-Za-z0-9._-]+", user) and key.strip("=")  # base64 padding ("abc==") is a plain key
        if item:
            pairs[key.strip() if named else item] = user if named else None
    return pairs


def api_keys() -> list[str]:
    return list(key_users())


def check_auth(request: HttpRequest) -> None:
    """The key is valid; its user becomes the caller that studio.policy sees; hosted: within the rate limit.
    A key never appears in an error or a log line."""
    from studio import policy

    keys = key_users()
    if not keys and not policy.hosted():
        return
    if not keys:
        raise ApiError(401, "This hosted studio's API needs a key, and none is set up. The owner sets the secret "
                            "STUDIO_API_KEYS='alice=key1,bob=key2'; callers send 'Authorization: Bearer <key>'.",
                       "invalid_request_error", "invalid_api_key")
    given = request.headers.get("authorization", "")
    token = given[7:].strip() if given.lower().startswith("bearer ") else ""
    match = [key for key in keys if hmac.compare_digest(token.encode(), key.encode())]
    if not match:
        what = "No API key was sent" if not token else "The API key is not valid"
        raise ApiError(401, f"{what}. Send 'Authorization: Bearer <key>' with one of the keys in STUDIO_API_KEYS "
                            "(the openai client: api_key=...).", "invalid_request_error", "invalid_api_key")
    user = keys[match[0]]
    caller = policy.for_user(user, f"key:{user}" if user else f"key#{api_keys().index(match[0])}")
    policy.set_api_caller(caller)
    try:
        policy.rate_limit(caller)
    except policy.RateLimited as exc:
        raise ApiError(429, f"{exc.message} {exc.fix}", "rate_limit_error", "rate_limit_exceeded") from exc


# ---------------------------------------------------------------- request parsing


@dataclass
class Parsed:
    model: str
    stream: bool
    sampling: object  # studio.serving.scheduler.Sampling
    include_usage: bool
    tools: list | None


def _number(body: dict, name: str, default, low, high, kind=float):
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a number between {low} and {high}; got {value!r}.",
                       "invalid_request_error", "invalid_value", name)
    return kind(value)


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"'stop' must be a string or a list of up to {MAX_STOPS} non-empty strings.",
                       "invalid_request_error", "invalid_value", "stop")
    return tuple(stops)


def parse_common(body: dict, default_tokens: int) -> Parsed:
    from studio.serving.scheduler import Sampling

    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _number({"max_tokens": tokens}, "max_tokens", default_tokens, 1, 1_000_000, int)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"'seed' must be an integer; got {seed!r}.", "invalid_request_error", "invalid_value",
                       "seed")
    sampling = Sampling(max_new_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                        top_p=_number(body, "top_p", 1.0, 1e-6, 1.0), seed=seed, stop=_stops(body),
                        top_k=max(0, int(body.get("top_k") or 0)),
                        repetition_penalty=float(body.get("repetition_penalty") or 1.0))
    options = body.get("stream_options") or {}
    return Parsed(body["model"], bool(body.get("stream")), sampling, bool(options.get("include_usage")), None)


def chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects.",
                       "invalid_request_error", "invalid_value", "messages")
    out = []
    for m in messages:
        role = {"developer": "system", "function": "tool"}.get(m["role"], m["role"])  # checked by validate
        row = {"role": role, "content": _text(m.get("content"))}
        if m.get("tool_calls"):
            row["tool_calls"] = [_template_call(c) for c in m["tool_calls"]]
        for key in ("tool_call_id", "name"):
            if m.get(key):
                row[key] = m[key]
        out.append(row)
    return out


def _text(content) -> str:
    if isinstance(content, list):  # content parts: only text parts are understood
        return "".join(p.get(p.get("type"), "") for p in content if isinstance(p, dict)
                       and p.get("type") in ("text", "refusal"))  # anything else was refused by validate
    return "" if content is None else str(content)


def _template_call(call: dict) -> dict:
    """An OpenAI tool call as chat templates expect it (arguments as a dict)."""
    function = dict(call.get("function") or {})
    if isinstance(function.get("arguments", "{}"), str):
        try:
            function["arguments"] = json.loads(function.get("arguments") or "{}")
        except ValueError:
            pass  # not JSON: the template gets the text as it came
    return {"type": "function", "id": call.get("id"), "function": function}


def chat_tools(body: dict) -> list | None:
    tools, choice = body.get("tools"), body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function" for t in tools):
        raise ApiError(400, "'tools' must be a list of {type: 'function', function: {name, description, "
                            "parameters}} objects.", "invalid_request_error", "invalid_value", "tools")
    return tools


def parse_tool_calls(text: str, names: set[str] | None = None) -> tuple[str | None, list[dict]]:
    """Tool calls the model wrote, and the rest of the text.

    Two forms: <tool_call>{"name": ..., "arguments": {...}}</tool_call> (Hermes/Qwen), and, as llama.cpp and
    Ollama accept, an answer that is nothing but a JSON object (or a list of them, or one in a ```json fence)
    naming one of the given tools (`names`): Qwen2.5's base instruct model answers that way.
    """
    calls = [c for match in TOOL_CALL.finditer(text) if (c := _call(_json(match.group(1)), None))]
    if calls:
        rest = TOOL_CALL.sub("", text).strip()
        return rest or None, calls
    if names:
        data = _json(BARE_FENCE.sub(r"\1", text.strip()))
        found = [_call(item, names) for item in (data if isinstance(data, list) else [data])]
        if found and all(found):
            return None, found
    return text, []


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _call(data, names: set[str] | None) -> dict | None:
    """An OpenAI tool call from {"name": ..., "arguments"/"parameters": ...}; None if it is not one (or, with
    `names`, names no given tool)."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    if names is not None and (data["name"] not in names or set(data) - {"name", "arguments", "parameters"}):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": data["name"],
                         "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}}


# ---------------------------------------------------------------- running a request


class AsyncSink:
    """A request's events delivered into an asyncio queue on the server's loop: the scheduler thread puts,
    the route awaits (no thread-pool poll per event). `pieces` False (an answer sent whole): the text events
    are dropped, the request keeps its text, and the loop wakes once, at the end, instead of at every token
    (each wake-up takes the GIL from the decoding thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pieces: bool = True):
        self.loop, self.queue, self.pieces = loop, asyncio.Queue(), pieces

    def put(self, item) -> None:  # called by the scheduler thread
        if not self.pieces and item[1] == "text":
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            pass  # the loop has closed: the server is shutting down and nobody reads any more


async def _submit(engine, ids: list[int], adapter: str | None, sampling, pieces: bool = True):
    sink = AsyncSink(asyncio.get_running_loop(), pieces)
    try:
        return await asyncio.to_thread(engine.submit, ids, adapter, sampling, sink)
    except StudioError as exc:
        raise _from_studio(exc) from exc


async def _events(request, http: HttpRequest):
    """The request's events as they come; cancels it when the client disconnects."""
    checked = time.monotonic()
    try:
        while True:
            try:
                _, kind, payload = await asyncio.wait_for(request.sink.queue.get(), POLL_S)
            except TimeoutError:
                kind = payload = None
            if time.monotonic() - checked >= POLL_S:  # by the clock: a busy stream never leaves the queue empty
                checked = time.monotonic()
                if await http.is_disconnected():
                    return
            if kind is None:
                continue
            if kind == "error":
                raise payload
            yield kind, payload
            if kind == "done":
                return
    finally:
        if not request.done:
            request.cancel()


def _usage(request) -> dict:
    prompt, completion = len(request.prompt_ids), len(request.tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _prepare(backend: Backend, body: dict, chat: bool):
    """Runs in a worker thread: the engine (loaded where needed), the adapter, and the prompt ids."""
    from studio.inference import MAX_PROMPT_CHARS, encode_chat, with_adapter_system

    parsed = parse_common(body, DEFAULT_CHAT_TOKENS if chat else DEFAULT_COMPLETION_TOKENS)
    engine = backend.engine()
    adapter = backend.resolve(engine, parsed.model)
    if chat:
        messages = chat_messages(body)
        parsed.tools = chat_tools(body)
        messages = with_adapter_system(messages, adapter)  # start the way training did (the dataset's choice)
        if sum(len(m["content"]) for m in messages) > MAX_PROMPT_CHARS:
            raise ApiError(400, f"The messages are over {MAX_PROMPT_CHARS:,} characters.", "invalid_request_error",
                           "context_length_exceeded", "messages")
        try:
            ids = encode_chat(engine.tokenizer, messages, parsed.tools)[0].tolist()
        except (TemplateError, TypeError, ValueError) as exc:  # e.g. a template that insists on alternating turns
            raise ApiError(400, f"The model's chat template refused these messages: {exc}. Fix the order or roles "
                                "of the messages.", "invalid_request_error", "invalid_value", "messages") from exc
    else:
        prompt = body.get("prompt")
        prompt = prompt[0] if isinstance(prompt, list) and len(prompt) == 1 else prompt
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' must be a non-empty string.", "invalid_request_error", "invalid_value",
                           "prompt")
        ids = engine.tokenizer(prompt)["input_ids"]
    if "max_tokens" not in body and "max_completion_tokens" not in body:  # default: what fits in the context
        room = engine.context_length() - len(ids)
        parsed.sampling = _replace(parsed.sampling, max_new_tokens=max(1, min(parsed.sampling.max_new_tokens, room)))
    return engine, adapter, ids, parsed


def _replace(sampling, **changes):
    from dataclasses import replace

    return replace(sampling, **changes)


async def _body(http: HttpRequest, chat: bool) -> dict:
    """The request's JSON object, every field checked (studio.serving.validate); ApiError 400/413 if not."""
    from studio.serving.validate import MAX_BODY_BYTES, BadField, check_chat, check_completion

    raw = await http.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"The request body is {len(raw):,} bytes, over the {MAX_BODY_BYTES:,} limit. Shorten "
                            "the conversation.", "invalid_request_error", "request_too_large")
    try:
        body = json.loads(raw)
    except ValueError:  # also a body that is not UTF-8
        raise ApiError(400, "The request body is not valid JSON. Send a JSON object with "
                            "'Content-Type: application/json'.", "invalid_request_error", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object, e.g. {\"model\": ..., \"messages\": [...]}.",
                       "invalid_request_error", "invalid_json")
    try:
        (check_chat if chat else check_completion)(body)
    except BadField as exc:
        raise ApiError(400, exc.message, "invalid_request_error", exc.code, exc.param) from None
    return body


async def _run(backend: Backend, http: HttpRequest, chat: bool):
    check_auth(http)
    body = await _body(http, chat)
    try:
        engine, adapter, ids, parsed = await asyncio.to_thread(_prepare, backend, body, chat)
    except StudioError as exc:
        raise _from_studio(exc) from exc
    request = await _submit(engine, ids, adapter, parsed.sampling, pieces=parsed.stream)
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": parsed.model}
    if parsed.stream:
        stream = _stream_chat if chat else _stream_completion
        return StreamingResponse(stream(request, http, head, parsed), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        async for _ in _events(request, http):
            pass
    except Exception as exc:  # noqa: BLE001 - every failure reaches the client in OpenAI's shape
        return _from_studio(exc).response()
    return JSONResponse(_chat_body(request, head, parsed) if chat else _completion_body(request, head))


async def guarded(work) -> JSONResponse:
    """Run a route's body: any failure becomes OpenAI's error shape (never a plain-text 500)."""
    try:
        return await work()
    except ApiError as exc:
        return exc.response()
    except StudioError as exc:
        return _from_studio(exc).response()
    except Exception as exc:  # noqa: BLE001 - the catch-all: a bug is still answered in OpenAI's shape
        import traceback

        traceback.print_exc()
        return _from_studio(exc).response()


def _chat_body(request, head: dict, parsed: Parsed) -> dict:
    names = {t["function"]["name"] for t in parsed.tools or []}
    content, calls = parse_tool_calls(request.text, names) if parsed.tools else (request.text, [])
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    reason = "tool_calls" if calls else request.finish_reason
    return {**head, "object": "chat.completion", "usage": _usage(request),
            "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}]}


def _completion_body(request, head: dict) -> dict:
    return {**head, "object": "text_completion", "usage": _usage(request),
            "choices": [{"index": 0, "text": request.text, "finish_reason": request.finish_reason,
                         "logprobs": None}]}


async def _stream_chat(request, http: HttpRequest, head: dict, parsed: Parsed):
    chunk = {**head, "object": "chat.completion.chunk"}

    def delta(d: dict, reason=None) -> str:
        return _sse({**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}]})

    yield delta({"role": "assistant", "content": ""})
    try:
        async for kind, payload in _events(request, http):
            if kind == "text" and not parsed.tools:  # with tools, the answer is parsed whole at the end
                yield delta({"content": payload})
    except Exception as exc:  # noqa: BLE001 - headers are sent: the error goes in the stream
        yield _sse(_from_studio(exc).body())
        return
    if request.finish_reason == "cancelled":
        return
    body = _chat_body(request, head, parsed)
    message, reason = body["choices"][0]["message"], body["choices"][0]["finish_reason"]
    if parsed.tools and message.get("content"):
        yield delta({"content": message["content"]})
    if message.get("tool_calls"):
        yield delta({"tool_calls": [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]})
    yield delta({}, reason)
    if parsed.include_usage:
        yield _sse({**chunk, "choices": [], "usage": _usage(request)})
    yield _sse("[DONE]")


async def _stream_completion(request, http: HttpRequest, head: dict, parsed: Parsed):
    chunk = {**head, "object": "text_completion"}

    def piece(text: str, reason=None) -> str:
        return _sse({**chunk, "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}]})

    try:
        async for kind, payload in _events(request, http):
            if kind == "text":
                yield piece(payload)
    except Exception as exc:  # noqa: BLE001 - headers are sent: the error goes in the stream
        yield _sse(_from_studio(exc).body())
        return
    if request.finish_reason == "cancelled":
        return
    yield piece("", request.finish_reason)
    if parsed.include_usage:
        yield _sse({**chunk, "choices": [], "usage": _usage(request)})
    yield _sse("[DONE]")


# ---------------------------------------------------------------- routes


async def _models(backend: Backend, http: HttpRequest) -> JSONResponse:
    check_auth(http)
    engine = await asyncio.to_thread(backend.engine)
    created = int(time.time())
    ids = await asyncio.to_thread(backend.model_ids, engine)
    data = [{"id": name, "object": "model", "created": created, "owned_by": "studio",
             "root": backend.base_id(engine), "parent": None if i == 0 else backend.base_id(engine)}
            for i, name in enumerate(ids)]
    return JSONResponse({"object": "list", "data": data})


def router(backend: Backend) -> APIRouter:
    """The /v1 routes (mount with prefix="/v1")."""
    api = APIRouter()

    @api.get("/models")
    async def models(http: HttpRequest):
        return await guarded(lambda: _models(backend, http))

    @api.post("/chat/completions")
    async def chat_completions(http: HttpRequest):
        return await guarded(lambda: _run(backend, http, chat=True))

    @api.post("/completions")
    async def completions(http: HttpRequest):
        return await guarded(lambda: _run(backend, http, chat=False))

    return api
