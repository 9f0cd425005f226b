"""Evaluate tab: perplexity and a side-by-side battery (ROUGE) for the base and adapters, and pruning.

Every action runs the same functions as `python -m studio eval` / `python -m studio prune`; results
are saved next to each adapter's run and on its card. Stop cancels between batches.
"""

from __future__ import annotations

import threading

import gradio as gr
import pandas as pd

from studio.errors import StudioError
from studio.ui.shared import Shared

TITLE = "Evaluate"
_stops: dict[str, threading.Event] = {}  # one stop flag per browser session


def _stop_flag(request: gr.Request | None) -> threading.Event:
    key = getattr(request, "session_hash", None) or "cli"
    flag = _stops.setdefault(key, threading.Event())
    flag.clear()
    return flag


def stop(request: gr.Request):
    _stops.setdefault(getattr(request, "session_hash", None) or "cli", threading.Event()).set()
    gr.Info("Stopping after the current batch...")


def _progress(progress):
    return lambda fraction, message: progress(fraction, desc=message)


def _dataset_choices() -> list[str]:
    from studio.data.store import list_datasets

    return [d["name"] for d in list_datasets()]


def _adapter_choices() -> list[str]:
    from studio.adapters import adapter_names

    return adapter_names()


def refresh_adapters():
    return gr.Dropdown(choices=_adapter_choices())


def refresh_both():
    return gr.Dropdown(choices=_dataset_choices()), refresh_adapters()


def _need(dataset) -> str:
    if not dataset:
        raise gr.Error("Pick a prepared dataset first (prepare one in the Data tab).")
    return dataset


def run_perplexity(ref, quant, dataset, adapters, max_rows, request: gr.Request, progress=gr.Progress()):
    from studio.data.preference import dataset_kind
    from studio.evaluation import compare_perplexity, compare_preference

    flag = _stop_flag(request)
    try:  # a preference dataset (DPO/ORPO pairs) is scored by held-out preference accuracy and reward margin
        compare = compare_preference if dataset_kind(_need(dataset)) == "preference" else compare_perplexity
        report = compare(ref, quant, dataset, list(adapters or []), max_rows=int(max_rows) or None,
                         progress=_progress(progress), should_stop=flag.is_set)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    table = pd.DataFrame([{"model": name, **r} for name, r in report["results"].items()])
    return table, f"Saved: {', '.join(report['saved_to'])}"


def run_battery(ref, quant, dataset, adapters, prompts, max_new_tokens, request: gr.Request, progress=gr.Progress()):
    from studio.evaluation import compare_battery

    flag = _stop_flag(request)
    try:
        report = compare_battery(ref, quant, _need(dataset), list(adapters or []), int(prompts), int(max_new_tokens),
                                 _progress(progress), flag.is_set)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    json_path = report["saved_to"][0]
    files = [json_path.replace(".json", ".csv"), json_path.replace(".json", ".jsonl")]
    scores = pd.DataFrame([{"model": name, **s} for name, s in report["rouge"].items()])
    return pd.DataFrame(report["rows"]), scores, files


def run_sweep(ref, dataset, levels, calib_samples, eval_rows, request: gr.Request, progress=gr.Progress()):
    from studio import pruning

    flag = _stop_flag(request)
    try:
        results = pruning.sweep(ref, dataset or "builtin:pydoc", [x for x in str(levels).split() if x],
                                calib_samples=int(calib_samples), calib_len=128, eval_rows=int(eval_rows),
                                progress=_progress(progress), should_stop=flag.is_set)
        folder = pruning.save_sweep(results)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    table = pd.DataFrame(results)
    plot = table[table["method"] != "dense"][["sparsity", "perplexity", "method"]]
    return table, plot, f"Saved: {folder}"


def run_prune(ref, dataset, method, level, out_name, overwrite, request: gr.Request, progress=gr.Progress()):
    from studio import pruning

    flag = _stop_flag(request)
    try:
        sparsity, pattern = pruning.parse_level(level)
        spec = pruning.PruneSpec(method, sparsity, pattern, calib_samples=16, calib_len=128)
        report = pruning.prune_and_save(ref, spec, dataset or "builtin:pydoc", out_name, bool(overwrite),
                                        progress=_progress(progress), should_stop=flag.is_set)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return (f"**{report['label']}**: sparsity {report['measured_sparsity']:.1%}, held-out perplexity "
            f"{report['perplexity_before']:.2f} → {report['perplexity_after']:.2f}. Saved to `{report['path']}`; "
            "load it as a base model (a folder path) in the Model tab.")


def build(shared: Shared) -> None:
    gr.Markdown("Measure the base and your adapters on a prepared dataset's **eval split**: perplexity (masked "
                "exactly like training) and a side-by-side battery of answers with ROUGE. Results are saved with "
                "each adapter's run and added to its card.")
    model_ref = shared.model_ref or gr.Textbox(value="bundled", label="Model")
    quant = shared.quant or gr.Dropdown(["fp32", "bf16", "4bit", "8bit"], value="fp32", label="Quantization")
    with gr.Row():
        dataset = shared.dataset if shared.dataset is not None else gr.Dropdown(
            choices=_dataset_choices(), label="Dataset", elem_id="eval-dataset")
        adapters = gr.Dropdown(choices=_adapter_choices(), multiselect=True, allow_custom_value=True,
                               label="Adapters to compare", elem_id="eval-adapters", scale=2)
        refresh_btn = gr.Button("Refresh lists", scale=0)
    with gr.Row():
        max_rows = gr.Number(value=0, precision=0, label="Eval rows (0 = all)")
        prompts = gr.Slider(1, 64, value=8, step=1, label="Battery prompts")
        max_new = gr.Slider(8, 512, value=128, step=8, label="Max new tokens")
    with gr.Row():
        ppl_btn = gr.Button("Perplexity", variant="primary", elem_id="eval-ppl-btn")
        battery_btn = gr.Button("Battery (answers + ROUGE)", elem_id="eval-battery-btn")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="eval-stop")
    ppl_table = gr.Dataframe(label="Perplexity (lower is better)", elem_id="eval-ppl")
    saved = gr.Markdown(elem_id="eval-saved")
    rouge_table = gr.Dataframe(label="Mean ROUGE F1", elem_id="eval-rouge")
    battery_table = gr.Dataframe(label="Answers side by side", elem_id="eval-battery", wrap=True)
    files = gr.File(label="Battery as CSV and JSONL", file_count="multiple", elem_id="eval-files")

    with gr.Accordion("Pruning: SparseGPT vs magnitude", open=False):
        gr.Markdown("Calibrates on the dataset's train split and measures held-out perplexity on its eval split; "
                    "leave the dataset empty to use `builtin:pydoc` (Python's reference docs, offline).")
        with gr.Row():
            method = gr.Dropdown(["sparsegpt", "magnitude"], value="sparsegpt", label="Method")
            level = gr.Textbox(value="0.5", label="Sparsity (0.5, 50% or 2:4)", elem_id="prune-level")
            out_name = gr.Textbox(value="bundled-sparsegpt-50", label="Save as (exports/...)")
            overwrite = gr.Checkbox(label="Overwrite")
        prune_btn = gr.Button("Prune and save", elem_id="prune-btn")
        prune_info = gr.Markdown(elem_id="prune-info")
        with gr.Row():
            levels = gr.Textbox(value="0 0.25 0.5 0.6 0.7 2:4", label="Sweep levels", elem_id="sweep-levels")
            calib = gr.Slider(4, 128, value=16, step=4, label="Calibration samples (x128 tokens)")
            eval_rows = gr.Slider(4, 256, value=16, step=4, label="Held-out rows")
        sweep_btn = gr.Button("Run sweep", elem_id="sweep-btn")
        sweep_table = gr.Dataframe(label="Perplexity vs sparsity", elem_id="sweep-table")
        sweep_plot = gr.LinePlot(x="sparsity", y="perplexity", color="method", label="Perplexity vs sparsity")
        sweep_info = gr.Markdown()

    if shared.dataset is None:  # no Data tab in this app: this tab's own dataset list needs refreshing too
        refresh_btn.click(refresh_both, None, [dataset, adapters], api_name="eval_refresh")
    else:
        refresh_btn.click(refresh_adapters, None, adapters, api_name="eval_refresh")
    ppl_ev = ppl_btn.click(run_perplexity, [model_ref, quant, dataset, adapters, max_rows], [ppl_table, saved],
                           api_name="eval_perplexity")
    bat_ev = battery_btn.click(run_battery, [model_ref, quant, dataset, adapters, prompts, max_new],
                               [battery_table, rouge_table, files], api_name="eval_battery")
    prune_ev = prune_btn.click(run_prune, [model_ref, dataset, method, level, out_name, overwrite], prune_info,
                               api_name="prune")
    sweep_ev = sweep_btn.click(run_sweep, [model_ref, dataset, levels, calib, eval_rows],
                               [sweep_table, sweep_plot, sweep_info], api_name="prune_sweep")
    stop_btn.click(stop, None, None, api_name="eval_stop", cancels=[ppl_ev, bat_ev, prune_ev, sweep_ev])
