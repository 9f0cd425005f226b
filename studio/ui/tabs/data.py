"""Data tab: a file (uploaded, or a sample) -> detected format and evidence -> preview, problems,
chat-template view, token lengths -> Save as a named dataset for the Train and Evaluate tabs.

Every action calls studio.data.store, which the CLI (`python -m studio data ...`) calls too.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.errors import StudioError
from studio.hosted import checked_path
from studio.ui.fmt import md as markdown_text
from studio.ui.shared import Shared

TITLE = "Data"
ASSETS = Path(__file__).resolve().parents[3] / "assets"
SAMPLES = {"medical": ASSETS / "medical_demo.jsonl", "hinglish": ASSETS / "hinglish_demo.jsonl"}
FORMAT_CHOICES = ["auto", "alpaca", "sharegpt", "openai", "prompt_completion", "reasoning", "text", "mapped"]
PREVIEW_CHARS = 300  # characters of each turn shown in the preview table
NONE = "(none)"  # the dropdown choice for "no column"
_TEMPLATE_COLORS = {"trained": "#86efac", "chunk break": "#93c5fd", "cut off": "#fca5a5"}  # trained in green
SYSTEM_CHOICES = [("keep the template's", "keep"), ("none", "none"), ("my own", "custom")]


def _mapping(fmt: str, prompt: str | None, response: str | None, system: str | None) -> dict | None:
    """The user's column mapping, only for the 'mapped' format (other formats find their columns)."""
    if fmt != "mapped":
        return None
    chosen = {"prompt": prompt, "response": response, "system": system}
    return {k: v for k, v in chosen.items() if v and v != NONE} or None


def row_options(system_mode: str, system_text: str, name: str, author: str, train_tool_calls: bool):
    """The Options every row gets (the same object the CLI builds from its flags)."""
    from studio.data.formats import Options, identity_replacements

    return Options(system=system_mode or "keep", system_text=system_text or "",
                   replacements=identity_replacements(name or "", author or ""),
                   train_tool_calls=bool(train_tool_calls)).check()


def _tokenizer(model_ref: str | None):
    """(tokenizer, warning): token counts are a bonus, so a model that cannot load is a warning."""
    from studio.data.store import tokenizer_for
    from studio.models import default_model_ref

    ref = (model_ref or "").strip() or default_model_ref()
    try:
        return tokenizer_for(ref), ""
    except StudioError as exc:
        return None, f"Token counts are off: the tokenizer of {ref!r} cannot load ({exc.message})."


def _clip(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."


def _shown(message: dict) -> str:
    """A turn's text for the preview table; a tool call as name(arguments)."""
    calls = [f"{c['function']['name']}({json.dumps(c['function'].get('arguments') or {}, ensure_ascii=False)})"
             for c in message.get("tool_calls") or []]
    return "\n".join([message["content"]] * bool(message["content"]) + [f"[tool call] {c}" for c in calls])


def preview_table(preview: list[tuple[int, list[dict]]]) -> pd.DataFrame:
    rows = []
    for row, messages in preview:
        first = {role: next((_shown(m) for m in messages if m["role"] == role), "")
                 for role in ("system", "user", "assistant")}
        rows.append({"row": row, "turns": len(messages), "system": _clip(first["system"]),
                     "user": _clip(first["user"]), "assistant": _clip(first["assistant"])})
    return pd.DataFrame(rows, columns=["row", "turns", "system", "user", "assistant"])


def _findings(report) -> str:
    """Tool rows, placeholders and identity statements: what the user may want to change before saving."""
    lines = []
    if report.token_stats is not None:
        lines.append(f"Max length: {report.cuts_line()}.")
    if report.tool_rows:
        lines.append(f"{report.tool_rows:,} rows use tools (definitions, calls or results); tool calls are "
                     f"{'trained' if report.options.train_tool_calls else 'not trained'}, tool results never.")
    if report.placeholders:
        from studio.data.formats import placeholder_key

        replaced = report.options.replacements
        found = ", ".join(f"`{p}` ({n:,} rows" + (f", replaced by '{replaced[placeholder_key(p)]}')"
                                                   if placeholder_key(p) in replaced else ", not replaced)")
                          for p, n in report.placeholders.items())
        lines.append(f"Placeholders found: {found}. The name/author fields replace them before saving.")
    if report.identity_rows:
        lines.append(f"{report.identity_rows:,} rows say who the assistant is: check the name and maker match yours.")
    return "\n\n".join(lines)


def problems_outputs(report) -> tuple[str, pd.DataFrame, str | None]:
    """A count line, the table and a downloadable JSONL of every listed problem."""
    counts = (f"**{report.rows_in:,} rows read: {report.rows_ok:,} ok, {report.rows_invalid:,} invalid, "
              f"{report.duplicates:,} duplicates removed.**")
    if report.rows_ok == 0:
        counts += f" No row can be trained on: {report.problems[0].reason if report.problems else 'no rows'}."
    findings = _findings(report)
    counts += f"\n\n{findings}" if findings else ""
    table = pd.DataFrame([p.as_dict() for p in report.problems], columns=["row", "kind", "reason"])
    if not report.problems:
        return counts + " No problems.", table, None
    out = Path(tempfile.mkdtemp(prefix="studio-problems-")) / "problems.jsonl"
    out.write_text("".join(json.dumps(p.as_dict(), ensure_ascii=False) + "\n" for p in report.problems),
                   encoding="utf-8")
    return counts, table, str(out)


def histogram(stats: dict | None, tokenized: bool = True):
    if not stats or not stats.get("rows"):
        why = "no row is usable" if tokenized else "the tokenizer did not load (see the notes)"
        return gr.BarPlot(value=pd.DataFrame({"tokens": [], "rows": []})), f"No token counts: {why}."
    edges, counts = stats["histogram"]["edges"], stats["histogram"]["counts"]
    labels = [f"{int(a)}-{int(b)}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    df = pd.DataFrame({"tokens": labels, "rows": counts})
    text = (f"Tokens per row: mean {stats['mean']}, median {stats['median']}, p95 {stats['p95']}, max {stats['max']}. "
            f"**{stats['over_max_len']:,} rows ({stats['over_max_len_share']:.1%}) are over the max length of "
            f"{stats['max_len']}** (cut, or split into chunks for raw text: see the counts above).")
    return gr.BarPlot(value=df, x="tokens", y="rows", sort=labels), text


def _runs(tokenizer, items, max_len: int) -> list[tuple[str, str | None]]:
    """The saved rows of one source row as highlighted runs, with chunk breaks and cuts marked."""
    from studio.data.render import highlight

    runs: list[tuple[str, str | None]] = []
    for n, item in enumerate(items, start=1):
        if len(items) > 1:
            runs.append((f" chunk {n} of {len(items)} ", "chunk break"))
        runs += highlight(tokenizer, item.input_ids, item.assistant_masks)
        if item.dropped:
            runs.append((f" {item.dropped:,} tokens cut off at max length {max_len} ", "cut off"))
    return runs


def template_view(path: str, row: float | None, fmt: str, mapping: dict | None, cot_style: str, model_ref: str,
                  max_len: float, train_on_all: bool, options=None, long_docs: str = "chunk"):
    """The chosen row exactly as Save writes it (same rendering path), trained tokens highlighted."""
    from studio.data import store
    from studio.data.render import template_warning

    tokenizer, warning = _tokenizer(model_ref)
    if not path or row is None:
        return [], warning
    fmt = None if fmt == "auto" else fmt
    if tokenizer is None:
        messages = store.conversation_at(path, int(row), fmt, mapping, cot_style, options)
        return [(json.dumps(messages, indent=2, ensure_ascii=False), None)], warning
    _, items = store.preview_row(path, int(row), tokenizer, fmt, mapping, cot_style, options, int(max_len),
                                 bool(train_on_all), long_docs)
    return _runs(tokenizer, items, int(max_len)), markdown_text(template_warning(tokenizer) or warning or "")


def inspect_data(path: str, fmt: str, prompt: str, response: str, system: str, cot_style: str, model_ref: str,
                 max_len: float, train_on_all: bool, system_mode: str = "keep", system_text: str = "",
                 name_field: str = "", author_field: str = "", train_tool_calls: bool = True,
                 long_docs: str = "chunk", progress=gr.Progress()):
    """Everything the tab shows about a file; the api_name 'inspect_data' event."""
    from studio.data import store

    if not path:
        raise gr.Error("Choose a file first: upload one, or load a sample.")
    try:
        path = checked_path(path)  # hosted mode: only the studio's own folders
        tokenizer, warning = _tokenizer(model_ref)
        mapping = _mapping(fmt, prompt, response, system)
        options = row_options(system_mode, system_text, name_field, author_field, train_tool_calls)
        report = store.inspect(path, None if fmt == "auto" else fmt, mapping, cot_style, tokenizer, int(max_len),
                               bool(train_on_all), progress=lambda f, m: progress(f, desc=m), options=options,
                               long_docs=long_docs)
        first_row = report.preview[0][0] if report.preview else None
        template, template_note = template_view(path, first_row, fmt, mapping, cot_style, model_ref, max_len,
                                                train_on_all, options, long_docs) if first_row else ([], "")
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    detection = report.detection
    evidence = f"**Detected format: {detection.format}** ({detection.evidence})"
    if report.format != detection.format:
        evidence += f"\n\nUsing **{report.format}** as chosen."
    columns = [NONE, *map(str, detection.columns)]
    guess = detection.mapping if detection.format == "mapped" else {}
    dropdowns = [gr.Dropdown(choices=columns, value=(chosen if chosen in columns[1:] else guess.get(part, NONE)))
                 for part, chosen in (("prompt", prompt), ("response", response), ("system", system))]
    counts, table, download = problems_outputs(report)
    plot, stats_text = histogram(report.token_stats, tokenizer is not None)
    notes = "\n\n".join(dict.fromkeys(n for n in (markdown_text(report.template_warning or ""), template_note, warning,
                                                    *report.notes) if n))
    return (path, evidence, *dropdowns, preview_table(report.preview), counts, table, download, plot, stats_text,
            first_row, template, notes)


def show_row(path, row, fmt, prompt, response, system, cot_style, model_ref, max_len, train_on_all,
             system_mode="keep", system_text="", name_field="", author_field="", train_tool_calls=True,
             long_docs="chunk"):
    try:
        path = checked_path(path)  # hosted mode: only the studio's own folders
        options = row_options(system_mode, system_text, name_field, author_field, train_tool_calls)
        return template_view(path, row, fmt, _mapping(fmt, prompt, response, system), cot_style, model_ref,
                             max_len, train_on_all, options, long_docs)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc


def save(path, fmt, prompt, response, system, cot_style, model_ref, name, max_len, eval_split, seed, train_on_all,
         overwrite, system_mode="keep", system_text="", name_field="", author_field="", train_tool_calls=True,
         long_docs="chunk", progress=gr.Progress()):
    """Prepare and save the dataset by name; the api_name 'prepare_data' event."""
    from studio.data import store
    from studio.models import default_model_ref

    if not path:
        raise gr.Error("Choose a file first: upload one, or load a sample.")
    try:
        path = checked_path(path)  # hosted mode: only the studio's own folders
        folder = store.prepare(path, (model_ref or "").strip() or default_model_ref(), (name or "").strip(),
                               max_len=int(max_len), eval_split=float(eval_split),
                               fmt=None if fmt == "auto" else fmt, mapping=_mapping(fmt, prompt, response, system),
                               cot_style=cot_style, train_on_all=bool(train_on_all), seed=int(seed),
                               overwrite=bool(overwrite), progress=lambda f, m: progress(f, desc=m),
                               options=row_options(system_mode, system_text, name_field, author_field,
                                                   train_tool_calls), long_docs=long_docs)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    c = meta["counts"]
    text = (f"Saved **{meta['name']}** in `{folder}`: {c['train']:,} train and {c['eval']:,} eval rows from "
            f"{c['rows_ok']:,} usable rows ({c['rows_invalid']:,} invalid, {c['duplicates']:,} duplicates left out; "
            f"see problems.jsonl there). Max length: {meta['cuts']}. System prompt: {meta['system_prompt']['mode']}.")
    text += "\n\n**Next:** the **Presets** tab (settings for this machine), then **Train** (this dataset is picked)."
    return text, meta["name"]


SAVED_COLUMNS = ["name", "kind", "format", "train rows", "eval rows", "max length", "model", "created"]


def saved_table() -> pd.DataFrame:
    """Every saved dataset, newest first: what the Train and Evaluate tabs offer."""
    from studio.data.store import list_datasets

    metas = sorted(list_datasets(), key=lambda m: str(m.get("created") or ""), reverse=True)
    rows = [{"name": m["name"], "kind": m.get("kind", "chat"), "format": m.get("format", ""),
             "train rows": (m.get("counts") or {}).get("train", ""),
             "eval rows": (m.get("counts") or {}).get("eval", ""), "max length": m.get("max_len", ""),
             "model": Path(str(m.get("model_ref", ""))).name,
             "created": str(m.get("created") or "")[:16].replace("T", " ")} for m in metas]
    return pd.DataFrame(rows, columns=SAVED_COLUMNS)


def _saved_list(shared: Shared) -> None:
    """The saved datasets, kept current: a dataset saved here or elsewhere shows up, after a reload too."""
    saved_list = gr.Dataframe(saved_table(), label="Saved datasets (pick one in the Train and Evaluate tabs)",
                              interactive=False, elem_id="data-saved-list", max_height=220)
    shared.follow(lambda c: saved_table(), [saved_list])


def dataset_names() -> list[str]:
    from studio.data.store import list_datasets

    return [meta["name"] for meta in list_datasets()]


def sample_path(which: str) -> str:
    return str(SAMPLES[which])


def _preset_max_len(shared: Shared) -> int:
    """The starting preset's max length, so Data and Presets agree from the start."""
    from studio.presets import load_preset

    try:
        return load_preset(shared.current.value.preset or "cpu").train.max_seq_len
    except StudioError:
        return 512


def _mapping_section() -> tuple:
    """The column mapping for format 'mapped': (prompt, response, system) column pickers."""
    with gr.Accordion("Column mapping (format 'mapped')", open=False):
        with gr.Row():
            # Custom values allowed: a column name may be typed, and choices change with every file.
            prompt = gr.Dropdown([NONE], value=NONE, label="Prompt column", allow_custom_value=True,
                                 elem_id="data-map-prompt")
            response = gr.Dropdown([NONE], value=NONE, label="Response column", allow_custom_value=True,
                                   elem_id="data-map-response")
            system = gr.Dropdown([NONE], value=NONE, label="System column (optional)", allow_custom_value=True,
                                 elem_id="data-map-system")
    return prompt, response, system


def _problems_section() -> tuple:
    """The problem rows table and its download, in a box shown only when there are problems."""
    with gr.Accordion("Problems (row, reason)", open=False, visible=False, elem_id="data-problems-box") as box:
        problems = gr.Dataframe(headers=["row", "kind", "reason"], interactive=False, wrap=True,
                                elem_id="data-problems")
        problems_file = gr.File(label="Download problems.jsonl", elem_id="data-problems-file")
    return box, problems, problems_file


def _render_options(shared: Shared) -> tuple:
    """How rows are rendered and saved: row shown, max length, what is trained, long text, system prompt and
    the placeholders' values."""
    with gr.Row():
        row = gr.Number(label="Row to show through the chat template", precision=0, elem_id="data-row")
        max_len = gr.Number(_preset_max_len(shared), label="Max length (tokens)", precision=0, minimum=16,
                            elem_id="data-max-len", info="The same as the preset's: longer rows are cut.")
        train_on_all = gr.Checkbox(False, label="Train on everything (not only the answers)",
                                   elem_id="data-train-on-all")
        train_tool_calls = gr.Checkbox(True, label="Train the assistant's tool calls (tool results never)",
                                       elem_id="data-train-tool-calls")
        long_docs = gr.Radio([("split into chunks", "chunk"), ("cut (drop the rest)", "cut")], value="chunk",
                             label="Raw text longer than the max length", elem_id="data-long-docs")
    with gr.Row():
        system_mode = gr.Radio(SYSTEM_CHOICES, value="keep", label="System prompt for rows without one",
                               info="A row's own system turn always stays. The choice is saved with the dataset.",
                               elem_id="data-system-mode")
        system_text = gr.Textbox("", label="My own system prompt", placeholder="You are ...",
                                 elem_id="data-system-text")
        name_field = gr.Textbox("", label="Assistant name (replaces {{name}}, <name>, ...)", elem_id="data-name-field")
        author_field = gr.Textbox("", label="Author (replaces {{author}}, <author>, ...)", elem_id="data-author-field")
    return row, max_len, train_on_all, train_tool_calls, long_docs, system_mode, system_text, name_field, author_field


def _save_section() -> tuple:
    """Name, split and Save; `picked` hands the saved name to the shared state."""
    with gr.Row():
        name = gr.Textbox(label="Dataset name", placeholder="e.g. hinglish-chat", elem_id="data-name")
        eval_split = gr.Slider(0, 0.5, value=0.1, step=0.01, label="Eval split", elem_id="data-eval-split")
        seed = gr.Number(42, label="Split seed", precision=0, elem_id="data-seed")
        overwrite = gr.Checkbox(False, label="Overwrite if the name exists", elem_id="data-overwrite")
        save_btn = gr.Button("Save", variant="primary", elem_id="data-save")
    saved = gr.Markdown(elem_id="data-save-result")
    picked = gr.Dropdown(visible=False, allow_custom_value=True)  # the saved name, handed to the shared state
    return name, eval_split, seed, overwrite, save_btn, saved, picked


def build(shared: Shared) -> None:
    gr.Markdown("Upload a dataset (JSON, JSONL, CSV, TSV, Parquet, TXT) or load a sample. The format is detected "
                "and every row is converted to one conversation schema, then shown through the model's chat "
                "template with the trained tokens highlighted. Save it by name for the Train tab.")
    _saved_list(shared)
    with gr.Row():
        upload = gr.File(label="Upload", file_types=[".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt"],
                         type="filepath", elem_id="data-upload", scale=2)
        with gr.Column(scale=1):
            medical = gr.Button("Load medical sample", elem_id="data-sample-medical")
            hinglish = gr.Button("Load Hinglish sample", elem_id="data-sample-hinglish")
    path = gr.Textbox(label="File", interactive=not shared.hosted, elem_id="data-path",
                      info="A path on the machine running the studio (filled in by upload or sample).")
    with gr.Row():
        fmt = gr.Dropdown(FORMAT_CHOICES, value="auto", label="Format (auto = detected)", elem_id="data-format")
        cot_style = gr.Radio(["think", "answer"], value="think", label="Chain of thought (reasoning data)",
                             info="think: <think>reasoning</think> then the answer; answer: the answer only",
                             elem_id="data-cot-style", visible=False)  # shown for reasoning data only
        inspect_btn = gr.Button("Inspect", elem_id="data-inspect")
    evidence = gr.Markdown(elem_id="data-detected")
    prompt, response, system = _mapping_section()
    preview = gr.Dataframe(headers=["row", "turns", "system", "user", "assistant"], interactive=False, wrap=True,
                           label="Normalized preview (first rows)", elem_id="data-preview",
                           column_widths=["6%", "6%", "22%", "30%", "36%"])  # the text columns get the room
    counts = gr.Markdown(elem_id="data-counts")
    box, problems, problems_file = _problems_section()
    row, max_len, train_on_all, train_tool_calls, long_docs, system_mode, system_text, name_field, author_field = (
        _render_options(shared))
    template = gr.HighlightedText(label="Chat template (trained tokens in green)", color_map=_TEMPLATE_COLORS,
                                  show_legend=True, elem_id="data-template")
    notes = gr.Markdown(elem_id="data-warning")
    plot = gr.BarPlot(label="Tokens per row", x="tokens", y="rows", elem_id="data-histogram")
    stats = gr.Markdown(elem_id="data-token-stats")
    name, eval_split, seed, overwrite, save_btn, saved, picked = _save_section()

    model_ref = shared.model_ref if shared.model_ref is not None else gr.Textbox(visible=False)
    choices = [system_mode, system_text, name_field, author_field, train_tool_calls, long_docs]
    settings = [fmt, prompt, response, system, cot_style, model_ref, max_len, train_on_all, *choices]
    outputs = [path, evidence, prompt, response, system, preview, counts, problems, problems_file, plot, stats,
               row, template, notes]
    upload.upload(inspect_data, [upload, *settings], outputs, api_name="upload_data")
    medical.click(lambda: sample_path("medical"), None, path, api_name="load_medical_sample").then(
        inspect_data, [path, *settings], outputs, api_name="inspect_medical", api_visibility="private")
    hinglish.click(lambda: sample_path("hinglish"), None, path, api_name="load_hinglish_sample").then(
        inspect_data, [path, *settings], outputs, api_name="inspect_hinglish", api_visibility="private")
    inspect_btn.click(inspect_data, [path, *settings], outputs, api_name="inspect_data")
    fmt.input(inspect_data, [path, *settings], outputs, api_name="inspect_on_format", api_visibility="private")
    row.submit(show_row, [path, row, *settings], [template, notes], api_name="preview_row")
    save_btn.click(save, [path, fmt, prompt, response, system, cot_style, model_ref, name, max_len, eval_split, seed,
                          train_on_all, overwrite, *choices], [saved, picked], api_name="prepare_data")
    # a saved dataset (chat or preference pairs) becomes the current one: Train and Evaluate pick it
    picked.change(lambda c, name: replace(c, dataset=name).with_disk() if name else gr.skip(),
                  [shared.current, picked], shared.current, show_progress="hidden")
    evidence.change(lambda text: gr.Radio(visible="reasoning" in (text or "")), evidence, cot_style,
                    show_progress="hidden")  # the chain-of-thought choice only for reasoning data
    counts.change(lambda text: gr.Accordion(visible=bool(text) and "No problems." not in text), counts, box,
                  show_progress="hidden")  # the Problems box only when there are problems
    from studio.ui.tabs import preference_data  # DPO / ORPO pairs: their own section, same file and save settings

    preference_data.build(path, model_ref, max_len, name, eval_split, seed, overwrite, picked)
