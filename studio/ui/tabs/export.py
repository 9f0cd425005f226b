"""Export tab: merge an adapter into its base (HF folder, optional GGUF), zip an adapter or write it as a GGUF
LoRA with an Ollama Modelfile, push to the Hub.

The same functions as `python -m studio export ...`; nothing under exports/ is overwritten unless
the Overwrite box is ticked. A merge from a training run is also recorded in runs/<id>/exports.jsonl.
"""

from __future__ import annotations

import re

import gradio as gr

from studio.errors import StudioError
from studio.hosted import require_login
from studio.ui.shared import Shared, cancellable

TITLE = "Export"


def _progress(progress):
    return lambda fraction, message: progress(fraction, desc=message)


def merge(ref, quant, adapter, out_name, gguf_types, overwrite, progress=gr.Progress()):
    from studio.export import merge as merge_adapter
    from studio.export import to_gguf

    if not adapter:
        raise gr.Error("Pick an adapter to merge.")
    try:
        require_login("exports")
        from studio.ui.tabs.chat import precision_for

        quant = precision_for(quant, adapter)[0]  # merged in the precision it was trained in, unless chosen
        report = merge_adapter(ref, adapter, out_name, quant, bool(overwrite), _progress(progress))
        lines = [f"Merged model: `{report['path']}`"] + [f"Note: {n}" for n in report["notes"]]
        for qtype in gguf_types or []:
            path = to_gguf(report["path"], f"{out_name}.{qtype}", qtype, bool(overwrite), _progress(progress))
            lines.append(f"GGUF {qtype}: `{path}` ({path.stat().st_size / 2**20:.0f} MiB); "
                         f"run it with `llama-cli -m {path.name}` or an Ollama Modelfile `FROM ./{path.name}`")
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return "\n\n".join(lines)


def lora_gguf(ref, adapter, out_name, overwrite, progress=gr.Progress()):
    """The adapter alone as a GGUF LoRA, with a Modelfile FROM the base GGUF (llama.cpp and Ollama, no merge)."""
    from studio.export import lora_gguf as export_lora

    if not adapter:
        raise gr.Error("Pick an adapter to export.")
    try:
        require_login("exports")
        report = export_lora(ref, adapter, out_name, overwrite=bool(overwrite), progress=_progress(progress))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return "\n\n".join([f"GGUF LoRA and Modelfile: `{report['path']}` (base `{report['base_gguf']}`)",
                         f"llama.cpp: `{report['llama_server']}`", f"Ollama: `{report['ollama']}`"]
                        + [f"Note: {n}" for n in report["notes"]])


def zip_adapter(adapter, overwrite):
    from studio.export import export_adapter_zip

    if not adapter:
        raise gr.Error("Pick an adapter to zip.")
    try:
        require_login("exports")
        path = export_adapter_zip(adapter, bool(overwrite))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return str(path), f"Adapter zip: `{path}`"


def push(name, repo_id, token, public, progress=gr.Progress()):
    from studio import paths
    from studio.export import push_to_hub

    try:
        require_login("exports")
        url = push_to_hub(paths.exports_dir() / paths.check_name(name, "export name"), repo_id, token or None,
                          private=not public, progress=_progress(progress))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return f"Pushed: {url}"


DEFAULT_NAME = "merged-model"


def export_name(adapter: str | None) -> str:
    """The default export name for an adapter: run:medical-r16 -> medical-r16-merged."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", (adapter or "").split(":")[-1]).strip("-.")
    return f"{stem}-merged" if stem else DEFAULT_NAME


def follow_name(current, typed: str):
    """The export name follows the adapter in focus until the user types one of their own."""
    suggested = typed in ("", DEFAULT_NAME) or typed.endswith("-merged")
    return export_name(current.adapter) if suggested else gr.skip()


def build(shared: Shared) -> None:
    from studio.config import QUANT_MODES
    from studio.ui.tabs.chat import AS_TRAINED

    current = shared.current.value
    gr.Markdown("Ship a fine-tune: merge the adapter into its base (a full Hugging Face folder with the tokenizer "
                "and chat template), optionally as **GGUF** for llama.cpp and Ollama; or export the adapter alone, "
                "as a zip or as a **GGUF LoRA** with an Ollama Modelfile (`FROM` the base GGUF, `ADAPTER` the LoRA; "
                "no merge). "
                "A 4-bit or 8-bit base is dequantized before merging. Nothing under exports/ is overwritten "
                "unless you tick Overwrite.")
    model_ref = shared.model_ref or gr.Textbox(value="bundled", label="Model")
    with gr.Row():
        adapter = gr.Dropdown(choices=list(current.adapters), value=current.adapter, allow_custom_value=True,
                              label="Adapter", elem_id="export-adapter", scale=2,
                              info="The adapter in focus is picked; new ones appear by themselves.")
        quant = gr.Dropdown([AS_TRAINED, *QUANT_MODES], value=AS_TRAINED, label="Precision of the base",
                            elem_id="export-precision", info="As the adapter was trained, unless you choose.")
    with gr.Row():
        out_name = gr.Textbox(value=export_name(current.adapter), label="Export name (exports/...)",
                              elem_id="export-name", info="Follows the adapter; type your own to keep it.")
        gguf_types = gr.CheckboxGroup(["f16", "q8_0"], value=[], label="Also write GGUF", elem_id="export-gguf",
                                      info="For llama.cpp and Ollama. f16: exact; q8_0: half the size.")
        overwrite = gr.Checkbox(label="Overwrite an existing export", elem_id="export-overwrite")
    with gr.Row():
        merge_btn = gr.Button("Merge and save", variant="primary", elem_id="export-merge-btn")
        zip_btn = gr.Button("Zip adapter", elem_id="export-zip-btn")
        lora_btn = gr.Button("Adapter as GGUF LoRA (llama.cpp, Ollama)", elem_id="export-lora-btn")
        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="export-cancel", interactive=False)
    result = gr.Markdown(elem_id="export-result", min_height=60)  # room for the progress bar while merging
    zip_file = gr.File(label="Adapter zip", elem_id="export-zip")
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        with gr.Row():
            push_name = gr.Textbox(label="Export to push (a name under exports/)", value=export_name(current.adapter))
            repo = gr.Textbox(label="Repo id (user/name)", elem_id="export-repo")
            token = gr.Textbox(label="Token (or set HF_TOKEN)", type="password")
            public = gr.Checkbox(label="Public")
        push_btn = gr.Button("Push", elem_id="export-push-btn")
        push_info = gr.Markdown(elem_id="export-push-info")

    adapter.input(shared.set("adapter"), [shared.current, adapter], shared.current)
    shared.follow(lambda c: gr.Dropdown(choices=list(c.adapters), value=c.adapter), [adapter])
    shared.follow(lambda c, typed, pushed: (follow_name(c, typed), follow_name(c, pushed)), [out_name, push_name],
                  [out_name, push_name])
    actions = [(merge_btn, merge, [model_ref, quant, adapter, out_name, gguf_types, overwrite], result, "merge"),
               (zip_btn, zip_adapter, [adapter, overwrite], [zip_file, result], "zip_adapter"),
               (lora_btn, lora_gguf, [model_ref, adapter, out_name, overwrite], result, "lora_gguf"),
               (push_btn, push, [push_name, repo, token, public], push_info, "push_to_hub")]
    runs = [cancellable(btn.click, fn, inputs, outputs, api, cancel_btn) for btn, fn, inputs, outputs, api in actions]
    from studio.ui.tabs.merge import section as merge_section

    runs.append(merge_section(shared, model_ref, cancel_btn))  # adapters combined into a new adapter (issue 27)
    cancel_btn.click(None, None, None, cancels=runs)
