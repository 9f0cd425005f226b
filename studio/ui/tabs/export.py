"""Export tab: merge an adapter into its base (HF folder, optional GGUF), zip an adapter, push to the Hub.

The same functions as `python -m studio export ...`; nothing under exports/ is overwritten unless
the Overwrite box is ticked. A merge from a training run is also recorded in runs/<id>/exports.jsonl.
"""

from __future__ import annotations

import gradio as gr

from studio.errors import StudioError
from studio.hosted import require_login
from studio.ui.shared import Shared

TITLE = "Export"


def _progress(progress):
    return lambda fraction, message: progress(fraction, desc=message)


def _adapter_choices() -> list[str]:
    from studio.adapters import adapter_names

    return adapter_names()


def refresh():
    return gr.Dropdown(choices=_adapter_choices())


def merge(ref, quant, adapter, out_name, gguf_types, overwrite, progress=gr.Progress()):
    from studio.export import merge as merge_adapter
    from studio.export import to_gguf

    if not adapter:
        raise gr.Error("Pick an adapter to merge.")
    try:
        require_login("exports")
        report = merge_adapter(ref, adapter, out_name, quant, bool(overwrite), _progress(progress))
        lines = [f"Merged model: `{report['path']}`"] + [f"Note: {n}" for n in report["notes"]]
        for qtype in gguf_types or []:
            path = to_gguf(report["path"], f"{out_name}.{qtype}", qtype, bool(overwrite), _progress(progress))
            lines.append(f"GGUF {qtype}: `{path}` ({path.stat().st_size / 2**20:.0f} MiB); "
                         f"run it with `llama-cli -m {path.name}` or an Ollama Modelfile `FROM ./{path.name}`")
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return "\n\n".join(lines)


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


def build(shared: Shared) -> None:
    gr.Markdown("Ship a fine-tune: merge the adapter into its base (a full Hugging Face folder with the tokenizer "
                "and chat template), optionally as **GGUF** for llama.cpp and Ollama; or zip the adapter alone. "
                "A 4-bit or 8-bit base is dequantized before merging.")
    model_ref = shared.model_ref or gr.Textbox(value="bundled", label="Model")
    quant = shared.quant or gr.Dropdown(["fp32", "bf16", "4bit", "8bit"], value="fp32", label="Quantization")
    with gr.Row():
        adapter = gr.Dropdown(choices=_adapter_choices(), allow_custom_value=True, label="Adapter",
                              elem_id="export-adapter", scale=2)
        refresh_btn = gr.Button("Refresh", scale=0)
    with gr.Row():
        out_name = gr.Textbox(value="merged-model", label="Export name (exports/...)", elem_id="export-name")
        gguf_types = gr.CheckboxGroup(["f16", "q8_0"], value=[], label="Also write GGUF", elem_id="export-gguf")
        overwrite = gr.Checkbox(label="Overwrite an existing export", elem_id="export-overwrite")
    with gr.Row():
        merge_btn = gr.Button("Merge and save", variant="primary", elem_id="export-merge-btn")
        zip_btn = gr.Button("Zip adapter", elem_id="export-zip-btn")
        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="export-cancel")
    result = gr.Markdown(elem_id="export-result")
    zip_file = gr.File(label="Adapter zip", elem_id="export-zip")
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        with gr.Row():
            push_name = gr.Textbox(label="Export to push (a name under exports/)", value="merged-model")
            repo = gr.Textbox(label="Repo id (user/name)", elem_id="export-repo")
            token = gr.Textbox(label="Token (or set HF_TOKEN)", type="password")
            public = gr.Checkbox(label="Public")
        push_btn = gr.Button("Push", elem_id="export-push-btn")
        push_info = gr.Markdown(elem_id="export-push-info")

    refresh_btn.click(refresh, None, adapter, api_name="export_refresh")
    merge_ev = merge_btn.click(merge, [model_ref, quant, adapter, out_name, gguf_types, overwrite], result,
                               api_name="merge")
    zip_ev = zip_btn.click(zip_adapter, [adapter, overwrite], [zip_file, result], api_name="zip_adapter")
    push_ev = push_btn.click(push, [push_name, repo, token, public], push_info, api_name="push_to_hub")
    cancel_btn.click(None, None, None, cancels=[merge_ev, zip_ev, push_ev])
