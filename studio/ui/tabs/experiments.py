"""Experiments tab: compare runs (overlaid curves, the settings that differ, metrics, data and base), follow a
sweep ranked by its metric (and stop it), and work with a run's checkpoints: branch a new run from one, save
one as an adapter for Chat / Evaluate / Export, download the run's report. The CLI twin is
`python -m studio runs compare|report|checkpoints|branch` and `python -m studio sweep`. No torch import.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.errors import StudioError
from studio.hosted import require_login
from studio.ui.shared import Shared

TITLE = "Experiments"
POLL_SEC = 3.0  # how often the sweep's ranking is re-read while one is shown
CHART_WIDTH = 900  # px: fixed, a chart drawn in a hidden tab measures its container as 0 px wide
CHECKPOINT_COLUMNS = ["step", "loss", "eval_loss", "time"]


def experiment_lists():
    """The runs and sweeps on disk (a page load, or a refresh after a sweep was queued elsewhere)."""
    from studio.experiments import sweeps
    from studio.jobs import manager

    runs = [r["run"] for r in manager.list_runs()]
    return gr.Dropdown(choices=runs), gr.Dropdown(choices=sweeps.list_sweeps()), gr.Dropdown(choices=runs)


def overlay_chart(curves: list[dict], family: str, axis: str):
    """Every run's curves of one family on one axis: a colour a run, solid for train and dashed for eval."""
    import json

    import altair as alt

    from studio.experiments.compare import AXES
    from studio.ui.tabs.train import vega_lite_5

    rows = [{"run": r["run"], "kind": r["series"].rsplit(" · ", 1)[-1], "x": r["x"], "value": r["value"]}
            for r in curves if r["family"] == family]
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    title = f"{family.replace('_', ' ')} by {AXES[axis]}"
    last = int(frame["x"].max())
    # steps: a tick at each whole step (vega-lite would put a "1.5" tick, shown as "2", between 1 and 2)
    ticks = alt.Axis(format="~s") if axis == "tokens" else (
        alt.Axis(values=list(range(1, last + 1)), format="d") if last <= 20 else alt.Axis(tickMinStep=1, format="d"))
    chart = alt.Chart(frame, title=title).mark_line(point=alt.OverlayMarkDef(size=40)).encode(
        x=alt.X("x:Q", title=AXES[axis], axis=ticks),
        y=alt.Y("value:Q", scale=alt.Scale(zero=False), title=family.replace("_", " ")),
        color=alt.Color("run:N", title="run"),
        strokeDash=alt.StrokeDash("kind:N", title=None, scale=alt.Scale(domain=["train", "eval"],
                                                                         range=[[1, 0], [5, 4]])),
        detail="kind:N", tooltip=["run", "kind", "x", alt.Tooltip("value:Q", format=".4f")],
    ).properties(width=CHART_WIDTH, height=300, usermeta={"embedOptions": {"renderer": "svg", "actions": False}})
    return vega_lite_5(json.loads(chart.to_json()))


def compare_runs(runs, axis="step", family="loss"):
    """(family choices, overlaid plot, settings that differ, runs side by side) for the picked runs."""
    from studio.experiments import compare

    if not runs:
        return gr.Dropdown(choices=["loss"], value="loss"), None, pd.DataFrame(), pd.DataFrame()
    try:
        result = compare.compare(list(runs), axis or "step")
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    families = result.families() or ["loss"]
    family = family if family in families else families[0]
    differ = result.differences or [{"setting": "(all settings are the same)"}]
    return (gr.Dropdown(choices=families, value=family), overlay_chart(result.curves, family, axis or "step"),
            as_frame(differ), as_frame(result.summary))


def as_frame(rows: list[dict], columns: list[str] | None = None) -> pd.DataFrame:
    """Rows as text cells, as written (a rank 8 stays 8, not 8.0; a missing value is empty, not nan)."""
    cells = [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
    return pd.DataFrame(cells, columns=columns or (list(rows[0]) if rows else None))


def sweep_ranking(sweep):
    """The sweep's runs, best first, and a line saying where it stands."""
    from studio.experiments import sweeps

    if not sweep:
        return pd.DataFrame(), "Queue a sweep with `python -m studio train --config sweep.yaml --background`."
    try:
        record, rows = sweeps.read(sweep), sweeps.ranking(sweep)
    except StudioError as exc:
        return pd.DataFrame(), str(exc)
    done = sum(r["state"] == "completed" for r in rows)
    best = "lowest" if record.get("direction") != "max" else "highest"
    note = (f"**{sweep}**: {record.get('method')} over {', '.join(record.get('parameters', {}))}; {done} of "
            f"{len(rows)} runs completed, ranked by **{record.get('metric')}** ({best} first)"
            + (" · stopped" if record.get("stopped") else ""))
    return as_frame(rows), note


def stop_sweep(sweep):
    from studio.experiments import sweeps

    if not sweep:
        raise gr.Error("Pick a sweep first.")
    try:
        done = sweeps.stop(sweep)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    message = f"{sweep}: " + (", ".join(f"{run} {what}" for run, what in done.items()) or "nothing left to stop")
    gr.Info(message)
    return message


def sweep_runs(sweep):
    """Put the sweep's runs into the compare picker."""
    from studio.experiments import sweeps

    try:
        return gr.Dropdown(value=sweeps.read(sweep).get("runs", [])) if sweep else gr.skip()
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc


def run_checkpoints(run):
    """The run's checkpoints (step, loss, eval loss, time) and the steps to branch from."""
    from studio.experiments.checkpoints import list_checkpoints
    from studio.jobs import manager

    try:
        rows = list_checkpoints(manager.run_dir(run)) if run else []
    except StudioError:
        rows = []
    steps = [r["step"] for r in rows]
    frame = as_frame([{k: v for k, v in r.items() if k != "path"} for r in rows], CHECKPOINT_COLUMNS)
    return frame, gr.Dropdown(choices=steps, value=steps[len(steps) // 2 - 1] if len(steps) > 1 else
                              (steps[0] if steps else None))


def branch_run(run, step, name, lr, max_steps):
    """Queue a new run from the checkpoint, with the learning rate and max steps typed here."""
    from studio.experiments import checkpoints

    try:
        require_login("training")
        if not run or step in (None, ""):
            raise StudioError("Pick a run and one of its checkpoints first.", "Choose them in the lists above.")
        changes = {"train.lr": float(lr)} if lr else {}
        if max_steps and int(max_steps) > 0:
            changes["train.max_steps"] = int(max_steps)
        path = checkpoints.branch(run, int(step), (name or "").strip(), changes)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    message = f"Queued {path.name}: branched from {run} at step {step}."
    gr.Info(message)
    return message


def checkpoint_adapter(run, step):
    """Save the checkpoint as an adapter, so Chat, Evaluate and Export can pick it."""
    from studio.experiments import checkpoints

    try:
        require_login("saving adapters")
        if not run or step in (None, ""):
            raise StudioError("Pick a run and one of its checkpoints first.", "Choose them in the lists above.")
        name = checkpoints.save_as_adapter(run, int(step))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    message = f"Adapter {name} is ready: pick it in the Chat, Evaluate or Export tab."
    gr.Info(message)
    return message


def run_report(run):
    """The run's HTML report, written to a fresh temporary file for the download (the run folder is untouched)."""
    from studio.experiments import report

    if not run:
        raise gr.Error("Pick a run first.")
    try:
        page = report.build(report.load(run))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    out = Path(tempfile.mkdtemp(prefix="studio-report-")) / f"{run}-report.html"
    out.write_text(page, encoding="utf-8")
    return gr.File(value=str(out), visible=True)


def build(shared: Shared) -> None:
    current = shared.current.value
    gr.Markdown("Compare runs side by side, follow a sweep, and branch from any checkpoint. A sweep is a run "
                "YAML with a `sweep:` section: `python -m studio train --config sweep.yaml --background` "
                "(docs/experiments.md).")
    compare_parts = _compare_section(list(current.runs))
    sweep = _sweep_section(compare_parts[0])
    run = _checkpoint_section(list(current.runs), current.run)
    shared.on_page_load.append((experiment_lists, [compare_parts[0], sweep, run]))


def _compare_section(runs: list[str]):
    with gr.Row():
        picked = gr.Dropdown(runs, value=[], multiselect=True, label="Runs to compare", scale=4,
                             elem_id="exp-runs", info="Any runs, of any method (each draws what it logged).")
        axis = gr.Radio(["step", "tokens"], value="step", label="Axis", elem_id="exp-axis",
                        info="Optimizer steps, or tokens seen (runs with other batch sizes line up by data).")
        family = gr.Dropdown(["loss"], value="loss", label="Curve", elem_id="exp-family",
                             info="Loss (train solid, eval dashed); reward margin / accuracy for preference runs.")
    plot = gr.Plot(label="Overlaid curves", elem_id="exp-plot")
    summary = gr.Dataframe(label="Runs: final metrics, evaluations, throughput, dataset and base", interactive=False,
                           elem_id="exp-summary")
    differ = gr.Dataframe(label="Settings that differ", interactive=False, elem_id="exp-differences")
    outputs = [family, plot, differ, summary]
    gr.on([picked.change, axis.change, family.input], compare_runs, [picked, axis, family], outputs,
          api_name="compare_runs")
    return picked, axis, family


def _sweep_section(picked):
    gr.Markdown("### Sweeps")
    with gr.Row():
        sweep = gr.Dropdown(_sweeps(), value=next(iter(_sweeps()), None), label="Sweep", elem_id="exp-sweep",
                            allow_custom_value=True, scale=3)
        to_compare = gr.Button("Compare its runs", elem_id="exp-sweep-compare")
        stop_btn = gr.Button("Stop sweep", variant="stop", elem_id="exp-sweep-stop")
    note = gr.Markdown(elem_id="exp-sweep-note")
    ranking = gr.Dataframe(label="Ranking (finished runs first, best first)", interactive=False,
                           elem_id="exp-sweep-ranking")
    answer = gr.Textbox(visible=False)
    sweep.change(sweep_ranking, sweep, [ranking, note], api_name="sweep_ranking")
    gr.Timer(POLL_SEC).tick(sweep_ranking, sweep, [ranking, note], show_progress="hidden")
    to_compare.click(sweep_runs, sweep, picked, api_name="compare_sweep")
    stop_btn.click(stop_sweep, sweep, answer, api_name="stop_sweep")
    return sweep


def _sweeps() -> list[str]:
    from studio.experiments import sweeps

    return sweeps.list_sweeps()


def _checkpoint_section(runs: list[str], chosen: str | None):
    gr.Markdown("### Checkpoints and report")
    with gr.Row():
        run = gr.Dropdown(runs, value=chosen, label="Run", elem_id="exp-run", allow_custom_value=True)
        step = gr.Dropdown([], label="Checkpoint step", elem_id="exp-step", allow_custom_value=True)
        report_btn = gr.Button("Report (HTML)", elem_id="exp-report")
    report_file = gr.File(label="Report", elem_id="exp-report-file", interactive=False, visible=False)
    table = gr.Dataframe(pd.DataFrame(columns=CHECKPOINT_COLUMNS), label="Checkpoints", interactive=False,
                         elem_id="exp-checkpoints")
    with gr.Row():
        name = gr.Textbox(label="Branch name", elem_id="exp-branch-name", info="The new run's name.")
        lr = gr.Number(label="Learning rate", value=0, elem_id="exp-branch-lr", info="0: the parent's.")
        max_steps = gr.Number(label="Max steps", value=0, precision=0, elem_id="exp-branch-steps",
                              info="0: the parent's.")
        branch_btn = gr.Button("Branch from checkpoint", variant="primary", elem_id="exp-branch")
        adapter_btn = gr.Button("Save as adapter", elem_id="exp-checkpoint-adapter")
    answer = gr.Textbox(label="", show_label=False, interactive=False, elem_id="exp-answer")
    run.change(run_checkpoints, run, [table, step], api_name="run_checkpoints")
    report_btn.click(run_report, run, report_file, api_name="run_report")
    branch_btn.click(branch_run, [run, step, name, lr, max_steps], answer, api_name="branch_run")
    adapter_btn.click(checkpoint_adapter, [run, step], answer, api_name="checkpoint_adapter")
    return run
