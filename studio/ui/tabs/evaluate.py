"""Evaluate tab: perplexity and a side-by-side battery (ROUGE) for the base and adapters, and pruning.

Every action runs the same functions as `python -m studio eval` / `python -m studio prune`; results
are saved next to each adapter's run and on its card. Stop cancels between batches.
"""

from __future__ import annotations

import threading

import gradio as gr
import pandas as pd

from studio.config import QUANT_MODES
from studio.errors import StudioError
from studio.ui import fmt
from studio.ui.shared import Shared, cancellable

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


def _need(dataset) -> str:
    if not dataset:
        raise gr.Error("Pick a prepared dataset first (prepare one in the Data tab).")
    return dataset


def _quant(quant, adapters) -> str:
    from studio.ui.tabs.chat import precision_for

    return precision_for(quant, *(adapters or []))[0]


def run_perplexity(ref, quant, dataset, adapters, max_rows, request: gr.Request, progress=gr.Progress()):
    from studio.data.preference import dataset_kind
    from studio.evaluation import compare_perplexity, compare_preference

    flag = _stop_flag(request)
    try:  # a preference dataset (DPO/ORPO pairs) is scored by held-out preference accuracy and reward margin
        compare = compare_preference if dataset_kind(_need(dataset)) == "preference" else compare_perplexity
        report = compare(ref, _quant(quant, adapters), dataset, list(adapters or []), max_rows=int(max_rows) or None,
                         progress=_progress(progress), should_stop=flag.is_set)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    table = fmt.table(pd.DataFrame([{"model": name, **r} for name, r in report["results"].items()]))
    return table, f"Saved: {', '.join(report['saved_to'])}"


def run_battery(ref, quant, dataset, adapters, prompts, max_new_tokens, request: gr.Request, progress=gr.Progress()):
    from studio.evaluation import compare_battery

    flag = _stop_flag(request)
    try:
        report = compare_battery(ref, _quant(quant, adapters), _need(dataset), list(adapters or []), int(prompts),
                                 int(max_new_tokens), _progress(progress), flag.is_set)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    json_path = report["saved_to"][0]
    files = [json_path.replace(".json", ".csv"), json_path.replace(".json", ".jsonl")]
    scores = fmt.table(pd.DataFrame([{"model": name, **s} for name, s in report["rouge"].items()]))
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


EXPLAIN = """Measure the base and your adapters on a saved dataset's **eval split** (rows kept out of training).

- **Perplexity**: how surprised a model is by the held-out answers. Lower is better; a tuned adapter should
  score below the base. It is masked exactly like training (only the answers count).
- **Battery**: each model answers the same held-out questions; **ROUGE** (0 to 1) measures how much of the
  reference answer's wording it reproduces. Higher is better.

Results are saved with each adapter's run and added to its card. **Next:** the **Export** tab."""
PPL_COLUMNS = ["model", "perplexity", "loss", "tokens", "rows"]


def build(shared: Shared) -> None:
    from studio.ui.tabs.chat import AS_TRAINED

    current = shared.current.value
    gr.Markdown(EXPLAIN)
    model_ref = shared.model_ref or gr.Textbox(value="bundled", label="Model")
    with gr.Row():
        dataset = gr.Dropdown(list(current.datasets), value=current.dataset, label="Dataset", elem_id="eval-dataset",
                              allow_custom_value=True,
                              info="Its eval split is used.")
        adapters = gr.Dropdown(choices=list(current.adapters), value=[current.adapter] if current.adapter else [],
                               multiselect=True, allow_custom_value=True, label="Adapters to compare with the base",
                               elem_id="eval-adapters", scale=2)
        quant = gr.Dropdown([AS_TRAINED, *QUANT_MODES], value=AS_TRAINED, label="Precision of the base",
                            elem_id="eval-precision", info="As the first adapter was trained, unless you choose.")
    with gr.Row():
        max_rows = gr.Number(value=0, precision=0, label="Eval rows", info="0 = all of the eval split.")
        prompts = gr.Slider(1, 64, value=8, step=1, label="Battery questions")
        max_new = gr.Slider(8, 512, value=128, step=8, label="Max new tokens per answer")
    with gr.Row():
        ppl_btn = gr.Button("Perplexity", variant="primary", elem_id="eval-ppl-btn")
        battery_btn = gr.Button("Battery (answers + ROUGE)", elem_id="eval-battery-btn")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="eval-stop", interactive=False)
    ppl_table = gr.Dataframe(headers=PPL_COLUMNS, label="Perplexity (lower is better)", elem_id="eval-ppl")
    saved = gr.Markdown(elem_id="eval-saved")
    rouge_table = gr.Dataframe(headers=["model", "rouge1", "rouge2", "rougeL"], elem_id="eval-rouge",
                               label="Mean ROUGE F1 (higher is better)")
    battery_table = gr.Dataframe(headers=["question", "reference", "model", "answer"], label="Answers side by side",
                                 elem_id="eval-battery", wrap=True)
    files = gr.File(label="Battery as CSV and JSONL", file_count="multiple", elem_id="eval-files")
    dataset.input(shared.set("dataset"), [shared.current, dataset], shared.current)
    shared.follow(lambda c, chosen: (gr.Dropdown(choices=list(c.datasets), value=c.dataset),
                                     gr.Dropdown(choices=list(c.adapters), value=_keep(chosen, c))),
                  [dataset, adapters], [adapters])

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
        sweep_table = gr.Dataframe(headers=["method", "sparsity", "perplexity"], label="Perplexity vs sparsity",
                                   elem_id="sweep-table")
        sweep_plot = gr.LinePlot(x="sparsity", y="perplexity", color="method", label="Perplexity vs sparsity")
        sweep_info = gr.Markdown()

    actions = [(ppl_btn, run_perplexity, [model_ref, quant, dataset, adapters, max_rows], [ppl_table, saved],
                "eval_perplexity"),
               (battery_btn, run_battery, [model_ref, quant, dataset, adapters, prompts, max_new],
                [battery_table, rouge_table, files], "eval_battery"),
               (prune_btn, run_prune, [model_ref, dataset, method, level, out_name, overwrite], prune_info, "prune"),
               (sweep_btn, run_sweep, [model_ref, dataset, levels, calib, eval_rows],
                [sweep_table, sweep_plot, sweep_info], "prune_sweep")]
    runs = [cancellable(btn.click, fn, inputs, outputs, api, stop_btn) for btn, fn, inputs, outputs, api in actions]
    stop_btn.click(stop, None, None, api_name="eval_stop", cancels=runs)


def _keep(chosen, current) -> list[str]:
    """The adapters still on disk among those chosen; the one in focus when none is."""
    kept = [name for name in chosen or [] if name in current.adapters]
    return kept or ([current.adapter] if current.adapter else [])
