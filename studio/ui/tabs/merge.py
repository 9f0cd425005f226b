"""The Export tab's "Combine adapters" section: two or more LoRA adapters of one base merged into a new
adapter (studio.merging, PEFT's add_weighted_adapter), run as a task in its own process like an evaluation;
the CLI twin is `python -m studio adapters merge`. The new adapter joins the registry: Chat, Evaluate and
Export list it within seconds."""

from __future__ import annotations

import gradio as gr

from studio.errors import StudioError
from studio.jobs import tasks
from studio.merging import DEFAULT_DENSITY, METHODS
from studio.ui.shared import Shared, cancellable
from studio.ui.tabs.evaluate import _follow

EXPLAIN = """Merge two or more adapters **of the same base** into a new adapter (PEFT's `add_weighted_adapter`).

- **ties** (default): keeps each adapter's largest entries (*density*), elects a sign per entry and averages
  the agreeing ones: the usual choice for adapters trained on different tasks. **dare_ties / dare_linear**:
  drop entries at random instead (seeded), then TIES or a weighted sum. These and **linear** need one rank.
- **cat**: exact weighted sum of the adapters' updates (the rank is the sum of ranks); **svd**: the exact sum
  cut back to one rank. Both accept different ranks.

Weights: one per adapter (empty: 1 each for TIES-like methods, 1/n for the others). An existing adapter name
is refused, never overwritten."""


def parse_weights(text: str) -> tuple[float, ...]:
    """'0.5 0.5' or '0.5, 0.5' -> (0.5, 0.5); empty -> () (the method's default)."""
    try:
        return tuple(float(w) for w in str(text or "").replace(",", " ").split())
    except ValueError:
        raise gr.Error(f"Weights {text!r} are not numbers: give one per adapter, e.g. 0.5 0.5.") from None


def merge_adapters(ref, inputs, method, weights, density, name, progress=gr.Progress()):
    """Start the merge task and follow it; a line naming the new adapter and its parents."""
    spec = {"inputs": list(inputs or []), "name": str(name or "").strip(), "method": method,
            "weights": list(parse_weights(weights)), "density": float(density) if density else None}
    try:
        folder = tasks.start("merge_adapters", spec=spec, ref=ref or None)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    result = _follow(folder, progress)
    merged = result["card"]["merge"]
    parents = ", ".join(f"`{p['name']}` x {p['weight']:g}" for p in merged["parents"])
    return (f"Merged adapter **`{result['name']}`** ({merged['method']}, rank {result['card']['lora']['r']}) from "
            f"{parents}; saved to `{result['path']}`. Pick it in Chat, Evaluate or Export.")


def section(shared: Shared, model_ref, cancel_btn):
    """The accordion and its wiring; returns the merge event (for Cancel)."""
    current = shared.current.value
    with gr.Accordion("Combine adapters into a new adapter (TIES, DARE, linear, cat)", open=False):
        gr.Markdown(EXPLAIN)
        with gr.Row():
            inputs = gr.Dropdown(choices=list(current.adapters), value=[], multiselect=True, scale=2,
                                 allow_custom_value=True,
                                 label="Adapters to merge (two or more, one base)", elem_id="merge-inputs")
            method = gr.Dropdown(list(METHODS), value="ties", label="Method", elem_id="merge-method")
        with gr.Row():
            weights = gr.Textbox(label="Weights (one per adapter)", placeholder="e.g. 0.5 0.5", elem_id="merge-weights")
            density = gr.Number(value=DEFAULT_DENSITY, label="Density", minimum=0.01, maximum=1.0,
                                info="ties / dare: the fraction of entries kept.", elem_id="merge-density")
            name = gr.Textbox(label="New adapter name", placeholder="medical-hinglish-ties", elem_id="merge-name")
        button = gr.Button("Merge adapters", elem_id="merge-btn")
        result = gr.Markdown(elem_id="merge-result")
    shared.follow(lambda c, chosen: gr.Dropdown(choices=list(c.adapters),
                                                value=[a for a in chosen or [] if a in c.adapters]),
                  [inputs], [inputs])
    return cancellable(button.click, merge_adapters, [model_ref, inputs, method, weights, density, name], result,
                       "merge_adapters", cancel_btn)
