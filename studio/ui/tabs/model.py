"""Model panel: choose a base model and how to hold it, load it with progress, try it."""

from __future__ import annotations

import gradio as gr

from studio.config import QUANT_MODES
from studio.errors import StudioError
from studio.ui import fmt
from studio.ui.shared import Shared

TITLE = "Model"


def load(ref: str, quant: str, progress=gr.Progress()):
    from studio.inference import serve_engine
    from studio.models import model_info
    from studio.serving.snippets import model_id

    try:  # the same engine the Chat tab uses, and the one the app's /v1 API serves
        engine = serve_engine(ref, quant, progress=lambda f, m: progress(f, desc=m))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    info = {**model_info(engine.loaded), "API (/v1)": f"serves this model as '{model_id(ref)}' ({quant})"}
    rows = "\n".join(f"| {k} | {fmt.md(v, in_table=True)} |" for k, v in info.items())
    return f"| property | value |\n|---|---|\n{rows}"


def generate(ref: str, quant: str, prompt: str, max_new_tokens: float):
    from studio.inference import GenerationSettings, get_engine

    try:
        engine = get_engine(ref, quant)
        text = ""
        settings = GenerationSettings(max_new_tokens=int(max_new_tokens))
        for piece in engine.answer([{"role": "user", "content": prompt}], settings):  # the base, no adapter
            text += piece
            yield text
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc


QUANT_HELP = ("How the base is held in memory. fp32: exact, best on a CPU. bf16/fp16: half the memory on a GPU. "
             "4bit/8bit: a GPU with little memory (QLoRA). Beginners: keep the default.")


def follow_model(current, ref: str, quant: str):
    """The boxes follow the shared state, but never write back what they already show: that write lands after
    keys typed meanwhile (a box just emptied would get the old text back in front of the new)."""
    return (gr.skip() if ref == current.model_ref else current.model_ref,
            gr.skip() if quant == current.quant else current.quant)


def build(shared: Shared) -> None:
    current = shared.current.value
    gr.Markdown("Pick the base model to fine-tune. `bundled` is SmolLM2-135M-Instruct, shipped with the studio; "
                "a local folder, a `.gguf` file or a hub id work too. The default precision follows this "
                "machine (fp32 on a CPU, 4bit on a GPU). Next: the **Data** tab.")
    with gr.Row():
        shared.model_ref = gr.Textbox(value=current.model_ref, label="Model", scale=3, elem_id="model-ref",
                                      info="`bundled`, a local folder, a .gguf file or a hub id (user/name).")
        shared.quant = gr.Dropdown(list(QUANT_MODES), value=current.quant, label="Precision", scale=1,
                                   elem_id="model-quant", info=QUANT_HELP)
        load_btn = gr.Button("Load", variant="primary", scale=1)
    shared.set_on_commit(shared.model_ref, "model_ref")
    shared.quant.input(shared.set("quant"), [shared.current, shared.quant], shared.current)
    shared.follow(follow_model, [shared.model_ref, shared.quant], [shared.model_ref, shared.quant])
    info = gr.Markdown(elem_id="model-info")
    load_btn.click(load, [shared.model_ref, shared.quant], info, api_name="load_model")
    with gr.Accordion("Try it", open=True):
        prompt = gr.Textbox(label="Prompt", value="What are the symptoms of type 2 diabetes?")
        max_new = gr.Slider(1, 512, value=96, step=1, label="Max new tokens")
        go = gr.Button("Generate")
        answer = gr.Textbox(label="Answer", lines=6, elem_id="model-answer")
    go.click(generate, [shared.model_ref, shared.quant, prompt, max_new], answer, api_name="generate")
