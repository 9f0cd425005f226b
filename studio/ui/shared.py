"""What the user is working on, shared by every tab, and the components several tabs read.

`Current` is the one explicit state: model + precision, dataset, preset, run, adapter (and the lists
they are picked from). It lives in a `gr.State` per browser session, is read from disk on page load
and whenever the runs folder changes (a run finishing, an adapter appearing), and every tab that uses
a part of it shows that part and can change it. A tab plugs in with two calls:

    shared.follow(show, [my_dropdown])               # show(current) -> updates, on every change
    my_dropdown.input(shared.set("dataset"), [shared.current, my_dropdown], shared.current)

No string-keyed component dicts, no globals; no torch import (studio.ui never imports torch).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, replace

BASE_LABEL = "(base)"  # the same label studio.inference uses for "no adapter"


def default_quant() -> str:
    """How to hold the base by default: 4-bit (QLoRA) on a GPU; fp32 on a CPU, where bitsandbytes 4-bit
    dequantizes every matmul (slow) and a small model's 4-bit answers are visibly worse."""
    from studio.models import hardware

    return "4bit" if hardware().cuda_devices else "fp32"


def default_preset() -> str:
    from studio.models import hardware

    return "8gb" if hardware().cuda_devices else "cpu"


@dataclass(frozen=True)
class Current:
    model_ref: str = "bundled"
    quant: str = "fp32"  # how the Model, Chat, Evaluate and Export tabs hold the base
    dataset: str | None = None
    preset: str | None = None
    run: str | None = None
    run_state: str | None = None
    adapter: str | None = None  # the adapter in focus: Chat's right pane, Evaluate, Export
    datasets: tuple[str, ...] = ()
    runs: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()

    def with_disk(self) -> Current:
        """The same choices with the lists read from disk again; a choice that is gone falls back to the
        newest, and a run that just finished brings its adapter into focus."""
        from studio.adapters import adapter_names
        from studio.data.store import list_datasets
        from studio.jobs import manager

        datasets = tuple(m["name"] for m in sorted(list_datasets(), key=lambda m: str(m.get("created") or ""),
                                                   reverse=True))
        runs = manager.list_runs()  # newest first; also notices dead workers and advances the queue
        names = tuple(r["run"] for r in runs)
        adapters = tuple(adapter_names())
        run = self.run if self.run in names else (names[0] if names else None)
        state = next((r["state"] for r in runs if r["run"] == run), None)
        adapter = self.adapter if self.adapter in adapters else (adapters[0] if adapters else None)
        if run and state == "completed" and self.run_state not in (None, "completed") and self.run == run:
            adapter = f"run:{run}"  # the run just finished: its adapter is what the user wants to try
        dataset = self.dataset if self.dataset in datasets else (datasets[0] if datasets else None)
        return replace(self, dataset=dataset, run=run, run_state=state, adapter=adapter, datasets=datasets,
                       runs=names, adapters=adapters)

    def summary_html(self) -> str:
        """The line at the top of the app; data-* attributes let tests read it exactly."""
        run = f"{self.run} ({self.run_state})" if self.run else "none yet"
        parts = [("Model", f"{self.model_ref} in {self.quant}"), ("Dataset", self.dataset or "none yet"),
                 ("Preset", self.preset or "none"), ("Run", run), ("Adapter", self.adapter or "none yet")]
        attrs = " ".join(f"data-{k}='{html.escape(str(v or ''), quote=True)}'" for k, v in (
            ("model", self.model_ref), ("quant", self.quant), ("dataset", self.dataset), ("preset", self.preset),
            ("run", self.run), ("adapter", self.adapter)))
        body = " · ".join(f"<b>{k}</b> {html.escape(v)}" for k, v in parts)
        return f"<div id='current-state' {attrs}>Working on: {body}</div>"


def first_current() -> Current:
    """What a fresh page starts from: hardware defaults, then everything on disk."""
    from studio.models import default_model_ref

    return Current(model_ref=default_model_ref(), quant=default_quant(), preset=default_preset()).with_disk()


@dataclass
class Shared:
    current: object = None  # gr.State(Current): what the user is working on (see above)
    model_ref: object = None  # gr.Textbox: the base model reference ("bundled", a folder, a hub id)
    quant: object = None  # gr.Dropdown: 4bit / 8bit / bf16 / fp16 / fp32
    dataset: object = None  # gr.Dropdown: the prepared dataset chosen for training and evaluation
    preset: object = None  # gr.State: dict(quant=..., lora={...}, train={...}) chosen in the Presets tab
    hosted: bool = False  # hosted mode (HF Spaces): training and exports need a login
    on_page_load: list = field(default_factory=list)  # (function, outputs) run when a page (re)loads
    followers: list = field(default_factory=list)  # (function, outputs, inputs): run on every change of `current`

    def follow(self, function, outputs, inputs=()) -> None:
        """Call function(current, *inputs) -> updates for `outputs` whenever the current state changes
        (and on page load)."""
        self.followers.append((function, outputs, list(inputs)))

    def set_on_commit(self, box, key: str) -> None:
        """A text box sets `key` when the user leaves it or presses Enter, never on each keystroke: the
        followers write the state back into the box, which would eat the letters typed meanwhile."""
        for event in (box.blur, box.submit):
            event(self.set(key), [self.current, box], self.current, show_progress="hidden")

    @staticmethod
    def set(key: str):
        """An event function: (current, value) -> current with `key` set to value (gr.skip() if unchanged)."""
        import gradio as gr

        def setter(current: Current, value):
            value = value or None
            return gr.skip() if getattr(current, key) == value else replace(current, **{key: value})
        return setter


def cancellable(trigger, function, inputs, outputs, api_name: str, stop_btn):
    """Run `function` on `trigger` with `stop_btn` enabled only while it runs; returns the event to cancel."""
    import gradio as gr

    event = trigger(lambda: gr.Button(interactive=True), None, stop_btn, show_progress="hidden",
                    api_visibility="private")
    work = event.then(function, inputs, outputs, api_name=api_name)
    work.then(lambda: gr.Button(interactive=False), None, stop_btn, show_progress="hidden", api_visibility="private")
    return work
