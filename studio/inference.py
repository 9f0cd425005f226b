"""Streamed chat generation: one loaded base model, many named LoRA adapters, many users at once.

- `stream_chat(model, tokenizer, messages, settings)`: stream one answer from any model.
- `Engine(ref, quant)`: loads a base once (the shared loader), attaches any number of adapters
  with PEFT `load_adapter`, and answers every request through its scheduler
  (studio/serving/scheduler.py): requests for the base and for different adapters decode together,
  one forward per token for the whole batch (PEFT mixed-adapter batches), so users do not wait for
  each other's answers. The engine is the single owner of the adapters' state (attached, active,
  merged); nothing else calls PEFT's adapter methods. `get_engine(ref, quant)` shares engines
  within a process; a load never blocks the users of another engine.
- Merged decoding: on a 16/32-bit base, when every running request asks for the same adapter it is
  merged into the weights, so it decodes as fast as a merged export; the merged weights live in
  separate buffers and the base tensors are swapped back on any change (and before PEFT attaches
  another adapter), so the base is restored bit for bit.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from studio.config import QUANTIZED
from studio.errors import AdapterError, ConfigError, StudioError
from studio.util import in_passing_thread

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


def encode_chat(tokenizer, messages: list[dict], tools: list[dict] | None = None):
    """Token ids (1 x T tensor) of a conversation ready for the assistant's next turn."""
    import torch

    from studio import templates

    text = render_prompt(tokenizer, messages, tools)
    ids = templates.with_bos(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])  # BOS once
    return torch.tensor([ids])


# The template and stop-id lookups live in these two functions only, so that one module (the planned
# studio/templates.py) can own them for training, chat, the API and export alike.

def render_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The conversation as the model sees it (the chat template training used), ready for the next turn.

    Tools (OpenAI function definitions) and tool turns are rendered as training rendered them: natively
    where the template supports tools, else the documented text fallback (studio.data.render).
    """
    from studio.data.render import apply_template, supports_tools, tool_fallback, uses_tools

    if (tools or uses_tools(messages)) and not supports_tools(tokenizer):
        return apply_template(tokenizer, tool_fallback(messages, tools), add_generation_prompt=True)
    return apply_template(tokenizer, messages, add_generation_prompt=True, tools=tools)


def adapter_system_turn(adapter: str | None) -> dict | None:
    """The system turn the adapter's training data started conversations with, for a conversation that
    brings none; None where there is no such choice. Read from the adapter's card, where training stored
    it; a card from before that falls back to its dataset's meta only while that dataset is the one it
    was trained on (same source hash)."""
    from studio.adapters import get_adapter
    from studio.data.formats import system_turn
    from studio.errors import StudioError

    if adapter is None:
        return None
    try:
        card = get_adapter(adapter).card or {}
    except (StudioError, OSError, ValueError):
        return None  # an adapter given by folder: the template's own default
    if "system_prompt" in card:
        return system_turn(card["system_prompt"])
    return system_turn(_legacy_system_prompt(card))


def _legacy_system_prompt(card: dict) -> dict | None:
    """The system-prompt choice of the dataset a card names, if that dataset still is the trained one."""
    from studio import paths
    from studio.util import read_json

    dataset = str(card.get("dataset") or "")
    try:
        meta = read_json(paths.datasets_dir() / dataset / "meta.json", {}) if dataset else {}
    except (OSError, ValueError):
        return None
    same = isinstance(meta, dict) and card.get("dataset_sha256") and meta.get("source_sha256") == card["dataset_sha256"]
    return meta.get("system_prompt") if same else None


def with_adapter_system(messages: list[dict], adapter: str | None) -> list[dict]:
    """The messages, started with the adapter's saved system turn where they bring no system turn of
    their own: Chat, the CLI and the API prompt an adapter the way its training data did."""
    if messages and messages[0].get("role") == "system":
        return messages
    turn = adapter_system_turn(adapter)
    return [turn, *messages] if turn is not None else messages


def stop_token_ids(tokenizer, model) -> list[int]:
    """Token ids that end an answer: the generation config's eos ids (an int or a list) and the tokenizer's."""
    found = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(found) if isinstance(found, (list, tuple)) else [found]
    ids.append(tokenizer.eos_token_id)
    from studio import templates

    ids += templates.current(tokenizer).stop_ids  # every end-of-turn id of the template training used
    return sorted({int(i) for i in ids if i is not None})


def _stop_ids(tokenizer) -> list[int]:
    """Every end-of-turn id and EOS (studio.templates): answers stop by themselves."""
    from studio import templates

    return templates.current(tokenizer).stop_ids


def generate_kwargs(tokenizer, settings: GenerationSettings) -> dict:
    kwargs = {"max_new_tokens": settings.max_new_tokens, "repetition_penalty": settings.repetition_penalty,
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": _stop_ids(tokenizer)}
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


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
BASE_PEFT_NAME = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
MAX_ENGINES = 2  # engines (each a loaded base) kept per process; older ones are dropped


def sampling_of(settings: GenerationSettings, stop: tuple[str, ...] = ()):
    """The scheduler's per-request settings for the Chat tab's / CLI's GenerationSettings."""
    from studio.serving.scheduler import Sampling

    return Sampling(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p,
                    top_k=settings.top_k, repetition_penalty=settings.repetition_penalty, seed=settings.seed, stop=stop)


class Engine:
    """One loaded base model and the named LoRA adapters attached to it; the only code that calls PEFT's
    adapter methods, so what it reports (active, merged) is what runs.

    Locks: `lock` is held for one forward step (by the scheduler) or one `use` block, never for a whole
    answer; `_load_lock` orders adapter loads, which read and check their files outside `lock` and hold
    it only to attach.
    """

    def __init__(self, ref: str = "bundled", quant: str = "fp32", device: str | None = None,
                 progress: Callable[[float, str], None] | None = None, max_batch: int = 8, max_queue: int = 64,
                 max_kv_tokens: int | None = None, max_adapters: int | None = None):
        import peft  # noqa: F401 - imported now, so adapter load times measure loading, not the import

        from studio.models import load_model

        # loaded in a thread that ends, so that the scheduler's thread holds the only OpenMP pool (util.py)
        self.loaded = in_passing_thread(load_model, ref, quant, device, progress=progress or (lambda f, m: None))
        self.ref, self.quant = ref, quant
        self.tokenizer = self.loaded.tokenizer
        self.model = self.loaded.model  # becomes a PeftModel when the first adapter is attached
        self.lock = threading.RLock()  # one decode step, one `use` block, one attach
        self._load_lock = threading.Lock()  # one adapter load at a time (two requests for it attach it once)
        self._peft_names: dict[str, str] = {}  # registry name or path -> PEFT adapter name
        self.load_ms: dict[str, float] = {}
        self.swap_ms: list[float] = []  # every set_adapter call, in milliseconds
        self.fold_ms: list[float] = []  # every merge of an adapter into the weights, in milliseconds
        self._folded: str | None = None  # the PEFT adapter merged into the base weights, if any
        self._originals: list = []  # (LoRA layer, its own base weight tensor) while an adapter is merged
        self._merged_weights: dict = {}  # LoRA layer -> the tensor that holds its merged weight
        self._loads = 0  # adapters attached so far: numbers each PEFT name once
        self.max_batch, self.max_queue = max_batch, max_queue
        self._keys: dict[str, tuple] = {}  # name -> the content key of the files it was attached from
        self._folders: dict[str, Path] = {}  # name -> folder, for adapters given by path (serve --adapters)
        self._used: dict[str, float] = {}  # name -> when a request last asked for it (least recently used goes)
        self._scheduler = None
        self._batched = None  # the stacked LoRA of the last mixed batch's adapters (studio.serving.lora_batch)
        self._batched_refused: tuple | None = None  # adapters the stacked LoRA cannot serve (PEFT's route)
        self._lora_off = False  # PEFT's LoRA layers switched off while the stacked LoRA serves a mixed batch
        self.mixed_steps = 0  # forwards that ran more than one adapter (or adapters and the base) together
        self.stacked_steps = 0  # mixed forwards served by the stacked LoRA (the others: PEFT's adapter_names)
        self.lean_steps = 0  # decode steps through studio/serving/decode.py (the others: the model's own forward)
        self.stop_ids = frozenset(stop_token_ids(self.tokenizer, self.loaded.model))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.stop_ids)
        self.cache_arg = _cache_arg(self.loaded.model)  # the forward's name for the KV cache
        self._device_type = self.device.type
        self.max_kv_tokens = max_kv_tokens or default_kv_tokens(self.loaded.model, self.device)
        self.max_adapters = max_adapters or default_max_adapters(self.device)

    @property
    def device(self):
        return self.loaded.model.device

    @property
    def device_type(self) -> str:
        return self._device_type

    # ------------------------------------------------ adapters

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters attached to this base, in load order."""
        return list(self._peft_names)

    def load_adapter(self, name: str, path: str | Path | None = None) -> float:
        """Attach an adapter (a registry name, or any name with `path`); returns the load time in ms.

        The adapter is checked against this base first (safetensors only, shapes, target layers), so a
        refused adapter leaves the loaded model untouched. An attached adapter is known by its files'
        content key (`content_key`): the same files again cost 0 ms; new files under the same name (a
        re-import, a retrained run) detach the old weights, ending their requests with a message, and
        attach the new. Past `max_adapters`, the least recently used adapter no request is using is
        detached first. The check runs while others generate; only the attach waits for the current step.
        Files that vanish meanwhile (the adapter deleted, or a run retrained under its name) end the request
        with HTTP 409, like an adapter replaced while it answers.
        """
        try:
            return self._load_adapter(name, path)
        except FileNotFoundError as exc:
            raise AdapterChanged(
                f"The adapter {name!r} changed on disk while it was being loaded ({Path(exc.filename or '').name} "
                "is missing: deleted, or being written by a new run).",
                "Send the request again in a moment; if the adapter was deleted, pick another.") from exc

    def _load_adapter(self, name: str, path: str | Path | None) -> float:
        from studio import policy
        from studio.adapters import get_adapter, validate_adapter

        if path is None and policy.hosted() and name not in self._folders:  # hosted: a registry name the caller
            # may see, never a folder; an adapter the server's operator gave by path (serve --adapters) is served
            policy.require_name(name)
            get_adapter(name)  # even when attached already (by someone else): another user's is not there
        with self._load_lock:
            folder = Path(path) if path is not None else self._locate(name)
            if path is not None:
                self._folders[name] = folder
            key = _checked_key(folder)
            self._used[name] = time.monotonic()
            if name in self._peft_names:
                if self._keys.get(name) == key:
                    return 0.0
                self._detach(name, AdapterChanged(
                    f"The adapter {name!r} was replaced on disk (re-imported or retrained) while this answer was "
                    "being written; the old weights are no longer served.", "Send the request again: it gets the "
                    "new weights."))
            warning = validate_adapter(folder, self.loaded)
            if warning:
                print(warning, file=sys.stderr, flush=True)  # a different base name with the same shapes
            self._make_room(name)
            start = time.perf_counter()
            with self.lock:
                self._loads += 1
                peft_name = f"adapter_{self._loads}"  # PEFT names become module keys: no '.' or ':'
                self._unfold()  # PEFT's load ends in set_adapter, which would unmerge by subtraction
                self._drop_batched()
                in_passing_thread(self._attach, folder, peft_name)  # PEFT's copies: no lasting OpenMP pool
                self._peft_names[name], self._keys[name] = peft_name, key
            elapsed = (time.perf_counter() - start) * 1000
            self.load_ms[name] = elapsed
        return elapsed

    def _make_room(self, name: str) -> None:
        """Detach the least recently used idle adapter while `max_adapters` are attached; refuse when every
        attached adapter has requests running or waiting."""
        from studio.serving.scheduler import Overloaded

        while len(self._peft_names) >= self.max_adapters:
            busy = self._scheduler.adapters_in_use() if self._scheduler is not None else set()
            idle = [a for a in self._peft_names if a not in busy and a != name]
            if not idle:
                raise Overloaded(f"All {len(self._peft_names)} attached adapters are answering requests (the limit "
                                 f"is {self.max_adapters}), so {name!r} cannot be attached now.",
                                 "Retry in a few seconds, or start the server with a larger --max-adapters.")
            self._detach(min(idle, key=lambda a: self._used.get(a, 0.0)), None)

    def _locate(self, name: str) -> Path:
        from studio import policy

        if name in self._folders:
            return self._folders[name]
        if not policy.hosted() and Path(name).is_dir():  # locally a folder path works too; hosted: names only
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

    def unload_adapter(self, name: str, reason: BaseException | None = None) -> None:
        """Detach an adapter (e.g. after it was deleted from disk); its running and waiting requests end
        with `reason` (by default: it was removed)."""
        reason = reason or AdapterChanged(f"The adapter {name!r} was removed while this answer was being written.",
                                          "Pick another model from GET /v1/models and send the request again.")
        with self._load_lock:
            self._detach(name, reason)

    def _detach(self, name: str, reason: BaseException | None) -> None:
        """Detach `name` (under `_load_lock`): its requests end with `reason` first, so none runs on the base."""
        with self.lock:
            peft_name = self._peft_names.get(name)
            if peft_name is None:
                return
            if self._scheduler is not None:
                self._scheduler.fail_adapter(name, reason or AdapterChanged(
                    f"The adapter {name!r} was detached.", "Send the request again."))
            del self._peft_names[name]
            self._keys.pop(name, None)
            self._unfold()
            self._drop_batched()
            self.model.delete_adapter(peft_name)
            self.load_ms.pop(name, None)
            if not self._peft_names:
                self.model = self.model.unload()  # a PeftModel without adapters cannot generate: unwrap
                self._merged_weights.clear()

    def refresh_adapters(self) -> None:
        """Detach every attached adapter whose files were deleted or replaced since it was attached (the
        scheduler calls this every second). Skipped while an adapter is being loaded."""
        if not self._load_lock.acquire(blocking=False):
            return
        try:
            for name in list(self._peft_names):
                try:
                    key = content_key(self._locate(name))
                except (OSError, StudioError):
                    key = None
                if key != self._keys.get(name):
                    what = "deleted" if key is None else "replaced on disk (re-imported or retrained)"
                    self._detach(name, AdapterChanged(
                        f"The adapter {name!r} was {what} while this answer was being written.",
                        "Send the request again" + (": it gets the new weights." if key else " with another model "
                                                    "from GET /v1/models.")))
        finally:
            self._load_lock.release()

    def close(self) -> None:
        """Stop the scheduler (its requests end with a message) and let go of the model's memory."""
        import gc

        from studio.serving.scheduler import EngineClosed

        if self._scheduler is not None:
            self._scheduler.stop(EngineClosed(f"The model {self.ref} was unloaded to make room for another.",
                                              "Send the request again (it loads the model again)."))
        with self.lock:
            if self._batched is not None:
                self._batched.close()
            self._originals, self._merged_weights, self._batched = [], {}, None
            self.model = self.loaded = None
        gc.collect()
        if self.device_type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _peft_name(self, adapter: str) -> str:
        if adapter not in self._peft_names:
            self.load_adapter(adapter)
        return self._peft_names[adapter]

    @contextmanager
    def use(self, adapter: str | None):
        """Hold the lock with `adapter` active (None: the base, adapters disabled) while the body runs.

        The adapter is merged into the weights where that is exact and fits (`_fold`).
        """
        if adapter is not None:
            self._peft_name(adapter)  # load outside the step lock
        with self.lock:
            if adapter is None:
                self._peft_route()
                self._unfold()
                if self._peft_names:
                    with self.model.disable_adapter():
                        yield self.model
                else:
                    yield self.model
                return
            self._activate(self._peft_names[adapter])
            yield self.model

    def _activate(self, peft_name: str) -> None:
        """Make `peft_name` the active adapter, merged where possible (no-op when it already is)."""
        self._peft_route()
        if self._folded == peft_name:
            return  # already active and merged: no swap at all
        self._unfold()  # PEFT would unmerge by subtraction, which drifts: put the base tensors back
        if self.model.active_adapter != peft_name or self.quant not in QUANTIZED:
            start = time.perf_counter()
            self.model.set_adapter(peft_name, inference_mode=True)
            self.swap_ms.append((time.perf_counter() - start) * 1000)
        self._fold(peft_name)

    def prepare_step(self, batch: list[str | None], rows: list[str | None]) -> dict:
        """Put the weights in the state that serves `batch` (the adapters of every running row) and return
        the forward kwargs for `rows` (the rows of this forward). Called under `lock`.

        One adapter for every row of a 16/32-bit base: it is active and merged where `_fold` allows. Otherwise
        (several adapters, or a quantized base that never merges) PEFT's LoRA layers are switched off and the
        stacked LoRA (studio/serving/lora_batch.py) adds each row's own adapter, or nothing for a base row;
        an adapter it cannot stack keeps PEFT's route (`adapter_names`, "__base__" = base).
        """
        if not self._peft_names:
            return {}
        kinds = set(batch)
        single = len(kinds) == 1 and None not in kinds
        if single and self.quant not in QUANTIZED:
            self._activate(self._peft_names[batch[0]])
            return {}
        self._unfold()
        names = [self._peft_names[a] if a is not None else None for a in rows]
        batched = self._batched_lora(tuple(sorted({self._peft_names[a] for a in kinds if a is not None})))
        if batched is None and single:  # a quantized base: PEFT's active adapter, unmerged
            self._activate(self._peft_names[batch[0]])
            return {}
        self.mixed_steps += not single
        if batched is None:  # an adapter PEFT's route must serve (DoRA, modules_to_save, ...)
            self._peft_route()
            return {"adapter_names": [name or BASE_PEFT_NAME for name in names]}
        if not self._lora_off:
            self.model.base_model.disable_adapter_layers()  # the layers run their base weights; the hooks add
            self._lora_off = True
        batched.set_rows(names)
        self.stacked_steps += 1
        return {}

    def _batched_lora(self, adapters: tuple[str, ...]):
        """The stacked LoRA of `adapters` (built once per set of adapters), or None for PEFT's route."""
        from studio.serving.lora_batch import BatchedLora

        gone = [name for name in adapters if name not in self.model.peft_config]
        if gone:  # deleted from the model under running rows (a bug, or a fault test): those rows fail, alone
            raise KeyError(f"The adapter {gone[0]} is no longer attached to the model.")
        if self._batched is not None and self._batched.adapters != adapters:
            self._batched.close()
            self._batched = None
        if self._batched is None and self._batched_refused != adapters:
            self._batched = BatchedLora.build(self.model, adapters)
            self._batched_refused = None if self._batched is not None else adapters
        return self._batched

    def _peft_route(self) -> None:
        """PEFT's own adapter routes for what follows: the stacked LoRA's hooks idle, PEFT's layers on."""
        if self._batched is not None:
            self._batched.idle()
        if self._lora_off:
            self.model.base_model.enable_adapter_layers()
            self._lora_off = False

    def _drop_batched(self) -> None:
        """Adapters attached or detached: the stacks are rebuilt at the next mixed step."""
        self._peft_route()
        if self._batched is not None:
            self._batched.close()
        self._batched, self._batched_refused = None, None

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

        if self.quant in QUANTIZED:
            return
        layers = [m for m in self.model.modules() if isinstance(m, LoraLayer) and peft_name in m.lora_A]
        if any(peft_name in m.lora_variant or m.lora_bias[peft_name] for m in layers):
            return
        weights = [m.get_base_layer().weight for m in layers]
        if sum(w.numel() * w.element_size() for w in weights) > _free_bytes(self.device) / 4:
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

    # ------------------------------------------------ generation (all of it through the scheduler)

    @property
    def scheduler(self):
        """The batching scheduler of this engine (started on first use)."""
        with self._load_lock if self._scheduler is None else nullcontext():
            if self._scheduler is None:
                from studio.serving.scheduler import Scheduler

                self._scheduler = Scheduler(self, self.max_batch, self.max_queue, self.max_kv_tokens)
        return self._scheduler

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.loaded.model.config)

    def context_length(self) -> int:
        """The longest prompt + answer the base was built for."""
        config = self.loaded.model.config.get_text_config(decoder=True)
        return int(getattr(config, "max_position_embeddings", 0) or 2048)

    def submit(self, prompt_ids: list[int], adapter: str | None, sampling, sink: queue.Queue | None = None):
        """Queue one answer (adapter loaded first, outside the step lock); returns its `Request`."""
        return self.submit_many([(prompt_ids, adapter)], sampling, sink)[0]

    def submit_many(self, prompts: list[tuple[list[int], str | None]], sampling, sink: queue.Queue | None = None):
        """Queue answers that start in the same step (compare mode); each may ask for another adapter."""
        from dataclasses import replace

        from studio import policy
        from studio.serving.scheduler import EngineClosed, Request

        if self.loaded is None:
            raise EngineClosed(f"The model {self.ref} was unloaded to make room for another.",
                               "Load it again (the Model tab, or send the request again).")
        capped = policy.cap_tokens(sampling.max_new_tokens)  # hosted: STUDIO_MAX_TOKENS at most
        if capped != sampling.max_new_tokens:
            sampling = replace(sampling, max_new_tokens=capped)
        for ids, adapter in prompts:
            if adapter is not None:  # also asks the policy (hosted) when it is attached already
                self.load_adapter(adapter)  # 0 ms where attached from the same files; reloads what changed
            check_context(len(ids), sampling.max_new_tokens, self.context_length())
        requests = [Request(ids, adapter, sampling, sink) for ids, adapter in prompts]
        self.scheduler.submit(requests)
        return requests

    def answer(self, messages: list[dict], settings: GenerationSettings = GenerationSettings(),
               adapter: str | None = None, stats: dict | None = None) -> Iterator[str]:
        """Stream the answer of the base (adapter None) or of one adapter, piece by piece.

        `stats`, when given, is filled with tokens, seconds, tokens_per_s and swap_ms at the end.
        """
        settings.validate()
        check_messages(messages)
        ids = encode_chat(self.tokenizer, with_adapter_system(messages, adapter))[0].tolist()
        swaps, folds = len(self.swap_ms), len(self.fold_ms)
        request = self.submit(ids, adapter, sampling_of(settings))
        yield from request.stream()
        if stats is not None:
            stats.update(_request_stats(request), adapter=adapter,
                         swap_ms=self.swap_ms[-1] if len(self.swap_ms) > swaps else 0.0,
                         merge_ms=self.fold_ms[-1] if len(self.fold_ms) > folds else 0.0)

    def compare(self, messages: list[dict], settings: GenerationSettings = GenerationSettings(),
                left: str | None = None, right: str | None = None,
                stats: dict | None = None) -> Iterator[tuple[str, str]]:
        """Stream two answers to the same prompt at the same time: (left text so far, right text so far).

        Both rows start in the same step of the batch (PEFT mixed adapters, "__base__" = adapters off),
        with the same prompt and seed.
        """
        settings.validate()
        check_messages(messages)
        left_ids, right_ids = (encode_chat(self.tokenizer, with_adapter_system(messages, a))[0].tolist()
                               for a in (left, right))
        sink: queue.Queue = queue.Queue()
        pair = self.submit_many([(left_ids, left), (right_ids, right)], sampling_of(settings), sink)
        texts = {id(r): "" for r in pair}
        start = time.perf_counter()
        ended = 0
        try:
            while ended < len(pair):  # count "done" events: `done` flips in the scheduler before they are read
                request, kind, payload = sink.get(timeout=STREAM_TIMEOUT_S)
                if kind == "error":
                    raise payload
                ended += kind == "done"
                if kind == "text":
                    texts[id(request)] += payload
                    yield texts[id(pair[0])], texts[id(pair[1])]
        finally:
            for request in pair:
                request.cancel()
        yield texts[id(pair[0])], texts[id(pair[1])]
        if stats is not None:
            tokens = sum(len(r.tokens) for r in pair)
            seconds = time.perf_counter() - start
            stats.update(tokens=tokens, seconds=round(seconds, 3),
                         tokens_per_s=round(tokens / seconds, 1) if seconds else None)


STREAM_TIMEOUT_S = 600  # a generation step slower than this means the scheduler thread died


def check_context(prompt_tokens: int, max_new_tokens: int, context: int) -> None:
    if prompt_tokens + max_new_tokens > context:
        raise ContextError(f"The prompt is {prompt_tokens} tokens and asks for up to {max_new_tokens} more, "
                           f"over this model's context of {context} tokens.",
                           "Shorten the conversation, or ask for fewer new tokens (max_tokens).")


class ContextError(ConfigError):
    """The prompt and the answer asked for do not fit the model's context."""


class AdapterChanged(AdapterError):
    """The adapter a request was using was deleted, replaced or detached while it ran (HTTP 409)."""


def content_key(folder: Path) -> tuple:
    """What identifies an adapter's weights: its folder and its files' sizes and modification times (a
    re-import or a new run under the same name writes new files, so the key changes)."""
    from studio.adapters import CONFIG_FILE, WEIGHTS_FILE

    folder = Path(folder).resolve()
    stats = [(folder / f).stat() for f in (WEIGHTS_FILE, CONFIG_FILE)]
    return (str(folder), *((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats))


def _checked_key(folder: Path) -> tuple:
    """content_key, after checking that the folder still holds a safetensors LoRA (clear errors if not)."""
    from studio.adapters import check_files

    if not folder.is_dir():
        raise AdapterError(f"The adapter folder {folder} does not exist (deleted?).",
                           "Pick an adapter from the list (GET /v1/models), or import it again.")
    check_files(folder)
    return content_key(folder)


KV_MEMORY_SHARE = 4  # the KV cache may take a quarter of the memory free after the model is loaded
ADAPTER_BYTES = 256 * 2 ** 20  # a generous LoRA (r=64 on every projection of a 7B base) for the default limit


def serving_quant() -> str:
    """How a dedicated server (`studio serve`, the serving benchmark) holds a 16/32-bit base unless told:
    bf16 on a CUDA GPU that computes it, else fp32. On a CPU with AVX512-BF16 and AMX, bf16 measured no faster
    than fp32 for the bundled 135M model (docs/serving.md: 8.3 vs 9.4 tok/s for one client, 41.0 vs 42.0 for
    eight, in one run), so a CPU keeps fp32 and its answers; `--quant bf16` still chooses it."""
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def default_kv_tokens(model, device) -> int:
    """The KV-cache budget in tokens: a quarter of the free memory over the bytes one token's cache takes."""
    config = model.config.get_text_config(decoder=True)
    layers = int(getattr(config, "num_hidden_layers", 0) or 1)
    heads = int(getattr(config, "num_key_value_heads", 0) or getattr(config, "num_attention_heads", 1))
    head_dim = int(getattr(config, "head_dim", 0) or config.hidden_size // config.num_attention_heads)
    per_token = 2 * layers * heads * head_dim * next(model.parameters()).element_size()  # keys and values
    return max(4096, _free_bytes(device) // KV_MEMORY_SHARE // per_token)


def default_max_adapters(device) -> int:
    """Adapters kept attached at once: one per ADAPTER_BYTES of a quarter of the free memory, 2 to 32."""
    return int(min(32, max(2, _free_bytes(device) // KV_MEMORY_SHARE // ADAPTER_BYTES)))


def _request_stats(request) -> dict:
    seconds = request.finished_s or (time.perf_counter() - request.submitted)
    tokens = len(request.tokens)
    return {"prompt_tokens": len(request.prompt_ids), "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None, "finish_reason": request.finish_reason}


def _cache_arg(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _free_bytes(device) -> int:
    import psutil
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


_engines: dict[tuple[str, str], Engine] = {}
_engines_lock = threading.Lock()  # guards the dict only, never a model load
_loading: dict[tuple[str, str], threading.Lock] = {}  # one lock per (ref, quant) being loaded


def get_engine(ref: str = "bundled", quant: str = "fp32", progress=None) -> Engine:
    """The process-wide engine for (ref, quant), loaded on first use (at most MAX_ENGINES kept, the least
    recently used dropped first).

    A load holds only its own (ref, quant) lock: users of engines already loaded are not kept waiting.
    """
    key = (ref, quant)
    with _engines_lock:
        if key in _engines:
            _engines[key] = _engines.pop(key)  # most recently used last: the API serves it, eviction spares it
            return _engines[key]
        loading = _loading.setdefault(key, threading.Lock())
    with loading:
        with _engines_lock:
            if key in _engines:
                return _engines[key]
        engine = Engine(ref, quant, progress=progress)
        with _engines_lock:
            evicted = _engines.pop(next(iter(_engines))) if len(_engines) >= MAX_ENGINES else None
            _engines[key] = engine
            _loading.pop(key, None)
        if evicted is not None:
            evicted.close()  # its thread stops, its model is freed
        return engine


_serving: tuple[str, str] | None = None  # (ref, quant) the app's /v1 serves: the Model tab's choice


def serve_engine(ref: str, quant: str, progress=None) -> Engine:
    """Load (ref, quant) and declare it the engine the app's /v1 serves (the Model tab's Load button)."""
    global _serving
    engine = get_engine(ref, quant, progress=progress)
    _serving = (ref, quant)
    return engine


def serving_choice() -> tuple[str, str]:
    """The (ref, quant) the app's /v1 serves: the Model tab's last load, else the default model in fp32."""
    from studio.models import default_model_ref

    return _serving or (default_model_ref(), "fp32")


def serving_engine() -> Engine:
    """The engine the app's /v1 serves (loaded on first use), never another one the Chat tab used."""
    return get_engine(*serving_choice())


def loaded_engines() -> list[Engine]:
    """The loaded engines, least recently used first (the app's API serves the last)."""
    with _engines_lock:
        return list(_engines.values())


def forget_adapter(name: str) -> None:
    """Detach `name` from every loaded engine (it was deleted or replaced on disk)."""
    with _engines_lock:
        engines = list(_engines.values())
    for engine in engines:
        engine.unload_adapter(name)
