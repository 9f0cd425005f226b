"""Train tab: pick the dataset and model, start a run in the background, watch its loss, progress and log;
stop, resume, delete.

Everything shown is read from runs/<id>/ on a timer, so closing the page or restarting the app
loses nothing: the worker keeps training and the tab picks it up again.
"""

from __future__ import annotations

import html
import time
from dataclasses import replace

import gradio as gr
import pandas as pd

from studio.errors import StudioError
from studio.hosted import require_login
from studio.ui import fmt, runlog
from studio.ui.shared import Shared

TITLE = "Train"
POLL_SEC = 2.0  # how often the tab re-reads the run folder
LOG_LINES = 25  # lines of the worker's log shown (library noise filtered; worker.log keeps everything)
VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"  # Gradio 6 bundles vega-lite 5.x
CHART_WIDTH = 1000  # px: fixed, since a chart drawn in a hidden tab measures its container as 0 px wide
RUN_COLUMNS = ["run", "state", "step", "total_steps", "loss", "created"]


def _run_choices() -> list[str]:
    from studio.jobs import manager

    return [r["run"] for r in manager.list_runs()]


def _latest_run():
    choices = _run_choices()  # newest first
    return gr.Dropdown(choices=choices, value=choices[0] if choices else None)


NO_CONFIG = "none (one process, or DDP)"


def fresh_run_name() -> str:
    """A new run name, unused on disk: run-MMDD-HHMM, then -2, -3... (on each page load and after each Start)."""
    from studio import paths

    base = f"run-{time.strftime('%m%d-%H%M')}"
    taken = {p.name for p in paths.runs_dir().iterdir()} if paths.runs_dir().is_dir() else set()
    return next(name for n in range(1, len(taken) + 2) if (name := base if n == 1 else f"{base}-{n}") not in taken)


def _config_choices() -> list[str]:
    from studio.jobs import launch_configs

    return list(launch_configs.shipped())


def start(name, dataset, model_ref, settings, max_steps, processes=1, accelerate_config=NO_CONFIG, method="sft",
          beta=0.1, orpo_lambda=0.1, from_adapter="", *grpo_kto):
    from studio.jobs import launch_configs, manager
    from studio.jobs.events import read_status
    from studio.ui.tabs.train_method import with_method

    try:
        require_login("training")
        if not dataset:
            raise StudioError("Choose a dataset to train on.",
                              "Save one in the Data tab first; it then shows up in the Dataset list here.")
        config = launch_configs.shipped().get(accelerate_config, "")  # only the shipped examples are offered
        spec = manager.make_spec(name, dataset, model_ref, settings, int(max_steps or 0) or None,
                                 int(processes or 1), config)
        spec = with_method(spec, method, beta, orpo_lambda, from_adapter)
        if grpo_kto:  # generations, answer length, KL beta, temperature, rewards, KTO weights (train_grpo)
            from studio.ui.tabs.train_grpo import with_grpo_kto

            spec = with_grpo_kto(spec, *grpo_kto)
        path = manager.start(spec)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    state = read_status(path).get("state")
    gr.Info(f"Run {path.name} started." if state == "running" else
            f"Run {path.name} is queued: it starts when the run training now ends.")
    return path.name


def _act(action, run_id) -> str:
    from studio.jobs import manager

    if not run_id:
        raise gr.Error("Pick a run first.")
    try:
        if action == "resume":
            require_login("training")
        result = getattr(manager, action)(run_id)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    gr.Info(f"{run_id}: {result}")  # a passing note: the run's progress line below is its one status line
    return f"{run_id}: {result}"


def stop(run_id):
    return _act("stop", run_id)


def resume(run_id):
    return _act("resume", run_id)


def delete(run_id, confirmed):
    from studio.jobs import manager

    if not confirmed:
        raise gr.Error("Tick 'Yes, delete this run' first: deleting removes its checkpoints and adapter.")
    try:
        manager.delete(run_id)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    gr.Info(f"Deleted {run_id}.")
    return f"Deleted {run_id}."


def progress_html(status: dict, run_id: str = "") -> str:
    """The run's one status line; `data-run` names the run it is about (a new run's line replaces the last one's)."""
    if not status:
        return ("<div id='train-progress' data-state='' data-step='0'>No run selected yet: choose a dataset and "
                "press <b>Start training</b>.</div>")
    step, total = status.get("step") or 0, status.get("total_steps") or 0
    share = step / total if total else 0.0
    state = status.get("state", "?")
    eta_text = f" · {left}" if (left := runlog.time_left(status)) else ""
    steps = f"step {step} of {total}" if total else "waiting for the first step"
    note = " ".join(x for x in (status.get("message", ""), status.get("fix") or "", _next_step(status)) if x)
    return (f"<div id='train-progress' data-run='{html.escape(run_id, quote=True)}' data-state='{state}' "
            f"data-step='{step}'>"
            f"<b>{state}</b> · {steps}{eta_text}"
            f"<div style='background:#ddd;border-radius:4px;height:14px;margin-top:4px'>"
            f"<div style='background:#f97316;width:{share:.1%};height:14px;border-radius:4px'></div></div>"
            f"<small>{note}</small></div>")


def _next_step(status: dict) -> str:
    if status.get("state") == "completed":
        return "<b>Next:</b> open the <b>Chat</b> tab: the new adapter is already picked on the right."
    return ""


def loss_chart(events: list[dict]):
    """Train and eval loss by step: integer steps on the axis, every point drawn (a single eval point too)."""
    import json

    import altair as alt

    rows = [{"step": int(e["step"]), "loss": e[key], "series": "train" if key == "loss" else "eval"}
            for e in events if e.get("type") == "log" for key in ("loss", "eval_loss") if key in e]
    if not rows:
        return None
    frame = pd.DataFrame(rows, columns=["step", "loss", "series"])
    last = int(frame["step"].max())
    # Few steps: a tick at each one (vega-lite would put a "1.5" tick, shown as "2", between 1 and 2).
    ticks = alt.Axis(values=list(range(1, last + 1)), format="d") if last <= 20 else alt.Axis(tickMinStep=1, format="d")
    chart = alt.Chart(frame, title="Loss (lower is better)").mark_line(point=alt.OverlayMarkDef(size=50)).encode(
        x=alt.X("step:Q", axis=ticks, title="step"),
        y=alt.Y("loss:Q", scale=alt.Scale(zero=False), title="loss", axis=alt.Axis(format=".3~g")),
        color=alt.Color("series:N", title=None), tooltip=["series", "step", alt.Tooltip("loss:Q", format=".4f")],
    ).properties(width=CHART_WIDTH, height=260, usermeta={"embedOptions": {"renderer": "svg", "actions": False}})
    return vega_lite_5(json.loads(chart.to_json()))


def vega_lite_5(spec: dict):
    """The chart for gr.Plot, marked as the Vega-Lite major version Gradio's bundled vega-embed draws with (5):
    altair 6 writes its own v6 schema URL, and vega-embed logs a version-mismatch warning on every redraw."""
    import json

    from gradio.components.plot import PlotData

    spec["$schema"] = VEGA_LITE_SCHEMA
    return PlotData(type="altair", plot=json.dumps(spec))


def runs_table() -> pd.DataFrame:
    from studio.jobs import manager

    rows = [{**r, "loss": fmt.number(r["loss"]), "total_steps": r["total_steps"] or ""} for r in manager.list_runs()]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def stats_line(events: list[dict]) -> str:
    last = next((e for e in reversed(events) if e.get("type") == "log" and "loss" in e), {})
    if not last:
        return ""
    line = (f"loss **{fmt.number(last.get('loss'))}** · tokens/s **{fmt.number(last.get('tokens_per_sec'))}** · "
            f"memory **{fmt.megabytes(last.get('memory_mb'))}** · learning rate {runlog.learning_rate(last.get('lr'))}")
    if "reward_margin" in last:  # dpo / orpo
        line += (f" · reward margin **{fmt.number(last['reward_margin'])}** · accuracy "
                 f"**{fmt.number(last.get('reward_accuracy'))}**")
    return line


def run_spec_line(path, events: list[dict], total_steps: int | None) -> str:
    from studio.config import RunSpec, load_yaml

    try:
        spec = load_yaml(RunSpec, path / "spec.yaml")
    except StudioError:
        return ""
    t = spec.train
    line = (f"Run **{spec.name}** ({t.method}): {spec.model.ref} in {spec.model.quant} on dataset "
            f"**{spec.dataset}**, LoRA r={spec.lora.r}, max length {t.max_seq_len}, learning rate "
            f"{runlog.learning_rate(t.lr)}")
    note = runlog.passes_note(events, total_steps, t.epochs, t.max_steps)
    return f"{line}\n\n{note}" if note else line


def poll(run_id):
    """Everything the tab shows about one run, read from disk."""
    from studio.jobs import manager
    from studio.jobs.events import log_tail, read_events, read_status

    table = runs_table()
    if not run_id:
        return table, progress_html({}), "", None, "", ""
    try:
        path = manager.run_dir(run_id)
    except StudioError:
        return table, progress_html({"message": f"Run {run_id} is gone."}), "", None, "", ""
    status, events = read_status(path), read_events(path)
    total = status.get("total_steps")
    stats = "\n\n".join(x for x in (run_spec_line(path, events, total), stats_line(events)) if x)
    log = runlog.human_log(events, total, status.get("message", ""), LOG_LINES)
    return table, progress_html(status, run_id), stats, loss_chart(events), log, log_tail(path, LOG_LINES, quiet=True)


def controls(run_id):
    """Stop only for a run that can be stopped, Resume only for one that can go on, Delete only when idle."""
    from studio.jobs import manager
    from studio.jobs.events import ACTIVE, read_status

    try:
        state = read_status(manager.run_dir(run_id)).get("state") if run_id else None
    except StudioError:
        state = None
    return (gr.Button(interactive=state in ACTIVE), gr.Button(interactive=state in ("stopped", "failed")),
            gr.Button(interactive=state is not None and state not in ("running", "stopping")))


def max_steps_info(settings: dict | None) -> str:
    preset = ((settings or {}).get("train") or {}).get("max_steps")
    said = f"the preset's {preset}" if preset and preset > 0 else "the preset's epochs"
    return f"0 = {said}. Fewer steps: a quicker, rougher try."


def effective_settings(settings: dict | None, max_steps) -> dict:
    """The settings the next run trains with: a Max steps typed here replaces the preset's."""
    settings = dict(settings or {})
    if max_steps and int(max_steps) > 0:
        settings["train"] = {**settings.get("train", {}), "max_steps": int(max_steps)}
    return settings


def what_will_train(current, settings) -> str:
    quant = (settings or {}).get("quant", "?")
    if not current.dataset:
        return ("**No dataset yet.** Save one in the **Data** tab (or pick one below), then press Start training.")
    return (f"Will train **{current.model_ref}** held in **{quant}** on dataset **{current.dataset}** with the "
            f"settings of preset **{current.preset or 'custom'}** (change them in the Presets tab).")


def _template_line(model_ref: str) -> str:
    from studio.models import describe_template

    return fmt.md(describe_template(model_ref))


def build(shared: Shared) -> None:
    from studio.config import TrainSpec, to_dict

    current = shared.current.value
    settings = shared.preset or gr.State({"quant": current.quant, "train": to_dict(TrainSpec())})
    gr.Markdown("Training runs in a separate process: you can close this page or restart the app; "
                "the run goes on and this tab picks it up again. One run trains at a time, others queue.")
    summary = gr.Markdown(what_will_train(current, settings.value), elem_id="train-summary")
    with gr.Row():
        dataset = shared.dataset = gr.Dropdown(list(current.datasets), value=current.dataset, label="Dataset",
                                               elem_id="train-dataset", info="A dataset saved in the Data tab.",
                                               allow_custom_value=True)
        model = gr.Textbox(current.model_ref, label="Model", elem_id="train-model",
                           info="The base to fine-tune (the same as the Model tab).")
        name = gr.Textbox(label="Run name", value=fresh_run_name, elem_id="train-name",  # a callable: each page load
                          info="A new name for each run (a fresh one is suggested); nothing is overwritten.")
    with gr.Row():
        max_steps = gr.Number(label="Max steps", value=0, precision=0, elem_id="train-max-steps",
                              info=max_steps_info(settings.value))
        processes = gr.Number(label="Processes", value=1, precision=0, minimum=1, elem_id="train-processes",
                              info="Data-parallel worker processes (accelerate). Leave at 1 on one GPU or a CPU.")
        accelerate_config = gr.Dropdown(label="Accelerate config (examples/accelerate)", value=NO_CONFIG,
                                        choices=[NO_CONFIG, *_config_choices()], elem_id="train-accelerate-config",
                                        info="FSDP / DeepSpeed ZeRO-3 across GPUs; its num_processes applies. "
                                             "Leave it at none on one GPU or a CPU.")
        start_btn = gr.Button("Start training", variant="primary", elem_id="train-start")
    template_line = gr.Markdown(elem_id="train-template")  # which chat template the run trains with, and why
    if shared.model_ref is not None:
        shared.model_ref.change(_template_line, shared.model_ref, template_line, show_progress="hidden")
    from studio.ui.tabs import train_method

    method_inputs = train_method.controls()  # method, beta, ORPO lambda, starting adapter, GRPO / KTO fields
    train_method.reward_preview(dataset, model, method_inputs)  # GRPO: score sampled answers before training
    with gr.Accordion("Settings for the next run (from the Presets tab)", open=False):
        settings_view = gr.JSON(value=settings.value, elem_id="train-settings")
    settings.change(lambda s: gr.Number(info=max_steps_info(s)), settings, max_steps, show_progress="hidden")
    gr.on([settings.change, max_steps.change], effective_settings, [settings, max_steps], settings_view,
          show_progress="hidden")
    with gr.Row():
        run = gr.Dropdown(label="Run", choices=list(current.runs), value=current.run, elem_id="train-run",
                          allow_custom_value=True, info="The run shown below (newest first).")
        stop_btn = gr.Button("Stop", elem_id="train-stop", interactive=False)
        resume_btn = gr.Button("Resume", elem_id="train-resume", interactive=False)
        confirm = gr.Checkbox(label="Yes, delete this run", value=False, elem_id="train-delete-confirm")
        delete_btn = gr.Button("Delete", variant="stop", elem_id="train-delete", interactive=False)
    action_info = gr.Textbox(visible=False)  # the action's answer for API callers; people see a toast
    progress = gr.HTML(progress_html({}), elem_id="train-progress-box")  # the run's one status line
    stats = gr.Markdown(elem_id="train-stats")
    plot = gr.Plot(label="Loss", elem_id="train-loss")
    log = gr.Textbox(label="Log (newest last)", lines=12, max_lines=12, autoscroll=True, elem_id="train-log")
    with gr.Accordion("Raw worker log (what the worker printed; library notices are kept in worker.log only)",
                      open=False):
        raw_log = gr.Textbox(show_label=False, lines=12, max_lines=12, autoscroll=True, elem_id="train-raw-log")
    # Gradio's autoscroll can run before a long update is laid out; scroll to the newest line after it too.
    log.change(None, None, None, js="() => { const t = document.querySelector('#train-log textarea'); "
                                   "if (t) requestAnimationFrame(() => { t.scrollTop = t.scrollHeight; }); }")
    table = gr.Dataframe(runs_table(), headers=RUN_COLUMNS, label="Runs", interactive=False, elem_id="train-runs")
    _wire(shared, settings, summary, dataset, model, name, max_steps, processes, start_btn, run,
          (stop_btn, resume_btn, confirm, delete_btn, action_info), [table, progress, stats, plot, log, raw_log],
          [accelerate_config, *method_inputs])


def _wire(shared, settings, summary, dataset, model, name, max_steps, processes, start_btn, run, buttons,
          outputs, extra_inputs) -> None:
    stop_btn, resume_btn, confirm, delete_btn, action_info = buttons
    current = shared.current
    dataset.input(shared.set("dataset"), [current, dataset], current)
    shared.set_on_commit(model, "model_ref")
    run.input(shared.set("run"), [current, run], current)
    shared.follow(lambda c, ref: (gr.Dropdown(choices=list(c.datasets), value=c.dataset),
                                  gr.skip() if ref == c.model_ref else c.model_ref,  # never over keys typed
                                  gr.Dropdown(choices=list(c.runs), value=c.run)), [dataset, model, run], [model])
    shared.follow(what_will_train, [summary], [settings])
    settings.change(what_will_train, [current, settings], summary)
    started = gr.Textbox(visible=False)  # the new run's name: a failed Start leaves no error mark on an input
    start_btn.click(start, [name, dataset, model, settings, max_steps, processes, *extra_inputs], started,
                    api_name="start_training").success(lambda c, new: c.with_disk() if c.run == new else
                                                       replace(c, run=new).with_disk(), [current, started], current
                                                       ).then(fresh_run_name, None, name, show_progress="hidden")
    stop_btn.click(stop, run, action_info, api_name="stop_training")
    resume_btn.click(resume, run, action_info, api_name="resume_training")
    delete_btn.click(delete, [run, confirm], action_info).success(
        lambda: False, None, confirm).then(lambda c: c.with_disk(), current, current)
    run.change(poll, run, outputs, api_name="run_status")
    run.change(controls, run, [stop_btn, resume_btn, delete_btn], show_progress="hidden")
    # after a page reload or app restart: list every run (also those started elsewhere), newest selected
    shared.on_page_load.append((_latest_run, run))
    timer = gr.Timer(POLL_SEC)
    timer.tick(poll, run, outputs, show_progress="hidden")
    timer.tick(controls, run, [stop_btn, resume_btn, delete_btn], show_progress="hidden")
    from studio.ui.tabs import train_method

    train_method.preference_plot(run, POLL_SEC)  # reward margin and accuracy of dpo / orpo / kto runs, live
    train_method.grpo_plots(run, POLL_SEC)  # grpo: reward per function, KL, length, newest completions
