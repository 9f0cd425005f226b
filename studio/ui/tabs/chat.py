"""Chat tab: one loaded base, many LoRA adapters; base and tuned answers side by side.

The base and quantization come from the Model tab. Compare mode streams two answers at the same
time from the same prompt and seed (one batched pass, greedy by default, so differences come from
the weights); Chat mode is a multi-turn conversation with one adapter. The adapter registry
(import, export as zip, delete) sits below. All work is done by studio.inference and
studio.adapters, which the `python -m studio chat` and `adapters` commands use too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr

from studio.config import SERVING_QUANTS
from studio.errors import StudioError
from studio.hosted import require_login
from studio.inference import BASE_LABEL, GenerationSettings
from studio.ui import fmt
from studio.ui.shared import Shared

TITLE = "Chat"
AS_TRAINED = "as the adapter was trained"  # the precision choice that follows the adapter's card
ASSETS = Path(__file__).resolve().parents[3] / "assets"
SAMPLE_FILES = ("medical_demo.jsonl", "hinglish_demo.jsonl")
EXAMPLES_PER_SAMPLE = 3  # a few prompts from each sample: enough to try, short enough to scan
GENERATING = "Generating..."  # shown under the panes while tokens stream
THINKING = "thinking…"  # the answer's place until its first token (loading the base and adapter included)
CARD_COLUMNS = ["name", "source", "base_model", "dataset", "r", "alpha", "created", "metrics"]


# ---------------------------------------------------------------- helpers


def example_prompts() -> list[str]:
    """The first user questions of the medical and Hinglish samples (where those files exist)."""
    prompts: list[str] = []
    for name in SAMPLE_FILES:
        path = ASSETS / name
        if not path.is_file():
            continue
        found = []
        for line in path.read_text(encoding="utf-8").splitlines():
            question = _question(line)
            if question and question not in found:
                found.append(question)
            if len(found) == EXAMPLES_PER_SAMPLE:
                break
        prompts += found
    return prompts


def _question(line: str) -> str | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("Question"), str):
        return row["Question"]
    users = [m.get("content") for m in row.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    return users[0] if users and isinstance(users[0], str) else None


def adapter_choices() -> list[str]:
    from studio.adapters import adapter_names

    return adapter_names()


def _adapter(label: str | None) -> str | None:
    return None if not label or label == BASE_LABEL else label


def _settings(max_new, temperature, top_p, top_k, repetition, seed) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=int(max_new), temperature=float(temperature), top_p=float(top_p),
                              top_k=int(top_k), repetition_penalty=float(repetition), seed=int(seed))


def precision_for(quant: str | None, *adapters: str | None) -> tuple[str, str]:
    """(the precision to load the base in, a sentence saying why). AS_TRAINED takes the first adapter's
    training precision from its card, so a base trained in fp32 is not answered in 4bit."""
    from studio.adapters import trained_precision

    if quant and quant != AS_TRAINED:
        return quant, f"base in {quant} (your choice)"
    for name in adapters:
        if (trained := trained_precision(_adapter(name))) is not None:
            return trained, f"base in {trained}, as {name} was trained"
    from studio.ui.shared import default_quant

    fallback = default_quant()
    return fallback, f"base in {fallback} (this machine's default)"


def _engine(ref: str, quant: str, progress=None):
    from studio.inference import get_engine

    report = (lambda f, m: progress(f, desc=m)) if progress is not None else None
    return get_engine((ref or "bundled").strip(), quant or "fp32", progress=report)


def _timing(stats: dict, label: str, precision_note: str) -> str:
    """One plain sentence: what answered, how fast, in which precision, how long the adapter switch took."""
    if stats.get("adapter") is None:
        swap = "no adapter"
    elif stats.get("swap_ms"):
        swap = f"switching to the adapter took {stats['swap_ms']:.1f} ms"
    else:
        swap = "the adapter was already active"
    return (f"<span id='swap-ms-value'>Answered by {label}: {stats.get('tokens', 0)} tokens at "
            f"{fmt.number(stats.get('tokens_per_s') or 0)} tokens/s · {precision_note} · {swap}.</span>")


def _user_turn(system: str, history: list[dict], prompt: str) -> list[dict]:
    head = [{"role": "system", "content": system}] if system and system.strip() else []
    turns = [{"role": m["role"], "content": _text(m["content"])} for m in history or []]
    return head + turns + [{"role": "user", "content": prompt or ""}]


def thinking() -> dict:
    """The assistant's turn before its first token: a pending marker Gradio's Chatbot draws with a spinner."""
    return {"role": "assistant", "content": "", "metadata": {"title": THINKING, "status": "pending"}}


def _text(content) -> str:
    """Chatbot messages may hold a string or a list of {type: text, text: ...} parts."""
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


# ---------------------------------------------------------------- events


def compare(ref, quant, left, right, prompt, system, max_new, temperature, top_p, top_k, repetition, seed,
            left_history, right_history, progress=gr.Progress()):
    """Stream left and right answers to the same prompt at once. Each prompt is asked fresh (with the
    system prompt, without history), so both sides see exactly the same input."""
    asked = [*(left_history or []), {"role": "user", "content": prompt}]
    asked_right = [*(right_history or []), {"role": "user", "content": prompt}]
    yield asked + [thinking()], asked_right + [thinking()], GENERATING, ""  # the question shows at once
    try:
        settings = _settings(max_new, temperature, top_p, top_k, repetition, seed)
        quant, note = precision_for(quant, right, left)
        engine = _engine(ref, quant, progress)
        messages = _user_turn(system, [], prompt)
        stats: dict = {}
        left_out, right_out = asked, asked_right
        for left_text, right_text in engine.compare(messages, settings, _adapter(left), _adapter(right), stats):
            left_out = asked + [{"role": "assistant", "content": left_text}]
            right_out = asked_right + [{"role": "assistant", "content": right_text}]
            yield left_out, right_out, GENERATING, ""
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    timing = (f"<span id='swap-ms-value'>Both answers in one pass: {stats.get('tokens', 0)} tokens at "
              f"{fmt.number(stats.get('tokens_per_s') or 0)} tokens/s · {note}. Same prompt, same seed: the "
              f"difference comes from the adapter. <b>Next:</b> measure it in the <b>Evaluate</b> tab.</span>")
    yield left_out, right_out, timing, ""


def chat(ref, quant, adapter, prompt, system, max_new, temperature, top_p, top_k, repetition, seed, history,
         progress=gr.Progress()):
    """Multi-turn chat with one adapter (or the base): the whole conversation goes through the template."""
    shown = [*(history or []), {"role": "user", "content": prompt}]
    yield shown + [thinking()], GENERATING, ""  # the question shows at once, the answer's place marked
    try:
        settings = _settings(max_new, temperature, top_p, top_k, repetition, seed)
        quant, note = precision_for(quant, adapter)
        engine = _engine(ref, quant, progress)
        messages = _user_turn(system, history, prompt)
        stats: dict = {}
        text = ""
        for piece in engine.answer(messages, settings, _adapter(adapter), stats=stats):
            text += piece
            yield shown + [{"role": "assistant", "content": text}], GENERATING, ""
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    yield shown + [{"role": "assistant", "content": text}], _timing(stats, adapter or BASE_LABEL, note), ""


def load_adapters(ref, quant, names, progress=gr.Progress()):
    """Attach the chosen adapters to the base now (otherwise each loads on first use)."""
    try:
        quant, _ = precision_for(quant, *(names or []))
        engine = _engine(ref, quant, progress)
        times = {name: engine.load_adapter(name) for name in names or []}
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    rows = ", ".join(f"{n} {ms:.0f} ms" if ms else f"{n} (already loaded)" for n, ms in times.items())
    loaded = f"Base {engine.ref} ({engine.quant}) loaded in {engine.loaded.load_seconds:.1f} s."
    return f"{loaded} Adapters: {rows or 'none'}"


def retry_prompt(history: list[dict]):
    """The last question asked, and the history without that exchange (to ask it again)."""
    history = list(history or [])
    users = [i for i, m in enumerate(history) if m["role"] == "user"]
    if not users:
        raise gr.Error("Nothing to retry yet: ask something first.")
    return _text(history[users[-1]]["content"]), history[:users[-1]]


def retry_compare(left_history, right_history):
    prompt, left = retry_prompt(left_history)
    _, right = retry_prompt(right_history)
    return prompt, left, right


def registry_table():
    import pandas as pd

    rows = []
    for info in _list():
        row = info.summary()
        metrics = {k.split(".", 1)[1]: v for k, v in row.items() if k.startswith("metrics.")}
        shown = ", ".join(f"{k} {fmt.number(v)}" for k, v in metrics.items())
        rows.append({**{k: row.get(k, "") for k in CARD_COLUMNS[:-1]}, "metrics": shown})
    return pd.DataFrame(rows, columns=CARD_COLUMNS)


def _list():
    from studio.adapters import list_adapters

    return list_adapters()


def _refreshed(value: str | None = None):
    choices = adapter_choices()
    both = [BASE_LABEL, *choices]
    return (registry_table(), gr.Dropdown(choices=choices, value=value), gr.CheckboxGroup(choices=choices),
            gr.Dropdown(choices=both), gr.Dropdown(choices=both), gr.Dropdown(choices=both))


def refresh():
    return _refreshed()


def import_files(files, name):
    """Import an uploaded adapter: a .zip, or adapter_config.json + adapter_model.safetensors."""
    from studio.adapters import import_adapter

    if not files:
        raise gr.Error("Upload a .zip, or the two files adapter_config.json and adapter_model.safetensors.")
    paths = [f if isinstance(f, str) else f.name for f in (files if isinstance(files, list) else [files])]
    try:
        info = import_adapter(paths, (name or "").strip())
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return f"Imported **{info.name}**: it is in every adapter list now."


def export(name):
    from studio.adapters import export_zip

    if not name:
        raise gr.Error("Pick an adapter to export first.")
    try:
        require_login("exporting files")
        return str(export_zip(name))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc


def delete(name, confirmed):
    from studio.adapters import delete_adapter
    from studio.inference import forget_adapter

    if not name:
        raise gr.Error("Pick an adapter to delete first.")
    if not confirmed:
        raise gr.Error(f"Tick 'Yes, delete this adapter' first: deleting {name} removes its files.")
    try:
        delete_adapter(name)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    forget_adapter(name)
    return f"Deleted **{name}**."


def code_snippet(mode, right, adapter, ref, request: gr.Request = None):
    """curl + Python (openai) for the adapter on screen: the right pane in Compare mode, else Chat's adapter."""
    from studio.serving.snippets import api_snippet

    headers = getattr(request, "headers", None) or {}
    host = headers.get("x-forwarded-host") or headers.get("host") or "127.0.0.1:7860"
    scheme = headers.get("x-forwarded-proto") or "http"
    return api_snippet(_adapter(right if mode == "Compare" else adapter), ref, f"{scheme}://{host}/v1")


def show_mode(mode: str):
    return gr.Group(visible=mode == "Compare"), gr.Group(visible=mode != "Compare")


def run_mode(mode, ref, quant, left, right, adapter, prompt, system, max_new, temperature, top_p, top_k, repetition,
             seed, left_history, right_history, history, progress=gr.Progress()):
    """Send / Enter / Retry: compare in Compare mode, chat in Chat mode; yields every pane."""
    gen = (max_new, temperature, top_p, top_k, repetition, seed)
    if mode == "Compare":
        for lh, rh, timing, box in compare(ref, quant, left, right, prompt, system, *gen, left_history,
                                           right_history, progress):
            yield lh, rh, gr.skip(), timing, box
    else:
        for h, timing, box in chat(ref, quant, adapter, prompt, system, *gen, history, progress):
            yield gr.skip(), gr.skip(), h, timing, box


def retry_mode(mode, left_history, right_history, history):
    """Take back the last exchange of the visible panes and put its question back in the prompt box."""
    if mode == "Compare":
        prompt, left, right = retry_compare(left_history, right_history)
        return prompt, left, right, gr.skip()
    prompt, single = retry_prompt(history)
    return prompt, gr.skip(), gr.skip(), single


# ---------------------------------------------------------------- layout


@dataclass
class Registry:
    table: gr.Dataframe
    picked: gr.Dropdown
    upload: gr.File
    import_name: gr.Textbox
    import_btn: gr.Button
    refresh_btn: gr.Button
    export_btn: gr.Button
    export_file: gr.File
    confirm: gr.Checkbox
    delete_btn: gr.Button
    status: gr.Markdown


def _registry_ui(names: list[str]) -> Registry:
    with gr.Accordion("Adapters: cards, import, export, delete", open=False):
        table = gr.Dataframe(registry_table(), headers=CARD_COLUMNS, label="Adapters (training runs and imported)",
                             interactive=False, elem_id="chat-adapters")
        with gr.Row():
            upload = gr.File(label="Import: a .zip, or adapter_config.json + adapter_model.safetensors",
                             file_count="multiple", file_types=[".zip", ".json", ".safetensors"], scale=3)
            with gr.Column(scale=1):
                import_name = gr.Textbox(label="Name for the imported adapter", elem_id="chat-import-name")
                import_btn = gr.Button("Import", elem_id="chat-import")
                refresh_btn = gr.Button("Refresh list", elem_id="chat-refresh")
        with gr.Row():
            picked = gr.Dropdown(names, value=names[0] if names else None, label="Adapter", elem_id="chat-picked",
                            allow_custom_value=True)
            export_btn = gr.Button("Export zip", elem_id="chat-export")
            confirm = gr.Checkbox(False, label="Yes, delete this adapter", elem_id="chat-delete-confirm")
            delete_btn = gr.Button("Delete", variant="stop", elem_id="chat-delete")
        status = gr.Markdown(elem_id="chat-registry-status")
        export_file = gr.File(label="Exported zip", elem_id="chat-export-file")
    return Registry(table, picked, upload, import_name, import_btn, refresh_btn, export_btn, export_file, confirm,
                    delete_btn, status)


def _template_line(model_ref: str) -> str:
    from studio.models import describe_template

    return fmt.md(describe_template(model_ref))


def _panes(both: list[str], adapter: str | None) -> tuple:
    """The mode switch, Compare's two adapter pickers and panes, and Chat's one (hidden until chosen)."""
    mode = gr.Radio(["Compare", "Chat"], value="Compare", label="Mode", elem_id="chat-mode")
    with gr.Group(visible=True) as compare_group:
        with gr.Row():
            left = gr.Dropdown(both, value=BASE_LABEL, label="Left", elem_id="chat-left-adapter",
                            allow_custom_value=True)
            right = gr.Dropdown(both, value=adapter or BASE_LABEL, label="Right",
                                elem_id="chat-right-adapter",
                            allow_custom_value=True)
        with gr.Row():
            left_pane = gr.Chatbot(label="Left", elem_id="chat-left", buttons=["copy", "copy_all"], height=380)
            right_pane = gr.Chatbot(label="Right", elem_id="chat-right", buttons=["copy", "copy_all"], height=380)
    with gr.Group(visible=False) as chat_group:
        single_adapter = gr.Dropdown(both, value=adapter or BASE_LABEL, label="Adapter", elem_id="chat-adapter",
                            allow_custom_value=True)
        single_pane = gr.Chatbot(label="Chat", elem_id="chat-single", buttons=["copy", "copy_all"], height=420)
    return mode, compare_group, chat_group, left, right, single_adapter, left_pane, right_pane, single_pane


def _prompt_row() -> tuple:
    """The prompt box, its examples, Send / Retry / Clear and the status line under them."""
    prompt = gr.Textbox(label="Prompt", lines=2, elem_id="chat-prompt", placeholder="Ask something...")
    examples = example_prompts()
    if examples:
        gr.Examples([[p] for p in examples], inputs=prompt, label="Examples (medical and Hinglish samples)")
    with gr.Row():
        send = gr.Button("Send", variant="primary", elem_id="chat-send")
        retry = gr.Button("Retry", elem_id="chat-retry")
        clear = gr.Button("Clear", elem_id="chat-clear")
    swap_ms = gr.Markdown(elem_id="chat-swap-ms")
    return prompt, send, retry, clear, swap_ms


def _generation_settings() -> tuple:
    """The "Generation settings" accordion: (system prompt box, [max new, temperature, top-p, top-k,
    repetition penalty, seed])."""
    with gr.Accordion("Generation settings", open=False):
        system = gr.Textbox(label="System prompt", elem_id="chat-system")
        with gr.Row():
            max_new = gr.Slider(1, 1024, value=128, step=1, label="Max new tokens")
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="Top-p")
        with gr.Row():
            top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k")
            repetition = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty")
            seed = gr.Number(value=0, precision=0, label="Seed")
    return system, [max_new, temperature, top_p, top_k, repetition, seed]


def _wire_registry(shared: Shared, reg: Registry, refreshed: list) -> None:
    """Import, refresh, export and delete: results and refusals go to a status line (an error there hides no
    input); the adapter lists follow the shared state."""
    reg.import_btn.click(import_files, [reg.upload, reg.import_name], reg.status, api_name="import_adapter").success(
        lambda c, name: replace(c, adapter=name.strip()).with_disk(), [shared.current, reg.import_name],
        shared.current)
    reg.refresh_btn.click(refresh, None, refreshed, api_name="refresh_adapters")
    reg.export_btn.click(export, reg.picked, reg.export_file, api_name="export_adapter")
    reg.delete_btn.click(delete, [reg.picked, reg.confirm], reg.status, api_name="delete_adapter").success(
        lambda c: (False, c.with_disk()), shared.current, [reg.confirm, shared.current])


def build(shared: Shared) -> None:
    # Adapter dropdowns take custom values: a name typed by hand still works (unknown names get the
    # registry's clear message). The lists follow the shared state: a run that finishes shows up by itself.
    current = shared.current.value
    names = list(current.adapters)
    both = [BASE_LABEL, *names]
    gr.Markdown("Chat with the base model and its LoRA adapters. One copy of the base stays loaded; adapters "
                "attach beside it and swap in milliseconds. **Compare** asks both sides the same prompt with the "
                "same seed (greedy by default), streaming at the same time.")
    with gr.Row():
        precision = gr.Dropdown([AS_TRAINED, *SERVING_QUANTS], value=AS_TRAINED, label="Precision of the base",
                                elem_id="chat-precision", scale=1,
                                info="By default the base is loaded the way the adapter was trained (from its "
                                     "card); pick another to override (q8: int8 weights, the fastest on a CPU).")
        to_load = gr.CheckboxGroup(names, label="Adapters to load now (otherwise each loads when first used)",
                                   elem_id="chat-load-list", scale=3)
        load_btn = gr.Button("Load base + adapters", elem_id="chat-load", scale=1)
    load_info = gr.Markdown(elem_id="chat-load-info")
    template_line = gr.Markdown(elem_id="chat-template")  # the template chat prompts with, and its stop ids
    if shared.model_ref is not None:
        shared.model_ref.change(_template_line, shared.model_ref, template_line, show_progress="hidden")
    mode, compare_group, chat_group, left, right, single_adapter, left_pane, right_pane, single_pane = _panes(
        both, current.adapter)
    prompt, send, retry, clear, swap_ms = _prompt_row()
    system, gen = _generation_settings()
    with gr.Accordion("Call this adapter from your code (OpenAI-compatible API)", open=False):
        snippet = gr.Markdown(code_snippet("Compare", right.value, None, getattr(shared.model_ref, "value", None)),
                              elem_id="chat-api-snippet")
    reg = _registry_ui(names)

    base = [shared.model_ref, precision]
    panes = [left_pane, right_pane, single_pane, swap_ms, prompt]
    # API entry points for gradio_client ("compare", "chat"); Send, Enter and Retry dispatch by mode.
    api_compare = gr.Button("Compare", visible=False)
    api_compare.click(compare, [*base, left, right, prompt, system, *gen, left_pane, right_pane],
                      [left_pane, right_pane, swap_ms, prompt], api_name="compare")
    api_chat = gr.Button("Chat", visible=False)
    api_chat.click(chat, [*base, single_adapter, prompt, system, *gen, single_pane], [single_pane, swap_ms, prompt],
                   api_name="chat")
    run_inputs = [mode, *base, left, right, single_adapter, prompt, system, *gen, left_pane, right_pane, single_pane]
    # the load progress shows under the panes, never over them: the question stays readable from the first moment
    shown = {"api_visibility": "private", "show_progress_on": [swap_ms]}
    send.click(run_mode, run_inputs, panes, **shown)
    prompt.submit(run_mode, run_inputs, panes, **shown)
    retry.click(retry_mode, [mode, left_pane, right_pane, single_pane], [prompt, left_pane, right_pane, single_pane],
                api_visibility="private").success(run_mode, run_inputs, panes, **shown)
    clear.click(lambda: ([], [], [], ""), None, [left_pane, right_pane, single_pane, swap_ms], api_name="clear_chat")
    mode.change(show_mode, mode, [compare_group, chat_group], api_visibility="private")
    load_btn.click(load_adapters, [*base, to_load], load_info, api_name="load_adapters")
    snippet_inputs = [mode, right, single_adapter, shared.model_ref]
    for source in (mode, right, single_adapter):
        source.change(code_snippet, snippet_inputs, snippet, api_visibility="private")

    _wire_registry(shared, reg, [reg.table, reg.picked, to_load, left, right, single_adapter])
    # the adapter picked on the right is the one in focus (Evaluate, Export)
    for picker in (right, single_adapter):  # the adapter picked here is the one in focus everywhere
        picker.input(lambda c, name: shared.set("adapter")(c, name) if _adapter(name) else gr.skip(),
                     [shared.current, picker], shared.current)
    shared.follow(follow_current, [right, left, single_adapter, to_load, reg.picked, reg.table], [left])


def follow_current(current, left):
    """New adapters show up in every list; the adapter in focus (the header's, a run that just finished) is the
    one on the right in Compare and the one Chat mode talks to."""
    both = [BASE_LABEL, *current.adapters]
    left = left if left in both else BASE_LABEL
    focus = current.adapter or BASE_LABEL
    return (gr.Dropdown(choices=both, value=focus), gr.Dropdown(choices=both, value=left),
            gr.Dropdown(choices=both, value=focus), gr.CheckboxGroup(choices=list(current.adapters)),
            gr.Dropdown(choices=list(current.adapters), value=current.adapter), registry_table())
