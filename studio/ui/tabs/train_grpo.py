"""The Train tab's GRPO and KTO fields, the reward preview, and GRPO's live curves (mean reward per function,
KL, completion length) with a table of the newest completions and their scores. Help text comes from
studio.config's field metadata; scoring and sampling are `studio.reward_eval`'s, as in the CLI."""

from __future__ import annotations

import dataclasses

import gradio as gr
import pandas as pd
import yaml

from studio.config import GRPO_HELP, REWARD_HELP, GrpoSpec, KtoSpec, RewardSpec, RunSpec, from_dict, replace
from studio.errors import StudioError

DEFAULT_REWARDS = "- {preset: numeric_match, weight: 1.0, extract: last_number}\n" \
                  "- {preset: regex, pattern: '\\d+\\.?\\s*$', weight: 0.2}\n"


def parse_rewards(text: str) -> list[RewardSpec]:
    """The rewards box (a YAML list, as in the run YAML's grpo.rewards) as checked RewardSpecs."""
    try:
        data = yaml.safe_load(text or "")
    except yaml.YAMLError as exc:
        raise StudioError(f"The rewards list is not valid YAML: {exc}",
                          "Write one reward per line, e.g. - {preset: numeric_match, weight: 1.0}.") from exc
    return from_dict(GrpoSpec, {"rewards": data if data is not None else []}).rewards


def with_grpo_kto(spec: RunSpec, num_generations, max_completion_length, grpo_beta, temperature, rewards_text,
                  desirable_weight, undesirable_weight) -> RunSpec:
    """The spec with the tab's GRPO and KTO fields (only the chosen method's are checked against its batch)."""
    grpo = spec.grpo
    if spec.train.method == "grpo":
        grpo = replace(spec.grpo, num_generations=int(num_generations), rewards=parse_rewards(rewards_text),
                       max_completion_length=int(max_completion_length), beta=float(grpo_beta),
                       temperature=float(temperature))
    kto = replace(spec.kto, desirable_weight=float(desirable_weight), undesirable_weight=float(undesirable_weight))
    return replace(spec, grpo=grpo, kto=kto)


def controls(method: gr.Radio) -> list:
    """[num_generations, max_completion_length, grpo_beta, temperature, rewards, desirable, undesirable], shown
    for their method only."""
    g = {f.name: f.default for f in dataclasses.fields(GrpoSpec) if f.name != "rewards"}
    k = KtoSpec()
    with gr.Group(visible=False, elem_id="train-grpo") as grpo_box:
        with gr.Row():
            fields = [gr.Number(g["num_generations"], label="Generations per prompt", precision=0, minimum=2,
                                info=GRPO_HELP["num_generations"], elem_id="train-grpo-generations"),
                      gr.Number(g["max_completion_length"], label="Max answer tokens", precision=0, minimum=1,
                                info=GRPO_HELP["max_completion_length"], elem_id="train-grpo-max-len"),
                      gr.Number(g["beta"], label="KL beta", minimum=0.0, info=GRPO_HELP["beta"],
                                elem_id="train-grpo-beta"),
                      gr.Number(g["temperature"], label="Temperature", minimum=0.01, info=GRPO_HELP["temperature"],
                                elem_id="train-grpo-temperature")]
        fields.append(gr.Code(DEFAULT_REWARDS, language="yaml", label="Rewards (a YAML list; " +
                              REWARD_HELP["preset"] + ")", elem_id="train-grpo-rewards", lines=4))
    with gr.Row(visible=False, elem_id="train-kto") as kto_box:
        fields += [gr.Number(k.desirable_weight, label="KTO desirable weight", minimum=0.0,
                             info="Weight of the loss on answers marked good.", elem_id="train-kto-desirable"),
                   gr.Number(k.undesirable_weight, label="KTO undesirable weight", minimum=0.0,
                             info="Weight of the loss on answers marked bad.", elem_id="train-kto-undesirable")]
    method.change(lambda m: (gr.Group(visible=m == "grpo"), gr.Row(visible=m == "kto")), method,
                  [grpo_box, kto_box], show_progress="hidden", api_name="method_fields")
    return fields


# ---------------------------------------------------------------- the reward preview


def preview(dataset, model_ref, rewards_text, num_generations, max_completion_length, temperature,
            progress=gr.Progress()) -> pd.DataFrame:
    """A few prompts of the dataset, sampled answers from the model, each reward's score: before training."""
    from studio.reward_eval import preview_rewards

    try:
        if not dataset:
            raise StudioError("Choose a dataset first.", "Pick the GRPO dataset in the Dataset list above.")
        rows = preview_rewards(model_ref or "bundled", dataset, parse_rewards(rewards_text),
                               generations=min(int(num_generations or 2), 4),
                               max_new_tokens=int(max_completion_length or 64), temperature=float(temperature or 1.0),
                               progress=lambda f, m: progress(f, desc=m))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return pd.DataFrame(rows)


def preview_button(dataset, model, fields: list) -> None:
    with gr.Accordion("Reward preview: score a few sampled answers before training", open=False):
        button = gr.Button("Preview rewards", elem_id="train-grpo-preview")
        table = gr.Dataframe(interactive=False, wrap=True, elem_id="train-grpo-preview-table")
    generations, max_len, _beta, temperature, rewards_box = fields[:5]
    button.click(preview, [dataset, model, rewards_box, generations, max_len, temperature], table,
                 api_name="preview_rewards")


# ---------------------------------------------------------------- live curves and completions


REWARD_SERIES = ("reward",)  # plus every reward_<function> key


def grpo_frames(events: list[dict]) -> tuple:
    """(rewards per function, KL, completion length, newest completions) frames; Nones for other runs."""
    logs = [e for e in events if e.get("type") == "log" and "reward" in e]
    if not logs:
        return None, None, None, None
    rewards = [{"step": e["step"], "value": v, "series": "total" if k == "reward" else k[len("reward_"):]}
               for e in logs for k, v in e.items() if k == "reward" or (k.startswith("reward_") and k != "reward_std")]
    kl = [{"step": e["step"], "value": e["kl"], "series": "KL"} for e in logs if "kl" in e]
    length = [{"step": e["step"], "value": e["completion_length"], "series": "tokens"} for e in logs
              if "completion_length" in e]
    shown = next((e for e in reversed(events) if e.get("type") == "completions"), None)
    frame = lambda rows: pd.DataFrame(rows, columns=["step", "value", "series"]) if rows else None  # noqa: E731
    table = pd.DataFrame([{"step": shown["step"], **r} for r in shown["rows"]]) if shown else None
    return frame(rewards), frame(kl), frame(length), table


def run_method(run_id) -> str:
    from studio.config import load_yaml
    from studio.jobs import manager

    try:
        return load_yaml(RunSpec, manager.run_dir(run_id) / "spec.yaml").train.method if run_id else "sft"
    except StudioError:
        return "sft"


def grpo_status(run_id):
    from studio.jobs import manager
    from studio.jobs.events import read_events

    if not run_id:
        return None, None, None, None
    try:
        return grpo_frames(read_events(manager.run_dir(run_id)))
    except StudioError:
        return None, None, None, None


def grpo_plots(run, poll_sec: float) -> None:
    with gr.Group(visible=False, elem_id="train-grpo-curves") as box:
        with gr.Row():
            rewards = gr.LinePlot(None, x="step", y="value", color="series", height=220,
                                  elem_id="train-grpo-reward-plot",
                                  title="GRPO: mean reward per function (and the weighted total)")
            kl = gr.LinePlot(None, x="step", y="value", height=220, elem_id="train-grpo-kl", title="GRPO: KL to base")
            length = gr.LinePlot(None, x="step", y="value", height=220, elem_id="train-grpo-length",
                                 title="GRPO: mean completion length (tokens)")
        table = gr.Dataframe(interactive=False, wrap=True, label="Newest completions and their scores",
                             elem_id="train-grpo-completions")
    outputs = [rewards, kl, length, table]
    run.change(grpo_status, run, outputs, api_name="grpo_status")
    run.change(lambda r: gr.Group(visible=run_method(r) == "grpo"), run, box, show_progress="hidden",
               api_name="grpo_shown")
    gr.Timer(poll_sec).tick(grpo_status, run, outputs, show_progress="hidden")
