"""Continuous batching across adapters: every request, whatever adapter it asked for, decodes in one
shared forward pass per token.

One scheduler thread per engine owns the batch. Each step it
1. admits waiting requests (up to `max_batch` rows): their prompts are prefilled together (left-padded)
   and their KV cache is joined to the running batch's cache, so a new user never waits for the others
   to finish;
2. runs one decode forward for all rows, with PEFT's mixed-adapter batches (`adapter_names=`, one name
   per row, "__base__" for the base), or, when every row asks for the same adapter, with that adapter
   merged into the weights (the engine decides and records which: `Engine.prepare_step`);
3. picks each row's next token with that row's own settings (greedy, or temperature / top-k / top-p
   with the row's own seeded generator), streams the new text, and drops rows that finished: end of
   turn, a stop string, max tokens, or a client that went away (`Request.cancel`).
The engine's lock is held for one step at a time, never for a whole answer, so model and adapter loads
and the Chat tab's other work slot in between steps.

Waiting requests are bounded (`max_queue`): one more is refused with `Overloaded` (HTTP 429). The KV
cache is bounded too (`max_kv_tokens`): a request is admitted only while rows x the longest row's
prompt + max_tokens fits; one that could never fit alone is refused at submit (`CacheBudgetError`, 400).

Fault isolation: a failure belongs to the rows that caused it. A prefill that fails is retried one
request at a time, and only the request that still fails gets the error; a decode forward that fails
is rolled back (the cache cropped to before the step) and the batch bisected until the failing rows
are found, so the others go on; a row whose token pick or text decode fails ends alone. Each failed
request gets its own error event (the API turns it into OpenAI's error shape).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from studio.errors import ConfigError, StudioError

STEP_TIMEOUT_S = 600  # a reader waiting this long for one token means the scheduler thread died
WATCH_S = 1.0  # how often the attached adapters' files are checked (deleted or replaced: detached)
IDLE_EXIT_S = 5.0  # an idle scheduler's thread ends, and the next submit starts another: a thread that ends takes
# its OpenMP pool with it, so two engines in one process (the Chat tab's q8 beside the API's fp32) do not throttle
# each other's decoding while one of them is idle (studio/util.py in_passing_thread says why)


class Overloaded(StudioError):
    """Too many requests are waiting: the client should retry later (HTTP 429)."""


class CacheBudgetError(ConfigError):
    """One request needs more KV cache than the server's whole budget (HTTP 400)."""


class EngineClosed(StudioError):
    """The engine was unloaded (another model took its place) while the request waited or ran."""


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens; each row of a batch keeps its own."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the answer ends before the first of these strings


class Request:
    """One answer being generated: its prompt, adapter and settings, and what it has produced so far.

    Events go to `sink`, a queue shared with other requests where one reader follows several (compare):
    (request, "text", delta), (request, "done", finish_reason), (request, "error", exception).
    """

    def __init__(self, prompt_ids: Sequence[int], adapter: str | None, sampling: Sampling,
                 sink: queue.Queue | None = None):
        self.prompt_ids = list(prompt_ids)
        self.adapter = adapter
        self.sampling = sampling
        self.sink = sink if sink is not None else queue.Queue()
        self.tokens: list[int] = []
        self.text = ""  # the answer so far, stop strings cut off
        self.sent = 0  # characters of `text` already streamed
        self.finish_reason: str | None = None
        self.cancelled = threading.Event()
        self.submitted = time.perf_counter()
        self.first_token_s: float | None = None  # seconds from submit to the first token
        self.finished_s: float | None = None
        self.generator = None  # a torch.Generator, seeded, when sampling
        self.detok: _Detokenizer | None = None  # the answer's text, decoded a few tokens at a time

    def cancel(self) -> None:
        """The reader went away: the row is dropped at the next step."""
        self.cancelled.set()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def stream(self) -> Iterator[str]:
        """Yield the text as it arrives (for a request with its own sink); cancels if the reader stops early."""
        try:
            while True:
                _, kind, payload = self.sink.get(timeout=STEP_TIMEOUT_S)
                if kind == "text":
                    yield payload
                elif kind == "error":
                    raise payload
                else:
                    return
        finally:
            if not self.done:
                self.cancel()


class Scheduler:
    """Continuous batching on one engine (see the module docstring)."""

    def __init__(self, engine, max_batch: int = 8, max_queue: int = 64, max_kv_tokens: int | None = None):
        self.engine = engine
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_kv_tokens = max_kv_tokens  # None: unbounded
        self._waiting: deque[Request] = deque()
        self._cv = threading.Condition()
        self._batch = _Batch(engine)
        self._stopped: BaseException | None = None  # set by stop(): the reason every reader is given
        self._watched = time.monotonic()
        self.steps = 0  # decode forwards run so far
        self.rows_per_step: list[int] = []  # batch size of each decode step (for the bench and tests)
        self.isolated = 0  # failed forwards that were bisected to find their rows (for tests and the soak)
        self._thread: threading.Thread | None = None  # None while idle (IDLE_EXIT_S)
        self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="studio-scheduler", daemon=True)
        self._thread.start()

    def submit(self, requests: Sequence[Request]) -> None:
        """Queue requests (admitted together where there is room); Overloaded when the queue is full."""
        for request in requests:
            self._check_budget(request)
        with self._cv:
            if self._stopped is not None:
                raise EngineClosed(f"This model was unloaded: {self._stopped}", "Send the request again.")
            if len(self._waiting) + len(requests) > self.max_queue:
                raise Overloaded(f"The server is busy: {len(self._waiting)} requests are already waiting "
                                 f"(the limit is {self.max_queue}).",
                                 "Retry in a few seconds, or start the server with a larger --max-queue.")
            self._waiting.extend(requests)
            if self._thread is None:
                self._start()
            self._cv.notify()

    def _check_budget(self, request: Request) -> None:
        need = _kv_need(request)
        if self.max_kv_tokens is not None and need > self.max_kv_tokens:
            raise CacheBudgetError(f"This request needs up to {need:,} tokens of KV cache (prompt + max_tokens), "
                                   f"over the server's whole budget of {self.max_kv_tokens:,} tokens.",
                                   "Ask for fewer max_tokens or send a shorter prompt (or start the server with a "
                                   "larger --max-kv-tokens, if memory allows).")

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._batch.rows)

    def adapters_in_use(self) -> set[str]:
        """The adapters of every running or waiting request (these are never detached to make room)."""
        with self._cv:
            waiting = [r.adapter for r in self._waiting]
        return {a for a in [*waiting, *(r.adapter for r in list(self._batch.rows))] if a is not None}

    def fail_adapter(self, adapter: str, exc: BaseException) -> int:
        """End every running or waiting request for `adapter` with `exc` (it is being detached); returns how
        many. The caller holds the engine's lock, so no step runs meanwhile."""
        with self._cv:
            mine = [r for r in self._waiting if r.adapter == adapter]
            for request in mine:
                self._waiting.remove(request)
        mine += [r for r in self._batch.rows if r.adapter == adapter]
        for request in mine:
            _fail(request, exc)
        self._batch.drop_finished()
        return len(mine)

    def stop(self, reason: BaseException) -> None:
        """End the thread: every waiting and running request gets `reason`; later submits are refused."""
        with self._cv:
            self._stopped = reason
            thread = self._thread
            self._cv.notify()
        if thread is not None and threading.current_thread() is not thread:
            thread.join(30)

    @property
    def alive(self) -> bool:
        """False when the thread died while it had work (an idle thread that ended is not dead)."""
        thread = self._thread
        return thread is None or thread.is_alive()

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            self._watch()  # outside the queue's lock: a detach takes the engine's locks, then the queue's
            with self._cv:
                stopped = self._stopped is not None
                if not stopped and not self._waiting and not self._batch.rows:
                    if time.monotonic() - idle_since >= IDLE_EXIT_S:
                        self._thread = None  # the next submit starts another
                        return
                    self._cv.wait(WATCH_S)
                    continue
                idle_since = time.monotonic()
                admit = [] if stopped else self._admissible()
            if stopped:
                return self._close()
            try:
                with self.engine.lock:  # one step at a time: loads and other users slot in between
                    self._admit(admit)
                    if self._batch.rows:
                        self._step(self._batch)
                        self.steps += 1
                        self.rows_per_step.append(len(self._batch.rows))
                    self._batch.drop_finished()
            except BaseException as exc:  # noqa: BLE001 - last resort (a bug here): the batch's readers get it
                self._batch.fail(list(admit), exc)

    def _watch(self) -> None:
        """Every WATCH_S: detach adapters whose files were deleted or replaced (their requests get why)."""
        if time.monotonic() - self._watched >= WATCH_S:
            self._watched = time.monotonic()
            refresh = getattr(self.engine, "refresh_adapters", None)
            if refresh is not None:
                refresh()

    def _close(self) -> None:
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        for request in waiting:
            _fail(request, self._stopped)
        self._batch.fail([], self._stopped)

    def _admit(self, requests: list[Request]) -> None:
        """Prefill and join `requests`; where that fails, one at a time, so only a failing request ends."""
        try:
            self._batch.admit(requests)
            return
        except Exception as exc:  # noqa: BLE001 - isolated below
            if len(requests) == 1:
                return _fail(requests[0], exc)
        for request in requests:
            _reset(request)
            try:
                self._batch.admit([request])
            except Exception as exc:  # noqa: BLE001 - this request alone fails
                _fail(request, exc)

    def _step(self, batch: _Batch) -> None:
        """One decode step; a failing forward is bisected so that only the rows that fail end."""
        try:
            batch.step()
            return
        except Exception as exc:  # noqa: BLE001 - isolated below
            if len(batch.rows) <= 1:
                return batch.fail([], exc)
        self.isolated += 1
        halves = [batch.subset(part) for part in _halves(len(batch.rows))]
        for half in halves:
            self._step(half)
        batch.absorb(halves)

    def _admissible(self) -> list[Request]:
        room = self.max_batch - len(self._batch.rows)
        if self._batch.rows and not self._batch.joinable():
            room = 0  # a cache that cannot be joined (sliding windows, quantized): wait for the batch to end
        admit: list[Request] = []
        while self._waiting and len(admit) < room:
            request = self._waiting[0]
            if request.cancelled.is_set():
                _finish(self._waiting.popleft(), "cancelled")
                continue
            if not self._fits([*self._batch.rows, *admit, request]):
                break  # the KV budget is full: it waits for rows to finish (first come, first served)
            admit.append(self._waiting.popleft())
        return admit

    def _fits(self, rows: list[Request]) -> bool:
        """Rows x the longest row's prompt + max_tokens: what the left-padded cache can grow to."""
        if self.max_kv_tokens is None or len(rows) <= 1:
            return True
        return len(rows) * max(_kv_need(r) for r in rows) <= self.max_kv_tokens


def _kv_need(request: Request) -> int:
    return len(request.prompt_ids) + request.sampling.max_new_tokens


def _halves(n: int) -> list[list[int]]:
    return [list(range(n // 2)), list(range(n // 2, n))]


def _reset(request: Request) -> None:
    """Forget a failed prefill's token, so a retry starts clean."""
    request.tokens.clear()
    request.first_token_s = None
    request.generator = None
    request.detok, request.text, request.sent = None, "", 0


def _record(request: Request, token: int) -> int:
    request.tokens.append(token)
    if request.first_token_s is None:
        request.first_token_s = time.perf_counter() - request.submitted
    return token


class _Detokenizer:
    """The text of a growing answer, one token at a time, decoding only a short window each step (the tokens
    since the last emitted text, with the ones before them for context such as a leading space), never the
    whole answer again. A token that ends in half a character waits for the next (as transformers' streamers)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # the window starts here (context, already emitted)
        self.read = 0  # ids before this are emitted

    def add(self, token: int, final: bool = False) -> str:
        self.ids.append(token)
        return self._advance(final)

    def flush(self) -> str:
        """What is still held back (half a character at the end of an answer)."""
        return self._advance(True)

    def _advance(self, final: bool) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        now = self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(now) <= len(before) or (now.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before):]


def _fail(request: Request, exc: BaseException) -> None:
    if request.done:
        return
    request.finish_reason = "error"
    request.finished_s = time.perf_counter() - request.submitted
    request.sink.put((request, "error", exc))


def _finish(request: Request, reason: str) -> None:
    if request.done:
        return
    request.finish_reason = reason
    request.finished_s = time.perf_counter() - request.submitted
    request.sink.put((request, "done", reason))


class _Batch:
    """The running rows: their KV cache, attention mask, positions and last tokens (one row per request)."""

    def __init__(self, engine):
        self.engine = engine
        self.rows: list[Request] = []
        self.cache = None  # a transformers Cache for all rows, left-padded to one length
        self.mask = None  # [rows, cache length]: 1 where a row has a real token
        self.positions = None  # [rows]: the position id of each row's next token
        self.last = None  # [rows]: each row's latest token, not yet in the cache

    # ------------------------------------------------ admission

    def joinable(self) -> bool:
        from transformers.cache_utils import DynamicLayer

        layers = getattr(self.cache, "layers", None)
        return layers is not None and all(type(layer) is DynamicLayer for layer in layers)

    def admit(self, requests: list[Request]) -> None:
        """Prefill the new requests together and join them to the running rows."""
        import torch

        if not requests:
            return
        model = self.engine.model
        device = self.engine.device
        width = max(len(r.prompt_ids) for r in requests)
        pad = self.engine.pad_id
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests], device=device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests],
                            device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self.engine.new_cache()
        kwargs = self.engine.prepare_step([r.adapter for r in self.rows + requests], [r.adapter for r in requests])
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                        **{self.engine.cache_arg: cache}, **kwargs)
        for request in requests:
            if request.sampling.temperature > 0:
                request.generator = torch.Generator(device=device)
                if request.sampling.seed is None:
                    request.generator.seed()  # no seed asked for: a fresh random one
                else:
                    request.generator.manual_seed(request.sampling.seed)
        last = torch.tensor(self._pick_rows(requests, out.logits[:, -1], alone=False), device=device)
        self._join(requests, _cache_of(out), mask, mask.sum(-1), last)
        for request in requests:
            self._emit_alone(request)

    def _join(self, requests, cache, mask, positions, last) -> None:
        import torch

        if not self.rows:
            self.rows, self.cache, self.mask, self.positions, self.last = list(requests), cache, mask, positions, last
            return
        old, new = self.mask.shape[1], mask.shape[1]
        width = max(old, new)
        joined = [(torch.cat([_pad_left(mine.keys, width - old), _pad_left(theirs.keys, width - new)]),
                   torch.cat([_pad_left(mine.values, width - old), _pad_left(theirs.values, width - new)]))
                  for mine, theirs in zip(self.cache.layers, cache.layers, strict=True)]  # all built, then set
        for layer, (keys, values) in zip(self.cache.layers, joined, strict=True):
            layer.keys, layer.values = keys, values
        self.mask = torch.cat([_pad_left_2d(self.mask, width - old), _pad_left_2d(mask, width - new)])
        self.positions = torch.cat([self.positions, positions])
        self.last = torch.cat([self.last, last])
        self.rows += requests

    # ------------------------------------------------ decoding

    def step(self) -> None:
        """One forward for every row's latest token; each row picks and streams its next token.

        A forward that raises leaves the batch as it was (the cache cropped back), so it can be retried or
        split; a row whose pick or text fails ends alone.
        """
        import torch

        live = [r for r in self.rows if not r.done]
        if len(live) < len(self.rows):
            self.drop_finished()
        if not self.rows:
            return
        length = self.mask.shape[1]
        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        try:
            kwargs = self.engine.prepare_step([r.adapter for r in self.rows], [r.adapter for r in self.rows])
            logits = self._forward(mask, length, kwargs)
        except Exception:
            self._crop(length)
            raise
        self.mask = mask
        self.positions = self.positions + 1
        self.last = torch.tensor(self._pick_rows(self.rows, logits[:, -1], alone=True), device=self.mask.device)
        for request in self.rows:
            if not request.done:
                self._emit_alone(request)

    def _forward(self, mask, length: int, kwargs: dict):
        """The logits of one decode step, the cache extended: through studio/serving/decode.py's lean step
        where it applies, else the model's own forward."""
        import torch

        from studio.serving import decode

        lean = None if kwargs or not self.joinable() else decode.lean_model(self.engine.model)
        with torch.inference_mode():
            if lean is not None:
                self.engine.lean_steps += 1
                return decode.step(lean, self.cache.layers, self.last, self.positions, mask,
                                   base_only=all(r.adapter is None for r in self.rows))
            out = self.engine.model(input_ids=self.last[:, None], attention_mask=mask,
                                    position_ids=self.positions[:, None], use_cache=True, logits_to_keep=1,
                                    cache_position=torch.tensor([length], device=mask.device),
                                    **{self.engine.cache_arg: self.cache}, **kwargs)
        self.cache = _cache_of(out)
        return out.logits

    def _crop(self, length: int) -> None:
        """Undo a failed forward's writes: every layer's cache back to `length` positions."""
        for layer in getattr(self.cache, "layers", []):
            if getattr(layer, "keys", None) is not None and layer.keys.shape[-2] > length:
                layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]

    def _pick_rows(self, rows: list[Request], logits, alone: bool) -> list[int]:
        """Every row's next token: the greedy rows (no penalty) with one argmax over the batch, the others each
        with its own settings. `alone`: a row whose pick fails ends by itself (else the failure is raised)."""
        logits = logits.float()
        plain = [r.sampling.temperature <= 0 and r.sampling.repetition_penalty == 1.0 for r in rows]
        greedy = logits.argmax(-1).tolist() if any(plain) else []
        picked = []
        for i, request in enumerate(rows):
            if plain[i]:
                picked.append(_record(request, greedy[i]))
            elif alone:
                picked.append(self._pick_alone(request, logits[i]))
            else:
                picked.append(self._pick(request, logits[i]))
        return picked

    def _pick_alone(self, request: Request, logits) -> int:
        try:
            return self._pick(request, logits)
        except Exception as exc:  # noqa: BLE001 - this row alone ends
            _fail(request, exc)
            return self.engine.pad_id

    def _emit_alone(self, request: Request) -> None:
        try:
            self._emit(request)
        except Exception as exc:  # noqa: BLE001 - e.g. a tokenizer that cannot decode: this row alone ends
            _fail(request, exc)

    # ------------------------------------------------ splitting (fault isolation)

    def subset(self, index: list[int]) -> _Batch:
        """A batch of some of the rows, with its own copy of their cache."""
        import copy

        import torch

        part = _Batch(self.engine)
        at = torch.tensor(index, device=self.mask.device)
        part.cache = copy.deepcopy(self.cache)
        for layer in part.cache.layers:
            layer.batch_select_indices(at)
        part.rows = [self.rows[i] for i in index]
        part.mask, part.positions, part.last = self.mask[at], self.positions[at], self.last[at]
        return part

    def absorb(self, parts: list[_Batch]) -> None:
        """Become the join of `parts` (after each stepped, or failed, on its own)."""
        self._clear()
        for part in parts:
            part.drop_finished()
            if part.rows:
                self._join(part.rows, part.cache, part.mask, part.positions, part.last)

    def _pick(self, request: Request, logits) -> int:
        """The row's next token (as transformers' processors would: penalty, temperature, top-k, top-p)."""
        import torch

        s = request.sampling
        if s.repetition_penalty != 1.0:
            seen = torch.tensor(request.prompt_ids + request.tokens, device=logits.device)
            score = logits.gather(0, seen)
            score = torch.where(score < 0, score * s.repetition_penalty, score / s.repetition_penalty)
            logits = logits.scatter(0, seen, score)
        if s.temperature <= 0:
            token = int(logits.argmax())
        else:
            logits = logits / s.temperature
            if 0 < s.top_k < logits.numel():
                logits = logits.masked_fill(logits < torch.topk(logits, s.top_k).values[-1], float("-inf"))
            if s.top_p < 1.0:
                ordered, index = torch.sort(logits)  # ascending, as TopPLogitsWarper
                drop = ordered.softmax(-1).cumsum(-1) <= (1 - s.top_p)
                drop[-1] = False  # keep at least one token
                logits = logits.masked_fill(drop.scatter(0, index, drop), float("-inf"))
            token = int(torch.multinomial(logits.softmax(-1), 1, generator=request.generator))
        return _record(request, token)

    def _emit(self, request: Request) -> None:
        """Stream the new text of `request` and finish it where it ends (the text decoded incrementally)."""
        token = request.tokens[-1]
        if request.cancelled.is_set():
            return _finish(request, "cancelled")
        if request.detok is None:
            request.detok = _Detokenizer(self.engine.tokenizer)
        ended = token in self.engine.stop_ids
        full = ended or len(request.tokens) >= request.sampling.max_new_tokens
        before = len(request.text)
        text = request.text + (request.detok.flush() if ended else request.detok.add(token, final=full))
        stops = request.sampling.stop
        if stops:
            longest = max(len(stop) for stop in stops)
            start = max(0, before - longest + 1)  # a stop string that ends in the new text starts after here
            cut = min((i for i in (text.find(stop, start) for stop in stops if stop) if i >= 0), default=-1)
            if cut >= 0:
                text, ended, full = text[:cut], True, True
        request.text = text
        safe = len(text) if full else _safe_length(text, stops)
        if safe > request.sent:
            request.sink.put((request, "text", text[request.sent:safe]))
            request.sent = safe
        if ended:
            _finish(request, "stop")
        elif full:
            _finish(request, "length")

    # ------------------------------------------------ housekeeping

    def drop_finished(self) -> None:
        """Remove finished rows from the cache, and the padding columns no row needs any more."""
        import torch

        keep = [i for i, r in enumerate(self.rows) if not r.done and not r.cancelled.is_set()]
        for i, request in enumerate(self.rows):
            if i not in keep:
                _finish(request, "cancelled")
        if len(keep) == len(self.rows):
            return
        if not keep:
            return self._clear()
        index = torch.tensor(keep, device=self.mask.device)
        for layer in self.cache.layers:
            layer.batch_select_indices(index)
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        self.rows = [self.rows[i] for i in keep]
        first = int(self.mask.any(0).float().argmax())  # leading columns that are padding in every row
        if first > 0 and self.joinable():
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def fail(self, admitted: list[Request], exc: BaseException) -> None:
        for request in {id(r): r for r in self.rows + admitted}.values():
            _fail(request, exc)
        self._clear()

    def _clear(self) -> None:
        self.rows, self.cache, self.mask, self.positions, self.last = [], None, None, None, None


def _cache_of(out):
    cache = getattr(out, "cache", None)  # transformers >= 5.2x names it `cache`, before `past_key_values`
    return cache if cache is not None else out.past_key_values


def _pad_left(tensor, n: int):
    import torch.nn.functional as F

    return F.pad(tensor, (0, 0, n, 0)) if n else tensor  # [batch, heads, time, dim]: pad time on the left


def _pad_left_2d(tensor, n: int):
    import torch.nn.functional as F

    return F.pad(tensor, (n, 0)) if n else tensor


def _safe_length(text: str, stops: Sequence[str]) -> int:
    """How much of `text` can be shown: not a trailing half character, nor a tail that may start a stop string."""
    end = len(text.rstrip("\ufffd"))
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:k]):
                end = min(end, len(text[:end]) - k)
                break
    return end
