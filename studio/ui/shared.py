"""Components that several tabs read, passed explicitly (no string-keyed dicts, no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Shared:
    model_ref: object = None  # gr.Textbox: the base model reference ("bundled", a folder, a hub id)
    quant: object = None  # gr.Dropdown: 4bit / 8bit / bf16 / fp16 / fp32
    dataset: object = None  # gr.Dropdown: the prepared dataset chosen for training and evaluation
    preset: object = None  # gr.State: dict(quant=..., lora={...}, train={...}) chosen in the Presets tab
    hosted: bool = False  # hosted mode (HF Spaces): training and exports need a login
    on_page_load: list = field(default_factory=list)  # (function, outputs) run when a page (re)loads
