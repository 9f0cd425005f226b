"""Train tab: start a run in the background, watch its loss, progress and log; stop, resume, delete.

Everything shown is read from runs/<id>/ on a timer, so closing the page or restarting the app
loses nothing: the worker keeps training and the tab picks it up again.
"""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from studio.errors import StudioError
from studio.hosted import require_login
from studio.ui.shared import Shared

TITLE = "Train"
POLL_SEC = 2.0  # how often the tab re-reads the run folder


def _run_choices() -> list[str]:
    from studio.jobs import manager

    return [r["run"] for r in manager.list_runs()]


def _latest_run():
    choices = _run_choices()  # newest first
    return gr.Dropdown(choices=choices, value=choices[0] if choices else None)


NO_CONFIG = "none (one process, or DDP)"


def _config_choices() -> list[str]:
    from studio.jobs import launch_configs

    return list(launch_configs.shipped())


def start(name, dataset, model_ref, settings, max_steps, processes=1, accelerate_config=NO_CONFIG):
    from studio.jobs import launch_configs, manager

    try:
        require_login("training")
        config = launch_configs.shipped().get(accelerate_config, "")  # only the shipped examples are offered
        spec = manager.make_spec(name, dataset, model_ref, settings, int(max_steps or 0) or None,
                                 int(processes or 1), config)
        path = manager.start(spec)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    gr.Info(f"Run {path.name} queued.")
    return gr.Dropdown(choices=_run_choices(), value=path.name)


def _act(action, run_id):
    from studio.jobs import manager

    if not run_id:
        raise gr.Error("Pick a run first.")
    try:
        if action == "resume":
            require_login("training")
        result = getattr(manager, action)(run_id)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    gr.Info(f"{run_id}: {result}")


def stop(run_id):
    _act("stop", run_id)


def resume(run_id):
    _act("resume", run_id)


def delete(run_id, confirmed):
    from studio.jobs import manager

    if not confirmed:
        raise gr.Error("Tick 'Yes, delete this run' first: deleting removes its checkpoints and adapter.")
    try:
        manager.delete(run_id)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    choices = _run_choices()
    return gr.Dropdown(choices=choices, value=choices[0] if choices else None), False


def progress_html(status: dict) -> str:
    step, total = status.get("step") or 0, status.get("total_steps") or 0
    share = step / total if total else 0.0
    eta = status.get("eta_sec")
    eta_text = f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}" if eta else ""
    state = status.get("state", "?")
    return (f"<div id='train-progress' data-state='{state}' data-step='{step}'>"
            f"<b>{state}</b> · step {step} / {total or '?'} · {eta_text}"
            f"<div style='background:#ddd;border-radius:4px;height:14px;margin-top:4px'>"
            f"<div style='background:#f97316;width:{share:.1%};height:14px;border-radius:4px'></div></div>"
            f"<small>{status.get('message', '')} {status.get('fix') or ''}</small></div>")


def loss_frame(events: list[dict]) -> pd.DataFrame | None:
    rows = [{"step": e["step"], "loss": e[key], "series": "train" if key == "loss" else "eval"}
            for e in events if e.get("type") == "log" for key in ("loss", "eval_loss") if key in e]
    # None, not an empty frame: a LinePlot that once got an empty frame keeps nominal axes and draws no line
    return pd.DataFrame(rows, columns=["step", "loss", "series"]) if rows else None


def poll(run_id):
    """Everything the tab shows about one run, read from disk."""
    from studio.jobs import manager
    from studio.jobs.events import log_tail, read_events, read_status

    table = pd.DataFrame(manager.list_runs(), columns=["run", "state", "step", "total_steps", "loss", "created"])
    if not run_id:
        return table, progress_html({}), "", loss_frame([]), ""
    try:
        path = manager.run_dir(run_id)
    except StudioError:
        return table, progress_html({"message": f"Run {run_id} is gone."}), "", loss_frame([]), ""
    status, events = read_status(path), read_events(path)
    last = next((e for e in reversed(events) if e.get("type") == "log" and "loss" in e), {})
    stats = (f"tokens/s **{last.get('tokens_per_sec', '-')}** · memory **{last.get('memory_mb', '-')} MB** · "
             f"loss **{last.get('loss', '-')}** · lr {last.get('lr', '-')}")
    return table, progress_html(status), stats, loss_frame(events), log_tail(path, 25)


def build(shared: Shared) -> None:
    from studio.config import TrainSpec, to_dict

    settings = shared.preset or gr.State({"quant": "4bit", "train": to_dict(TrainSpec())})
    gr.Markdown("Training runs in a separate process: you can close this page or restart the app; "
                "the run goes on and this tab picks it up again. One run trains at a time, others queue.")
    with gr.Row():
        name = gr.Textbox(label="Run name", value=f"run-{time.strftime('%m%d-%H%M')}", elem_id="train-name")
        dataset = shared.dataset or gr.Textbox(label="Dataset (prepared in the Data tab)")
        max_steps = gr.Number(label="Max steps (0 = from the preset)", value=0, precision=0, elem_id="train-max-steps")
        processes = gr.Number(label="Processes (DDP via accelerate)", value=1, precision=0, minimum=1,
                              elem_id="train-processes")
        accelerate_config = gr.Dropdown(label="Accelerate config (examples/accelerate)", value=NO_CONFIG,
                                        choices=[NO_CONFIG, *_config_choices()], elem_id="train-accelerate-config",
                                        info="FSDP / DeepSpeed ZeRO-3 across GPUs; its num_processes applies")
        start_btn = gr.Button("Start training", variant="primary", elem_id="train-start")
    settings_view = gr.JSON(label="Settings (from the Presets tab)", value=settings.value)
    settings.change(lambda s: s, settings, settings_view)
    with gr.Row():
        run = gr.Dropdown(label="Run", choices=_run_choices(), elem_id="train-run", allow_custom_value=True)
        stop_btn = gr.Button("Stop", elem_id="train-stop")
        resume_btn = gr.Button("Resume", elem_id="train-resume")
        confirm = gr.Checkbox(label="Yes, delete this run", value=False)
        delete_btn = gr.Button("Delete", variant="stop")
    progress = gr.HTML(progress_html({}))
    stats = gr.Markdown(elem_id="train-stats")
    plot = gr.LinePlot(None, x="step", y="loss", color="series", title="Loss", elem_id="train-loss",
                       height=280)
    log = gr.Textbox(label="Log (tail)", lines=10, max_lines=10, elem_id="train-log")
    table = gr.Dataframe(label="Runs", interactive=False, elem_id="train-runs")

    start_btn.click(start, [name, dataset, shared.model_ref, settings, max_steps, processes, accelerate_config], run,
                    api_name="start_training")
    stop_btn.click(stop, run, None, api_name="stop_training")
    resume_btn.click(resume, run, None, api_name="resume_training")
    delete_btn.click(delete, [run, confirm], [run, confirm])
    outputs = [table, progress, stats, plot, log]
    run.change(poll, run, outputs, api_name="run_status")
    # after a page reload or app restart: list every run (also those started elsewhere), newest selected
    shared.on_page_load.append((_latest_run, run))
    gr.Timer(POLL_SEC).tick(poll, run, outputs, show_progress="hidden")
