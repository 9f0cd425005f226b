"""The Train tab's method controls (sft / dpo / orpo / grpo / kto with beta, ORPO's lambda, a starting adapter;
GRPO / KTO fields in train_grpo.py) and the live plot of DPO/ORPO/KTO's reward margin and preference accuracy.
Help text comes from studio.config's field metadata."""

from __future__ import annotations

import dataclasses

import gradio as gr
import pandas as pd

from studio.config import METHOD_HELP, METHODS, RunSpec, replace


def with_method(spec: RunSpec, method: str | None, beta, orpo_lambda, from_adapter: str | None) -> RunSpec:
    """The spec with the tab's method fields (validated: a bad beta names the setting and the fix)."""
    train = replace(spec.train, method=method or "sft", beta=float(beta if beta is not None else 0.1),
                    orpo_lambda=float(orpo_lambda if orpo_lambda is not None else 0.1))
    return replace(spec, train=train, from_adapter=(from_adapter or "").strip())


def _adapter_choices() -> list[str]:
    from studio.adapters import adapter_names

    try:
        return ["", *adapter_names()]
    except Exception:  # noqa: BLE001 - an unreadable registry must not break the tab; the field accepts typing
        return [""]


def controls() -> list:
    """[method, beta, orpo_lambda, from_adapter, GRPO and KTO fields] components, in `train.start`'s order."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunSpec().train)}
    with gr.Row():
        method = gr.Radio(list(METHODS), value="sft", label="Method", info=METHOD_HELP["method"],
                          elem_id="train-method")
        beta = gr.Number(defaults["beta"], label="DPO beta", info=METHOD_HELP["beta"], minimum=0.0001,
                         elem_id="train-beta")
        orpo_lambda = gr.Number(defaults["orpo_lambda"], label="ORPO lambda", info=METHOD_HELP["orpo_lambda"],
                                minimum=0.0, elem_id="train-orpo-lambda")
        start_from = gr.Dropdown(_adapter_choices(), value="", label="Start from adapter (optional)",
                                 info=METHOD_HELP["from_adapter"], allow_custom_value=True,
                                 elem_id="train-from-adapter")
    from studio.ui.tabs import train_grpo

    return [method, beta, orpo_lambda, start_from, *train_grpo.controls(method)]  # + GRPO / KTO fields


def preference_frame(events: list[dict]) -> pd.DataFrame | None:
    """Reward margin and preference accuracy (train and eval) per step; None for SFT runs (nothing to draw)."""
    series = {"reward_margin": "train margin", "eval_reward_margin": "eval margin",
              "reward_accuracy": "train accuracy", "eval_reward_accuracy": "eval accuracy"}
    rows = [{"step": e["step"], "value": e[key], "series": label} for e in events if e.get("type") == "log"
            for key, label in series.items() if key in e]
    return pd.DataFrame(rows, columns=["step", "value", "series"]) if rows else None


def preference_status(run_id):
    from studio.errors import StudioError
    from studio.jobs import manager
    from studio.jobs.events import read_events

    if not run_id:
        return None
    try:
        return preference_frame(read_events(manager.run_dir(run_id)))
    except StudioError:
        return None


def shown_for(run_id):
    """The plot only for a DPO / ORPO / KTO run: SFT and GRPO have no reward margin, so no empty box."""
    from studio.config import load_yaml
    from studio.errors import StudioError
    from studio.jobs import manager

    try:
        method = load_yaml(RunSpec, manager.run_dir(run_id) / "spec.yaml").train.method if run_id else "sft"
    except StudioError:
        method = "sft"
    return gr.LinePlot(visible=method in ("dpo", "orpo", "kto"))


def preference_plot(run, poll_sec: float) -> None:
    plot = gr.LinePlot(None, x="step", y="value", color="series", elem_id="train-preference", height=240, visible=False,
                       title="DPO / ORPO: reward margin and preference accuracy (train and eval)")
    run.change(preference_status, run, plot, api_name="preference_status")
    run.change(shown_for, run, plot, show_progress="hidden", api_visibility="private")
    gr.Timer(poll_sec).tick(preference_status, run, plot, show_progress="hidden")


def reward_preview(dataset, model, method_inputs: list) -> None:
    from studio.ui.tabs import train_grpo

    train_grpo.preview_button(dataset, model, method_inputs[4:])


def grpo_plots(run, poll_sec: float) -> None:
    from studio.ui.tabs import train_grpo

    train_grpo.grpo_plots(run, poll_sec)
