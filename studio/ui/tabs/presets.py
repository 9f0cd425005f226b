"""Presets tab: pick a preset for your memory, edit any field, and see the estimate before training.

The estimate is `studio.presets.estimate_memory`, the same pure function `python -m studio estimate`
prints. The chosen settings go into `shared.preset` (a gr.State dict {quant, lora, train}) that the
Train tab starts runs from.
"""

from __future__ import annotations

from dataclasses import replace

import gradio as gr
import pandas as pd

from studio.config import OPTIMIZERS, PRECISIONS, QUANT_MODES, SCHEDULERS, LoraSpec, Preset, TrainSpec, from_dict
from studio.errors import StudioError
from studio.ui.shared import Shared

TITLE = "Presets"
FROM_MODEL_TAB = "the model chosen in the Model tab"
DETECTED = "Detected hardware"
CUSTOM = "Custom"
EDITED = " (edited)"
PARTS = ("weights", "lora", "grads", "optimizer", "activations", "logits", "overhead")
LORA_FIELDS = ("r", "alpha", "dropout", "target_modules")
TRAIN_FIELDS = ("max_seq_len", "micro_batch", "grad_accum", "lr", "scheduler", "warmup_ratio", "epochs",
                "max_steps", "gradient_checkpointing", "optimizer", "precision", "packing", "logging_steps",
                "eval_steps", "save_steps", "seed")


def detected_hardware() -> tuple[str, float]:
    """(device, memory GB) of this machine: the first GPU's VRAM, else the RAM."""
    from studio.models import hardware

    hw = hardware()
    if hw.cuda_devices:
        return "cuda", round(hw.cuda_devices[0]["total_gb"], 1)
    return "cpu", round(hw.ram_total_gb, 1)


def hardware_choice(choice: str):
    """Picking a GPU (or this machine) fills in the device and the memory."""
    from studio.presets import GPUS

    if choice in GPUS:
        device, memory = GPUS[choice]
    elif choice.startswith(DETECTED):
        device, memory = detected_hardware()
    else:
        return gr.update(), gr.update()
    return device, memory


def preset_values(name: str) -> list:
    """The preset's values for every editable field, in `_fields` order."""
    from studio.presets import load_preset

    try:
        preset = load_preset(name)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return [preset.quant, *(getattr(preset.lora, f) for f in LORA_FIELDS),
            *(getattr(preset.train, f) for f in TRAIN_FIELDS)]


def settings_from(values: list) -> dict:
    """Field values -> the settings dict {quant, lora, train}, validated (ConfigError names the key)."""
    quant, rest = values[0], values[1:]
    lora = dict(zip(LORA_FIELDS, rest[:len(LORA_FIELDS)], strict=True))
    train = dict(zip(TRAIN_FIELDS, rest[len(LORA_FIELDS):], strict=True))
    for key in ("r", "alpha"):
        lora[key] = _int(lora[key])
    for key in ("max_seq_len", "micro_batch", "grad_accum", "max_steps", "logging_steps", "eval_steps",
                "save_steps", "seed"):
        train[key] = _int(train[key])
    from_dict(LoraSpec, lora, "lora")
    from_dict(TrainSpec, train, "train")
    return {"quant": quant, "lora": lora, "train": train}


def _int(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def estimate(model_choice: str, model_ref: str, device: str, memory_gb: float, *values):
    """Every change lands here: (bar data, verdict markdown, breakdown table, settings dict)."""
    from studio.presets import advise, cpu_note, estimate_preset, model_shape

    ref = model_ref if model_choice == FROM_MODEL_TAB else model_choice
    memory = float(memory_gb or 0)
    try:
        settings = settings_from(list(values))
        config = model_shape(ref)
        lora, train = LoraSpec(**settings["lora"]), TrainSpec(**settings["train"])
        preset = Preset(quant=settings["quant"], lora=lora, train=train, device=device, memory_gb=memory)
        est = estimate_preset(config, preset)
    except StudioError as exc:
        return bar_frame({}, memory_gb), f"### Cannot estimate\n{exc}", "", gr.update()
    if est.fits(memory):
        verdict = f"### ✓ Fits: about {est.total:.1f} GB of {memory:g} GB ({ref}, {device})"
    else:
        verdict = f"### ✗ Does not fit: about {est.total:.1f} GB of {memory:g} GB ({ref}, {device})\n" + \
            advise(config, preset, memory)
    if note := cpu_note(config, preset):
        verdict += "\n\n" + note
    table = "| part | GB |\n|---|---|\n" + "\n".join(f"| {k} | {v:.2f} |" for k, v in est.breakdown.items())
    return bar_frame(est.breakdown, memory), verdict, table, settings


BATCH_INFO = "Micro batch: rows processed at once. Lower it when memory is short."
CKPT_LABEL = "Gradient checkpointing"
CKPT_INFO = "Saves memory, costs time."


def what_runs(model_choice: str, model_ref: str, device: str, memory_gb: float, *values):
    """On a CPU the studio decides the rows per pass and checkpointing when the run starts (presets.cpu_pass):
    the Rows per step and Gradient checkpointing fields say what it decides, not only what the preset wrote."""
    from studio.presets import _pass_of, model_shape

    plain = (gr.update(info=BATCH_INFO), gr.update(label=CKPT_LABEL, info=CKPT_INFO))
    if device != "cpu":
        return plain
    ref = model_ref if model_choice == FROM_MODEL_TAB else model_choice
    try:
        settings = settings_from(list(values))
        train = TrainSpec(**settings["train"])
        preset = Preset(quant=settings["quant"], lora=LoraSpec(**settings["lora"]), train=train, device=device,
                        memory_gb=float(memory_gb or 0))
        run = _pass_of(model_shape(ref), preset)
    except (StudioError, TypeError, ValueError):
        return plain
    rows = train.micro_batch * train.grad_accum
    batch = (f"Rows a step: {rows}. Decided at start on this CPU: {run.micro_batch} packed row(s) per pass, "
             f"{run.grad_accum} pass(es) per step (the same rows and gradient).")
    on = "on: a pass needs it to fit" if run.gradient_checkpointing else "off: a pass fits in RAM without it"
    ckpt = (f"{CKPT_LABEL}: decided at start on a CPU ({on})", "Ticked: allowed when RAM is short. Unticked: never.")
    return gr.update(info=batch), gr.update(label=ckpt[0], info=ckpt[1])


def bar_frame(breakdown: dict, memory_gb: float) -> pd.DataFrame:
    """The estimate by part, one bar each (the memory available is in the verdict above: drawn beside
    the parts, a 25 GB machine would flatten them to nothing)."""
    return pd.DataFrame([{"part": part, "GB": round(float(breakdown.get(part, 0.0)), 3)} for part in PARTS])


def recommend(model_choice: str, model_ref: str, device: str, memory_gb: float):
    """The largest preset that fits, picked in the dropdown; otherwise advice in the verdict."""
    from studio.presets import model_shape
    from studio.presets import recommend as pick

    ref = model_ref if model_choice == FROM_MODEL_TAB else model_choice
    try:
        rec = pick(model_shape(ref), float(memory_gb or 0), device)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    if rec.preset is None:
        gr.Warning(rec.advice)
        return gr.update()
    gr.Info(rec.advice)
    return rec.preset


def save(name: str, device: str, memory_gb: float, *values):
    from studio.presets import list_presets, save_preset

    try:
        settings = settings_from(list(values))
        preset = Preset(name=name or "custom", description="Saved from the Presets tab.", memory_gb=float(memory_gb),
                        device=device, quant=settings["quant"], lora=LoraSpec(**settings["lora"]),
                        train=TrainSpec(**settings["train"]))
        path = save_preset(preset, (name or "").strip())
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    gr.Info(f"Saved preset {name} to {path}.")
    return gr.update(choices=list_presets(), value=name)


def _fields(values: list) -> list:
    """Every editable field of a preset, in the order `preset_values` fills them, set to `values`.
    The few a beginner may change come first; the rest sit in a closed accordion."""
    v = iter(values)
    with gr.Row():
        quant = gr.Dropdown(list(QUANT_MODES), value=next(v), label="Precision of the base",
                            info="fp32 on a CPU; 4bit (QLoRA) when GPU memory is short.", elem_id="preset-quant")
        lora = [gr.Number(value=next(v), label="LoRA rank", precision=0, elem_id="preset-r",
                          info="Capacity of the adapter: 8-16 is usual. Higher: more to learn, more memory."),
                gr.Number(value=next(v), label="LoRA alpha", precision=0,
                          info="Strength of the adapter; keep it at 2 x rank."),
                gr.Number(value=next(v), label="LoRA dropout", step=0.01,
                          info="Regularisation; 0.05 is fine. Leave it."),
                gr.Textbox(value=next(v), label="Layers to adapt", elem_id="preset-targets",
                           info="all-linear adapts every projection. Leave it.")]
    with gr.Row():
        size = [gr.Number(value=next(v), label="Max length (tokens)", precision=0, elem_id="preset-seq",
                          info="Longer rows are cut. Lower it when memory is short."),
                gr.Number(value=next(v), label="Rows per step", precision=0, elem_id="preset-batch",
                          info=BATCH_INFO),
                gr.Number(value=next(v), label="Accumulation", precision=0,
                          info="Gradient accumulation: steps of rows summed before one update. Leave it."),
                gr.Number(value=next(v), label="Learning rate", info="How big each update is; 2e-4 suits LoRA.")]
    with gr.Accordion("Advanced (a beginner can leave these)", open=False):
        with gr.Row():
            schedule = [gr.Dropdown(list(SCHEDULERS), value=next(v), label="Scheduler",
                                    info="How the learning rate changes over the run."),
                        gr.Number(value=next(v), label="Warmup share", step=0.01,
                                  info="Share of the steps that ramp the learning rate up."),
                        gr.Number(value=next(v), label="Epochs", info="Passes over the data (when Max steps is -1)."),
                        gr.Number(value=next(v), label="Max steps", precision=0,
                                  info="Updates in total; -1 uses Epochs instead.")]
        with gr.Row():
            compute = [gr.Checkbox(value=next(v), label=CKPT_LABEL, elem_id="preset-ckpt", info=CKPT_INFO),
                       gr.Dropdown(list(OPTIMIZERS), value=next(v), label="Optimizer",
                                   info="8-bit and paged ones need a GPU; adamw_torch works everywhere."),
                       gr.Dropdown(list(PRECISIONS), value=next(v), label="Compute precision",
                                   info="bf16 where the hardware has it; fp32 otherwise."),
                       gr.Checkbox(value=next(v), label="Packing", info="Several short rows in one: no padding.")]
        with gr.Row():
            cadence = [gr.Number(value=next(v), label="Log every N steps", precision=0),
                       gr.Number(value=next(v), label="Evaluate every N steps", precision=0,
                                 info="Loss on the held-out rows (the eval split)."),
                       gr.Number(value=next(v), label="Checkpoint every N steps", precision=0,
                                 info="A kill or Stop loses at most this many steps."),
                       gr.Number(value=next(v), label="Seed", precision=0, info="Same seed, same run.")]
    return [quant, *lora, *size, *schedule, *compute, *cadence]


def edited(current):
    name = current.preset or CUSTOM
    return gr.skip() if name.endswith(EDITED) else replace(current, preset=name + EDITED)


def build(shared: Shared) -> None:
    from studio.presets import GPUS, list_presets, list_shapes

    device0, memory0 = detected_hardware()
    start = shared.current.value.preset or ("cpu" if device0 == "cpu" else "8gb")
    gr.Markdown("Pick a preset for your memory and see what training will need before you press Train. "
                "The estimate works from the model's config alone, so you can size an 8B model without "
                "downloading it. Every field is editable; the chosen settings go to the Train tab.")
    model_ref = shared.model_ref or gr.Textbox(value="bundled", label="Model", visible=False)
    with gr.Row():
        model_choice = gr.Dropdown([FROM_MODEL_TAB, *list_shapes()], value=FROM_MODEL_TAB, label="Model to size",
                                   elem_id="preset-model")
        hardware = gr.Dropdown([f"{DETECTED} ({device0}, {memory0:g} GB)", *GPUS, CUSTOM],
                               value=f"{DETECTED} ({device0}, {memory0:g} GB)", label="Hardware",
                               elem_id="preset-hardware")
        device = gr.Radio(["cuda", "cpu"], value=device0, label="Device", elem_id="preset-device")
        memory = gr.Number(value=memory0, label="Memory (GB)", elem_id="preset-memory")
    with gr.Row():
        preset = gr.Dropdown(list_presets(), value=start, label="Preset", elem_id="preset-name",
                             info="Settings sized for a memory budget; the estimate below checks them.")
        recommend_btn = gr.Button("Recommend a preset", elem_id="preset-recommend")
    fields = _fields(preset_values(start))
    first = estimate(FROM_MODEL_TAB, model_ref.value, device0, memory0, *(f.value for f in fields))
    verdict = gr.Markdown(first[1], elem_id="preset-verdict")
    shown = what_runs(FROM_MODEL_TAB, model_ref.value, device0, memory0, *(f.value for f in fields))
    fields[6].info, fields[13].label, fields[13].info = shown[0]["info"], shown[1]["label"], shown[1]["info"]
    with gr.Row():
        bar = gr.BarPlot(first[0], x="part", y="GB", title="Estimated peak memory by part (GB)", sort=list(PARTS),
                         elem_id="preset-bar", height=320, scale=2)
        table = gr.Markdown(first[2], elem_id="preset-breakdown")
    with gr.Row():
        save_name = gr.Textbox(label="Save these settings as a preset", placeholder="my-16gb-long",
                               elem_id="preset-save-name")
        save_btn = gr.Button("Save preset", elem_id="preset-save")
    from studio.presets import as_settings, load_preset

    shared.preset = gr.State(as_settings(load_preset(start)))
    inputs = [model_choice, model_ref, device, memory, *fields]
    outputs = [bar, verdict, table, shared.preset]
    triggers = [c.input for c in (device, memory, *fields)] + [model_choice.change, model_ref.change]
    gr.on(triggers, estimate, inputs, outputs, api_name="estimate")
    batch_field, ckpt_field = fields[6], fields[13]  # what the CPU recipe decides shows on these two
    gr.on(triggers, what_runs, inputs, [batch_field, ckpt_field], show_progress="hidden", api_visibility="private")
    preset.change(preset_values, preset, fields, api_name="load_preset").then(estimate, inputs, outputs).then(
        what_runs, inputs, [batch_field, ckpt_field], show_progress="hidden")
    preset.change(shared.set("preset"), [shared.current, preset], shared.current, show_progress="hidden")
    for field in fields:  # an edited field: the state line says the preset was edited
        field.input(edited, shared.current, shared.current, show_progress="hidden")
    hardware.change(hardware_choice, hardware, [device, memory]).then(estimate, inputs, outputs)
    recommend_btn.click(recommend, [model_choice, model_ref, device, memory], preset, api_name="recommend_preset")
    save_btn.click(save, [save_name, device, memory, *fields], preset, api_name="save_preset")
