"""Evaluate tab: perplexity and a side-by-side battery (ROUGE) for the base and adapters, and pruning.

Every action runs as a task in its own process (studio.jobs.tasks), calling the same functions as
`python -m studio eval` / `python -m studio prune`: the app never loads a model copy for them. The tab polls
the task's status.json for progress, Stop asks it to stop between batches, and a page opened later (or an
app restarted meanwhile) shows the latest task's state and results. Results are saved next to each
adapter's run and on its card.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from studio.config import QUANT_MODES
from studio.errors import StudioError
from studio.jobs import tasks
from studio.jobs.events import ACTIVE
from studio.ui import fmt
from studio.ui.shared import Shared, cancellable

TITLE = "Evaluate"
POLL_SEC = 0.5  # how often a running action re-reads its task's status.json
WATCH_SEC = 2.0  # how often a page re-reads the latest task (one started before a reload or restart)


def _follow(folder: Path, progress) -> dict:
    """Wait for the task with its progress on the bar; its result, or its error (and fix) as a gr.Error."""
    while (status := tasks.status(folder)).get("state") in ACTIVE:
        progress(status.get("fraction") or 0.0, desc=status.get("message") or "")
        time.sleep(POLL_SEC)
    if status.get("state") != "completed":
        raise gr.Error(tasks.describe(status) or f"The task {status.get('state')}.")
    return tasks.result(folder) or {}


def stop():
    """Stop the running task: first between batches, on a second press at once."""
    folder = tasks.latest()
    said = tasks.stop(folder) if folder else "none"
    gr.Info({"stopping": "Stopping after the current batch...", "killed": "Killed the task."}.get(
        said, "No evaluation or pruning task is running."))


def _need(dataset) -> str:
    if not dataset:
        raise gr.Error("Pick a prepared dataset first (prepare one in the Data tab).")
    return dataset


def _quant(quant, adapters) -> str:
    from studio.ui.tabs.chat import precision_for

    return precision_for(quant, *(adapters or []))[0]


def show_perplexity(report: dict) -> tuple:
    table = fmt.table(pd.DataFrame([{"model": name, **r} for name, r in report["results"].items()]))
    return table, f"Saved: {', '.join(report['saved_to'])}"


def show_battery(report: dict) -> tuple:
    json_path = report["saved_to"][0]
    files = [json_path.replace(".json", ".csv"), json_path.replace(".json", ".jsonl")]
    scores = fmt.table(pd.DataFrame([{"model": name, **s} for name, s in report["rouge"].items()]))
    return pd.DataFrame(report["rows"]), scores, files


def show_prune(report: dict) -> str:
    return (f"**{report['label']}**: sparsity {report['measured_sparsity']:.1%}, held-out perplexity "
            f"{report['perplexity_before']:.2f} → {report['perplexity_after']:.2f}. Saved to `{report['path']}`; "
            "load it as a base model (a folder path) in the Model tab.")


def show_sweep(result: dict) -> tuple:
    table = pd.DataFrame(result["results"])
    plot = table[table["method"] != "dense"][["sparsity", "perplexity", "method"]]
    return table, plot, f"Saved: {result['folder']}"


def run_perplexity(ref, quant, dataset, adapters, max_rows, progress=gr.Progress()):
    from studio.data.preference import dataset_kind

    try:  # a preference dataset (DPO/ORPO pairs) is scored by held-out preference accuracy and reward margin
        kind = "eval_preference" if dataset_kind(_need(dataset)) == "preference" else "eval_perplexity"
        folder = tasks.start(kind, ref=ref, quant=_quant(quant, adapters), dataset_name=dataset,
                             adapters=list(adapters or []), max_rows=int(max_rows) or None)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return show_perplexity(_follow(folder, progress))


def run_battery(ref, quant, dataset, adapters, prompts, max_new_tokens, progress=gr.Progress()):
    try:
        folder = tasks.start("eval_battery", ref=ref, quant=_quant(quant, adapters), dataset_name=_need(dataset),
                             adapters=list(adapters or []), prompts=int(prompts), max_new_tokens=int(max_new_tokens))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return show_battery(_follow(folder, progress))


def show_lm_eval(report: dict) -> tuple:
    """lm-eval scores: one row per (task, metric), base and adapters side by side."""
    counts = ", ".join(f"{task}: {n} items" for task, n in report["samples"].items())
    return (pd.DataFrame(report["table"]), f"lm-eval {report['lm_eval']}; {counts}; value ± standard error. "
            f"Saved: {', '.join(report['saved_to'])}")


def run_lm_eval(ref, quant, adapters, task_names, limit, chat_template, progress=gr.Progress()):
    """Benchmark tasks through lm-eval (studio.lmeval) for the base and the chosen adapters, as a task."""
    if not task_names:
        raise gr.Error("Pick at least one benchmark task.")
    try:
        folder = tasks.start("lm_eval", ref=ref, quant=_quant(quant, adapters), tasks=list(task_names),
                             adapters=list(adapters or []), limit=int(limit or 0) or None,
                             chat_template=bool(chat_template))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return show_lm_eval(_follow(folder, progress))


def show_rewards(report: dict) -> tuple:
    """Mean reward and exact match per model, and the answers side by side with the reference."""
    table = fmt.table(pd.DataFrame([{"model": name, "mean reward": r["mean_reward"], "exact match": r["exact_match"],
                                     **r["per_reward"], "prompts": r["rows"]}
                                    for name, r in report["results"].items()]))
    return table, pd.DataFrame(report["rows"])


def run_rewards(ref, quant, dataset, adapters, max_rows, max_new_tokens, progress=gr.Progress()):
    """Held-out mean reward and exact-match accuracy (GRPO data), with the first GRPO adapter's rewards."""
    try:
        folder = tasks.start("eval_rewards", ref=ref, quant=_quant(quant, adapters), dataset_name=_need(dataset),
                             adapters=list(adapters or []), max_rows=int(max_rows) or None,
                             max_new_tokens=int(max_new_tokens))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return show_rewards(_follow(folder, progress))


def run_sweep(ref, dataset, levels, calib_samples, eval_rows, progress=gr.Progress()):
    try:
        folder = tasks.start("prune_sweep", ref=ref, dataset=dataset or "builtin:pydoc",
                             levels=[x for x in str(levels).split() if x], calib_samples=int(calib_samples),
                             calib_len=128, eval_rows=int(eval_rows))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return show_sweep(_follow(folder, progress))


def run_prune(ref, dataset, method, level, out_name, overwrite, progress=gr.Progress()):
    try:
        folder = tasks.start("prune", ref=ref, dataset=dataset or "builtin:pydoc", out_name=out_name,
                             overwrite=bool(overwrite), method=method, level=str(level), calib_samples=16,
                             calib_len=128)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return show_prune(_follow(folder, progress))


# where each kind's results go among the tab's result outputs (see `build`), and how they are drawn
RESULTS = {"eval_perplexity": (show_perplexity, 0), "eval_preference": (show_perplexity, 0),
           "eval_battery": (show_battery, 2), "prune": (show_prune, 5), "prune_sweep": (show_sweep, 6),
           "lm_eval": (show_lm_eval, 9), "eval_rewards": (show_rewards, 11)}
N_RESULTS = 13


def watch(seen: str | None):
    """The latest task, read from disk: its state line, Stop while it runs, and its results (once) when it
    has completed. A page opened later, or an app restarted meanwhile, loses nothing."""
    folder = tasks.latest()
    results = [gr.skip()] * N_RESULTS
    if folder is None:
        return None, "", gr.Button(interactive=False), *results
    status = tasks.status(folder)
    state, kind = status.get("state"), status.get("kind")
    done = f"{status.get('fraction') or 0:.0%}, " if state in ACTIVE else ""
    line = f"Latest task `{folder.name}`: **{state}** ({done}{tasks.describe(status)})"
    key = f"{folder.name}:{state}"
    if state == "completed" and key != seen and (report := tasks.result(folder)) and kind in RESULTS:
        show, at = RESULTS[kind]
        shown = show(report)
        shown = shown if isinstance(shown, tuple) else (shown,)
        results[at:at + len(shown)] = shown
    return key, line, gr.Button(interactive=state in ACTIVE), *results


EXPLAIN = """Measure the base and your adapters on a saved dataset's **eval split** (rows kept out of training).

- **Perplexity**: how surprised a model is by the held-out answers. Lower is better; a tuned adapter should
  score below the base. It is masked exactly like training (only the answers count).
- **Battery**: each model answers the same held-out questions; **ROUGE** (0 to 1) measures how much of the
  reference answer's wording it reproduces. Higher is better.
- **Held-out reward** (GRPO): each model answers the held-out questions; the GRPO run's rewards score them
  (mean reward) and **exact match** is the share whose final answer equals the reference's. Higher is better.

Results are saved with each adapter's run and added to its card. **Next:** the **Export** tab."""
PPL_COLUMNS = ["model", "perplexity", "loss", "tokens", "rows"]


def _reward_outputs() -> tuple:
    """The held-out reward evaluation's tables: the scores per model, and the answers."""
    return (gr.Dataframe(label="Held-out mean reward and exact match (higher is better)", elem_id="eval-reward"),
            gr.Dataframe(label="Held-out answers (reward evaluation)", wrap=True, elem_id="eval-reward-answers"))


def _pruning_section() -> SimpleNamespace:
    """The pruning accordion's inputs, buttons and outputs (wired to their tasks in `build`)."""
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
    return SimpleNamespace(method=method, level=level, out_name=out_name, overwrite=overwrite, prune_btn=prune_btn,
                           prune_info=prune_info, levels=levels, calib=calib, eval_rows=eval_rows, sweep_btn=sweep_btn,
                           sweep_table=sweep_table, sweep_plot=sweep_plot, sweep_info=sweep_info)


def _lm_eval_section() -> SimpleNamespace:
    """Benchmark tasks through EleutherAI's lm-eval: local task YAMLs, the base and the adapters chosen above."""
    from studio.lmeval import DEFAULT_TASKS, USER_TASKS, available_tasks

    with gr.Accordion("Benchmark tasks (lm-eval)", open=False):
        gr.Markdown("Scores the base and the adapters chosen above on **lm-eval** tasks whose data is local: the "
                    "studio's tiny tasks (`studio_tiny_mc`: 30 multiple-choice facts; `studio_tiny_arith`: 12 sums "
                    f"answered by generation) and your own task YAMLs in the workspace's `{USER_TASKS}/` folder. "
                    "Higher is better; ± is the standard error, so small tasks only show large differences.")
        with gr.Row():
            names = gr.Dropdown(sorted(available_tasks()), value=list(DEFAULT_TASKS), multiselect=True,
                                allow_custom_value=True,
                                label="Tasks", elem_id="lmeval-tasks", scale=2)
            limit = gr.Number(value=0, precision=0, label="Items per task", info="0 = all of each task.")
            chat = gr.Checkbox(label="Chat template", info="Wrap each item in the model's chat template.")
        button = gr.Button("Run benchmark tasks", elem_id="lmeval-btn")
        table = gr.Dataframe(headers=["task", "metric", "base"], label="lm-eval scores (higher is better)",
                             elem_id="lmeval-table")
        info = gr.Markdown(elem_id="lmeval-info")
    return SimpleNamespace(names=names, limit=limit, chat=chat, button=button, table=table, info=info)


def _result_outputs() -> tuple:
    """Perplexity (and where it was saved), ROUGE, the battery's answers and its files."""
    ppl_table = gr.Dataframe(headers=PPL_COLUMNS, label="Perplexity (lower is better)", elem_id="eval-ppl")
    saved = gr.Markdown(elem_id="eval-saved")
    rouge_table = gr.Dataframe(headers=["model", "rouge1", "rouge2", "rougeL"], elem_id="eval-rouge",
                               label="Mean ROUGE F1 (higher is better)")
    battery_table = gr.Dataframe(headers=["question", "reference", "model", "answer"], label="Answers side by side",
                                 elem_id="eval-battery", wrap=True)
    files = gr.File(label="Battery as CSV and JSONL", file_count="multiple", elem_id="eval-files")
    return ppl_table, saved, rouge_table, battery_table, files


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
        reward_btn = gr.Button("Held-out reward (GRPO)", elem_id="eval-reward-btn")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="eval-stop", interactive=False)
    ppl_table, saved, rouge_table, battery_table, files = _result_outputs()
    reward_table, reward_answers = _reward_outputs()
    task_info = gr.Markdown(elem_id="eval-task")
    dataset.input(shared.set("dataset"), [shared.current, dataset], shared.current)
    adapters.input(_focus, [shared.current, adapters], shared.current, show_progress="hidden")
    shared.follow(lambda c, chosen: (gr.Dropdown(choices=list(c.datasets), value=c.dataset),
                                     gr.Dropdown(choices=list(c.adapters), value=_keep(chosen, c))),
                  [dataset, adapters], [adapters])

    prune = _pruning_section()
    bench = _lm_eval_section()

    actions = [(ppl_btn, run_perplexity, [model_ref, quant, dataset, adapters, max_rows], [ppl_table, saved],
                "eval_perplexity"),
               (battery_btn, run_battery, [model_ref, quant, dataset, adapters, prompts, max_new],
                [battery_table, rouge_table, files], "eval_battery"),
               (reward_btn, run_rewards, [model_ref, quant, dataset, adapters, max_rows, max_new],
                [reward_table, reward_answers], "evaluate_rewards"),
               (prune.prune_btn, run_prune, [model_ref, dataset, prune.method, prune.level, prune.out_name,
                                             prune.overwrite], prune.prune_info, "prune"),
               (prune.sweep_btn, run_sweep, [model_ref, dataset, prune.levels, prune.calib, prune.eval_rows],
                [prune.sweep_table, prune.sweep_plot, prune.sweep_info], "prune_sweep"),
               (bench.button, run_lm_eval, [model_ref, quant, adapters, bench.names, bench.limit, bench.chat],
                [bench.table, bench.info], "lm_eval")]
    for btn, fn, inputs, outputs, api in actions:  # no `cancels`: Stop asks the task, whose end the action shows
        cancellable(btn.click, fn, inputs, outputs, api, stop_btn)
    stop_btn.click(stop, None, None, api_name="eval_stop")
    seen = gr.State(None)  # "<task>:<state>" whose results this page has shown already
    results = [ppl_table, saved, battery_table, rouge_table, files, prune.prune_info, prune.sweep_table,
               prune.sweep_plot, prune.sweep_info, bench.table, bench.info, reward_table, reward_answers]
    gr.Timer(WATCH_SEC).tick(watch, seen, [seen, task_info, stop_btn, *results], show_progress="hidden",
                             api_name="eval_task")


def _keep(chosen, current) -> list[str]:
    """The adapters chosen here while they include the one in focus (the header's); else the one in focus:
    the tabs agree on the adapter without a reload."""
    kept = [name for name in chosen or [] if name in current.adapters]
    if current.adapter and current.adapter not in kept:
        return [current.adapter]
    return kept


def _focus(current, chosen):
    """Adding an adapter here brings it into focus (Chat and Export follow); removing the focused one moves it."""
    chosen = [name for name in chosen or [] if name]
    if not chosen or current.adapter == chosen[-1]:
        return gr.skip()
    return replace(current, adapter=chosen[-1])
