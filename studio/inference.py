"""Streamed chat generation: one loaded base model, many named LoRA adapters swapped in milliseconds.

- `stream_chat(model, tokenizer, messages, settings)`: stream one answer from any model.
- `Engine(ref, quant)`: loads a base once (the shared loader), attaches any number of adapters
  with PEFT `load_adapter`, switches with `set_adapter`, answers as the base with adapters
  disabled, and compares two of them side by side in one batched pass (PEFT mixed-adapter
  batches). Every generation runs under the engine's lock, so a request never sees another
  request's adapter. `get_engine(ref, quant)` shares engines within a process.
- Merged decoding: on a 16/32-bit base, the adapter answering alone is merged into the weights while
  it stays active, so it decodes as fast as a merged export; the merged weights live in separate
  buffers and the base tensors are swapped back on any change, so the base is restored bit for bit.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from studio.errors import AdapterError, ConfigError

MAX_PROMPT_CHARS = 32_000  # longer prompts are refused: they would only be truncated by the context


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy: same prompt, same answer
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.1
    seed: int = 0

    def validate(self) -> None:
        checks = [
            ("max_new_tokens", 1 <= self.max_new_tokens <= 4096, "between 1 and 4096"),
            ("temperature", 0.0 <= self.temperature <= 5.0, "between 0 and 5 (0 = greedy)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "above 0 and at most 1"),
            ("top_k", 0 <= self.top_k <= 10_000, "between 0 and 10000"),
            ("repetition_penalty", 0.5 <= self.repetition_penalty <= 3.0, "between 0.5 and 3"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"Generation setting {name}={getattr(self, name)!r} is out of range.",
                                  f"Set {name} {allowed}.")


def check_messages(messages: list[dict]) -> None:
    if not messages or not str(messages[-1].get("content", "")).strip():
        raise ConfigError("The prompt is empty.", "Type a question or instruction first.")
    total = sum(len(str(m.get("content", ""))) for m in messages)
    if total > MAX_PROMPT_CHARS:
        raise ConfigError(f"The conversation is {total:,} characters long, over the {MAX_PROMPT_CHARS:,} limit.",
                          "Shorten the prompt or clear the chat history.")


def encode_chat(tokenizer, messages: list[dict]):
    """Token ids (1 x T tensor) of a conversation ready for the assistant's next turn."""
    import torch

    from studio import templates

    return torch.tensor([templates.encode(tokenizer, messages, add_generation_prompt=True)])


def generate_kwargs(tokenizer, settings: GenerationSettings) -> dict:
    kwargs = {"max_new_tokens": settings.max_new_tokens, "repetition_penalty": settings.repetition_penalty,
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": _stop_ids(tokenizer)}
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def _stop_ids(tokenizer) -> list[int]:
    """Every end-of-turn id and EOS (studio.templates): answers stop by themselves."""
    from studio import templates

    return templates.current(tokenizer).stop_ids


def stream_chat(model, tokenizer, messages: list[dict], settings: GenerationSettings = GenerationSettings()
                ) -> Iterator[str]:
    """Yield the answer piece by piece as the model writes it."""
    import torch
    from transformers import TextIteratorStreamer

    settings.validate()
    check_messages(messages)
    input_ids = encode_chat(tokenizer, messages).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            torch.manual_seed(settings.seed)
            with torch.inference_mode():
                model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                               **generate_kwargs(tokenizer, settings))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- one base, many adapters

BASE_LABEL = "(base)"  # how the UI and CLI name "no adapter" (adapter=None); no adapter name has "("
STREAM_TIMEOUT_S = 600  # a generation step slower than this means the worker thread died
MAX_ENGINES = 2  # engines (each a loaded base) kept per process; older ones are dropped


class _RowsStreamer:
    """A `generate` streamer for a batch of rows: yields a tuple of each row's text so far.

    (transformers' TextIteratorStreamer only takes batch size 1.) The first `put` is the prompt.
    """

    def __init__(self, tokenizer, rows: int):
        self.tokenizer = tokenizer
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.done = [False] * rows
        self.queue: queue.Queue = queue.Queue()
        self.seen_prompt = False
        self.ended = False
        self.eos = set(_stop_ids(tokenizer))

    def put(self, value) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for row, token in enumerate(value.view(-1).tolist()):
            if self.done[row]:
                continue
            if token in self.eos:
                self.done[row] = True  # after eos, generate pads a finished row: nothing more to show
            else:
                self.tokens[row].append(token)
        # A trailing U+FFFD is half of a multi-byte character: show it once the rest arrives.
        self.queue.put(tuple(self.text(row).rstrip("\ufffd") for row in range(len(self.tokens))))

    def text(self, row: int) -> str:
        return self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.queue.put(None)

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        while (item := self.queue.get(timeout=STREAM_TIMEOUT_S)) is not None:
            yield item
        yield tuple(self.text(row) for row in range(len(self.tokens)))  # complete, nothing held back


def _cancel_criteria(event: threading.Event):
    """Stop generating as soon as the reader goes away (a closed tab, a Stop button)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Cancelled()])


class Engine:
    """One loaded base model and the named LoRA adapters attached to it."""

    def __init__(self, ref: str = "bundled", quant: str = "fp32", device: str | None = None,
                 progress: Callable[[float, str], None] | None = None):
        import peft  # noqa: F401 - imported now, so adapter load times measure loading, not the import

        from studio.models import load_model

        self.loaded = load_model(ref, quant, device, progress=progress or (lambda f, m: None))
        self.ref, self.quant = ref, quant
        self.tokenizer = self.loaded.tokenizer
        self.model = self.loaded.model  # becomes a PeftModel when the first adapter is attached
        self.lock = threading.RLock()  # held for set_adapter + generate, and by `use`
        self._peft_names: dict[str, str] = {}  # registry name or path -> PEFT adapter name
        self.load_ms: dict[str, float] = {}
        self.swap_ms: list[float] = []  # every set_adapter call, in milliseconds
        self.fold_ms: list[float] = []  # every merge of an adapter into the weights, in milliseconds
        self._folded: str | None = None  # the PEFT adapter merged into the base weights, if any
        self._originals: list = []  # (LoRA layer, its own base weight tensor) while an adapter is merged
        self._merged_weights: dict = {}  # LoRA layer -> the tensor that holds its merged weight
        self._loads = 0  # adapters attached so far: numbers each PEFT name once

    # ------------------------------------------------ adapters

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters attached to this base, in load order."""
        return list(self._peft_names)

    def load_adapter(self, name: str, path: str | Path | None = None) -> float:
        """Attach an adapter (a registry name, or any name with `path`); returns the load time in ms.

        The adapter is checked against this base first (safetensors only, shapes, target layers), so a
        refused adapter leaves the loaded model untouched. Loading an attached name again costs 0 ms.
        """
        from studio.adapters import validate_adapter

        with self.lock:  # check and attach together: two requests for one new adapter attach it once
            if name in self._peft_names:
                return 0.0
            folder = Path(path) if path is not None else self._locate(name)
            warning = validate_adapter(folder, self.loaded)
            if warning:
                print(warning, file=sys.stderr, flush=True)  # a different base name with the same shapes
            start = time.perf_counter()
            self._loads += 1
            peft_name = f"adapter_{self._loads}"  # PEFT names become module keys: no '.' or ':'
            self._attach(folder, peft_name)
            elapsed = (time.perf_counter() - start) * 1000
            self._peft_names[name] = peft_name
            self.load_ms[name] = elapsed
        return elapsed

    def _locate(self, name: str) -> Path:
        if Path(name).is_dir():
            return Path(name)
        from studio.adapters import get_adapter

        return get_adapter(name).path

    def _attach(self, folder: Path, peft_name: str) -> None:
        from peft import PeftModel

        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(folder), adapter_name=peft_name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=peft_name,
                                                       is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            if isinstance(self.model, PeftModel) and peft_name in self.model.peft_config:
                self.model.delete_adapter(peft_name)
            raise AdapterError(f"PEFT could not load the adapter in {folder}: {exc}",
                               "Check that it was saved by PEFT for this base model.") from exc
        self.model.eval()

    def unload_adapter(self, name: str) -> None:
        """Detach an adapter (e.g. after it was deleted from disk)."""
        with self.lock:
            peft_name = self._peft_names.pop(name, None)
            if peft_name is not None:
                self._unfold()
                self.model.delete_adapter(peft_name)
                self.load_ms.pop(name, None)
            if peft_name is not None and not self._peft_names:
                self.model = self.model.unload()  # a PeftModel without adapters cannot generate: unwrap
                self._merged_weights.clear()

    def _peft_name(self, adapter: str) -> str:
        if adapter not in self._peft_names:
            self.load_adapter(adapter)
        return self._peft_names[adapter]

    @contextmanager
    def use(self, adapter: str | None):
        """Hold the lock with `adapter` active (None: the base, adapters disabled) while the body runs.

        The adapter is merged into the weights where that is exact and fits (`_fold`).
        """
        with self.lock:
            if adapter is None:
                self._unfold()
            if adapter is None:
                if self._peft_names:
                    with self.model.disable_adapter():
                        yield self.model
                else:
                    yield self.model
                return
            peft_name = self._peft_name(adapter)
            if self._folded != peft_name:
                self._unfold()  # PEFT would unmerge by subtraction, which drifts: put the base tensors back
                start = time.perf_counter()
                self.model.set_adapter(peft_name, inference_mode=True)
                self.swap_ms.append((time.perf_counter() - start) * 1000)
                self._fold(peft_name)
            yield self.model  # (already active and merged: no swap at all)

    # ------------------------------------------------ merged decoding

    def _fold(self, peft_name: str) -> None:
        """Merge `peft_name` into the base weights: each touched weight is swapped for a tensor W + BA.

        An unmerged LoRA adds two small matmuls to every projection of every token: on a CPU that is
        10-20% slower decoding than a merged model. The merged weights go to buffers kept for the next
        fold; the original tensors are never written to, so `_unfold` puts them back exactly.
        Not merged: quantized bases (it would round the adapter into 4/8-bit codes), LoRA variants such
        as DoRA, and weights that would not fit in a quarter of the free memory.
        """
        import torch
        from peft.tuners.lora import LoraLayer

        if self.quant in ("4bit", "8bit"):
            return
        layers = [m for m in self.model.modules() if isinstance(m, LoraLayer) and peft_name in m.lora_A]
        if any(peft_name in m.lora_variant or m.lora_bias[peft_name] for m in layers):
            return
        weights = [m.get_base_layer().weight for m in layers]
        if sum(w.numel() * w.element_size() for w in weights) > _free_bytes(self.model.device) / 4:
            return
        start = time.perf_counter()
        self._folded = peft_name
        for layer, weight in zip(layers, weights, strict=True):
            merged = self._merged_weights.get(layer)  # reused: fresh memory would page-fault on every swap
            if merged is None:
                merged = self._merged_weights[layer] = torch.empty_like(weight.data)
            torch.add(weight.data, layer.get_delta_weight(peft_name).to(weight.dtype), out=merged)
            self._originals.append((layer, weight.data))
            weight.data = merged
            layer.merged_adapters.append(peft_name)  # PEFT's forward now runs the base layer alone
        self.fold_ms.append((time.perf_counter() - start) * 1000)

    def _unfold(self) -> None:
        """Put back the base weights `_fold` replaced: the same tensors, never written to."""
        for layer, original in self._originals:
            layer.get_base_layer().weight.data = original
            layer.merged_adapters.clear()
        self._originals, self._folded = [], None

    def stats(self) -> dict:
        swaps = self.swap_ms
        return {"ref": self.ref, "quant": self.quant, "adapters": self.adapters,
                "load_ms": {k: round(v, 1) for k, v in self.load_ms.items()},
                "last_swap_ms": round(swaps[-1], 3) if swaps else None,
                "mean_swap_ms": round(sum(swaps) / len(swaps), 3) if swaps else None, "swaps": len(swaps),
                "mean_fold_ms": round(sum(self.fold_ms) / len(self.fold_ms), 1) if self.fold_ms else None,
                "folded": next((k for k, v in self._peft_names.items() if v == self._folded), None)}

    # ------------------------------------------------ generation

    def answer(self, messages: list[dict], settings: GenerationSettings = GenerationSettings(),
               adapter: str | None = None, stats: dict | None = None) -> Iterator[str]:
        """Stream the answer of the base (adapter None) or of one adapter, piece by piece.

        `stats`, when given, is filled with tokens, seconds, tokens_per_s and swap_ms at the end.
        """
        settings.validate()
        check_messages(messages)
        if adapter is not None:
            self._peft_name(adapter)  # load (and validate) before anything is generated
        input_ids = encode_chat(self.tokenizer, messages)

        def work(streamer, cancel, record) -> None:
            record["prompt_tokens"] = int(input_ids.shape[1])
            swaps, folds = len(self.swap_ms), len(self.fold_ms)
            with self.use(adapter):
                record["adapter"] = adapter
                record["swap_ms"] = self.swap_ms[-1] if len(self.swap_ms) > swaps else 0.0
                record["merge_ms"] = self.fold_ms[-1] if len(self.fold_ms) > folds else 0.0
                self._generate(input_ids, settings, streamer, cancel)

        shown = ""
        for (text,) in self._stream(work, 1, stats):
            if text.startswith(shown) and len(text) > len(shown):
                yield text[len(shown):]
                shown = text

    def compare(self, messages: list[dict], settings: GenerationSettings = GenerationSettings(),
                left: str | None = None, right: str | None = None,
                stats: dict | None = None) -> Iterator[tuple[str, str]]:
        """Stream two answers to the same prompt at the same time: (left text so far, right text so far).

        Both rows run in one batched `generate` with PEFT mixed adapters ("__base__" = adapters off),
        so they share the prompt, the seed and every step.
        """
        settings.validate()
        check_messages(messages)
        names = [self._peft_name(a) if a is not None else "__base__" for a in (left, right)]
        input_ids = encode_chat(self.tokenizer, messages).repeat(2, 1)

        def work(streamer, cancel, record) -> None:
            with self.lock:
                self._unfold()  # the mixed batch runs every adapter unmerged, row by row
                extra = {"adapter_names": names} if self._peft_names else {}
                self._generate(input_ids, settings, streamer, cancel, **extra)

        yield from self._stream(work, 2, stats)

    def _generate(self, input_ids, settings: GenerationSettings, streamer, cancel, **extra) -> None:
        import torch

        input_ids = input_ids.to(self.model.device)
        torch.manual_seed(settings.seed)
        with torch.inference_mode():
            self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                                stopping_criteria=_cancel_criteria(cancel),
                                **generate_kwargs(self.tokenizer, settings), **extra)

    def _stream(self, work, rows: int, stats: dict | None) -> Iterator[tuple[str, ...]]:
        """Run `work` in a thread and yield what its streamer produces; stop it if the reader leaves."""
        streamer = _RowsStreamer(self.tokenizer, rows)
        cancel = threading.Event()
        record: dict = {}
        errors: list[BaseException] = []

        def run() -> None:
            try:
                work(streamer, cancel, record)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the reader's thread below
                errors.append(exc)
            finally:
                streamer.end()

        start = time.perf_counter()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            cancel.set()
        thread.join()
        if errors:
            raise errors[0]
        if stats is not None:
            seconds = time.perf_counter() - start
            tokens = sum(len(t) for t in streamer.tokens)
            stats.update(record, tokens=tokens, seconds=round(seconds, 3),
                         tokens_per_s=round(tokens / seconds, 1) if seconds else None)


def _free_bytes(device) -> int:
    import psutil
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


_engines: dict[tuple[str, str], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(ref: str = "bundled", quant: str = "fp32", progress=None) -> Engine:
    """The process-wide engine for (ref, quant), loaded on first use (at most MAX_ENGINES kept)."""
    key = (ref, quant)
    with _engines_lock:
        if key not in _engines:
            if len(_engines) >= MAX_ENGINES:
                _engines.pop(next(iter(_engines)))
            _engines[key] = Engine(ref, quant, progress=progress)
        return _engines[key]


def forget_adapter(name: str) -> None:
    """Detach `name` from every loaded engine (it was deleted or replaced on disk)."""
    with _engines_lock:
        engines = list(_engines.values())
    for engine in engines:
        engine.unload_adapter(name)
