"""The Data tab's preference section: pairs (prompt, chosen, rejected) for DPO / ORPO.

Shows the detected layout with its evidence, the pairs, each side through the chat template with the trained
answer highlighted, token lengths of prompt / chosen / rejected, and the rows where chosen equals rejected or a
side is empty; saves a preference dataset by name. Calls studio.data.preference, as `python -m studio data` does.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from studio.errors import StudioError
from studio.hosted import checked_path

SAMPLE = Path(__file__).resolve().parents[3] / "assets" / "preference_demo.jsonl"
FORMATS = ["auto", "trl", "hh", "sharegpt", "ultrafeedback", "mapped"]
CLIP = 200
COLORS = {"chosen": "#86efac", "rejected": "#fca5a5"}


def _clip(text: str) -> str:
    return text if len(text) <= CLIP else text[:CLIP] + "..."


def pairs_table(preview) -> pd.DataFrame:
    rows = [{"row": row, "prompt": _clip(next((m["content"] for m in reversed(p.prompt) if m["role"] == "user"), "")),
             "turns": len(p.prompt), "chosen": _clip(p.chosen), "rejected": _clip(p.rejected)} for row, p in preview]
    return pd.DataFrame(rows, columns=["row", "prompt", "turns", "chosen", "rejected"])


def _mapping(fmt: str, prompt: str, chosen: str, rejected: str) -> dict | None:
    if fmt != "mapped":
        return None
    return {k: v for k, v in {"prompt": prompt, "chosen": chosen, "rejected": rejected}.items() if v} or None


def _tokenizer(model_ref: str | None):
    from studio.data.store import tokenizer_for
    from studio.models import default_model_ref

    return tokenizer_for((model_ref or "").strip() or default_model_ref())


def show_pair(path: str, row, fmt: str, prompt: str, chosen: str, rejected: str, model_ref: str, max_len):
    """(chosen side, rejected side, lengths) of one row through the chat template; the answers highlighted."""
    from studio.data import preference

    if not path or row is None:
        return [], [], ""
    try:
        pair = preference.pair_at(checked_path(path), int(row), None if fmt == "auto" else fmt,
                                  _mapping(fmt, prompt, chosen, rejected))
        rendered = preference.render_pairs(_tokenizer(model_ref), [pair], int(max_len))[0]
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    if isinstance(rendered, preference.RowError):
        raise gr.Error(f"Row {int(row)}: {rendered.reason}.")
    sides = preference.highlight_pair(rendered)
    n = rendered.lengths
    text = (f"Row {int(row)}: prompt **{n['prompt']}** tokens, chosen **{n['chosen']}**, rejected **{n['rejected']}** "
            f"(trained: the answers, each after the same prompt).")
    return sides["chosen"], sides["rejected"], text


def inspect_pairs(path: str, fmt: str, prompt: str, chosen: str, rejected: str, model_ref: str, max_len,
                  progress=gr.Progress()):
    """Everything the section shows about a preference file; the api_name 'inspect_preference' event."""
    from studio.data import preference

    if not path:
        raise gr.Error("Choose a file first: upload one, or load the preference sample.")
    try:
        path = checked_path(path)
        report = preference.inspect_file(path, None if fmt == "auto" else fmt, _mapping(fmt, prompt, chosen, rejected),
                                         _tokenizer(model_ref), int(max_len),
                                         progress=lambda f, m: progress(f, desc=m))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    c, stats = report.counts, report.token_stats or {}
    summary = (f"**Preference pairs ({report.format})**: {report.detection.evidence}\n\n"
               f"**{report.rows_in:,} rows: {report.rows_ok:,} usable pairs, {c['same']:,} with chosen == rejected, "
               f"{c['empty']:,} with an empty side, {c['invalid']:,} invalid, {c['duplicate']:,} duplicates, "
               f"{c['too_long']:,} too long** (listed below; left out when saved).")
    if stats.get("rows"):
        summary += (f"\n\nTokens: prompt mean {stats['prompt_mean']}, chosen mean {stats['chosen_mean']}, rejected "
                    f"mean {stats['rejected_mean']}; prompt + longer answer median {stats['median']}, max "
                    f"{stats['max']}; {stats['over_max_len']:,} rows over the max length of {stats['max_len']}.")
    problems = pd.DataFrame([p.as_dict() for p in report.problems], columns=["row", "kind", "reason"])
    first = report.preview[0][0] if report.preview else None
    sides = show_pair(path, first, fmt, prompt, chosen, rejected, model_ref, max_len) if first else ([], [], "")
    return (path, summary, pairs_table(report.preview), problems, first, *sides)


def save_pairs(path: str, fmt: str, prompt: str, chosen: str, rejected: str, model_ref: str, name: str, max_len,
               eval_split, seed, overwrite, progress=gr.Progress()):
    """Prepare and save the preference dataset by name; the api_name 'prepare_preference' event."""
    from studio.data import preference
    from studio.data.store import list_datasets
    from studio.models import default_model_ref

    if not path:
        raise gr.Error("Choose a file first: upload one, or load the preference sample.")
    try:
        folder = preference.prepare(checked_path(path), (model_ref or "").strip() or default_model_ref(),
                                    (name or "").strip(), max_len=int(max_len), eval_split=float(eval_split),
                                    seed=int(seed), fmt=None if fmt == "auto" else fmt,
                                    mapping=_mapping(fmt, prompt, chosen, rejected), overwrite=bool(overwrite),
                                    progress=lambda f, m: progress(f, desc=m))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    import json

    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    c = meta["counts"]
    text = (f"Saved **{meta['name']}** (preference pairs): {c['train']:,} train and {c['eval']:,} eval pairs. "
            "Train it with method **dpo** or **orpo** in the Train tab.")
    return text, gr.Dropdown(choices=[m["name"] for m in list_datasets()], value=meta["name"])


def build(path, model_ref, max_len, name, eval_split, seed, overwrite, dataset) -> None:
    """The section, under the SFT controls; shares the file, the model, the max length and the save settings."""
    with gr.Accordion("Preference pairs (chosen vs rejected, for DPO / ORPO)", open=False, elem_id="pref-section"):
        gr.Markdown("Files with a better (chosen) and a worse (rejected) answer to each prompt: TRL prompt/chosen/"
                    "rejected, Anthropic-HH conversations, ShareGPT with chosen/rejected turns, UltraFeedback. "
                    "Both answers are shown after the same prompt through the chat template; the answer is what "
                    "DPO and ORPO train on.")
        with gr.Row():
            sample = gr.Button("Load preference sample", elem_id="pref-sample")
            fmt = gr.Dropdown(FORMATS, value="auto", label="Preference format (auto = detected)", elem_id="pref-format")
            inspect_btn = gr.Button("Inspect as preference pairs", elem_id="pref-inspect")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt column (format 'mapped')", elem_id="pref-map-prompt")
            chosen = gr.Textbox(label="Chosen column", elem_id="pref-map-chosen")
            rejected = gr.Textbox(label="Rejected column", elem_id="pref-map-rejected")
        summary = gr.Markdown(elem_id="pref-summary")
        table = gr.Dataframe(label="Pairs (first rows)", interactive=False, wrap=True, elem_id="pref-pairs")
        problems = gr.Dataframe(label="Problems (chosen == rejected, empty sides, ...)", interactive=False, wrap=True,
                                elem_id="pref-problems")
        row = gr.Number(label="Row to show", precision=0, elem_id="pref-row")
        lengths = gr.Markdown(elem_id="pref-lengths")
        with gr.Row():
            chosen_view = gr.HighlightedText(label="Prompt + chosen (trained answer in green)", color_map=COLORS,
                                             elem_id="pref-chosen")
            rejected_view = gr.HighlightedText(label="Prompt + rejected (trained answer in red)", color_map=COLORS,
                                               elem_id="pref-rejected")
        save_btn = gr.Button("Save as preference dataset (uses the name and split above)", variant="primary",
                             elem_id="pref-save")
        saved = gr.Markdown(elem_id="pref-save-result")
    settings = [fmt, prompt, chosen, rejected, model_ref]
    outputs = [path, summary, table, problems, row, chosen_view, rejected_view, lengths]
    sample.click(lambda: str(SAMPLE), None, path, api_name="load_preference_sample").then(
        inspect_pairs, [path, *settings, max_len], outputs, api_name="inspect_preference_sample",
        api_visibility="private")
    inspect_btn.click(inspect_pairs, [path, *settings, max_len], outputs, api_name="inspect_preference")
    row.submit(show_pair, [path, row, *settings, max_len], [chosen_view, rejected_view, lengths],
               api_name="preview_pair")
    save_btn.click(save_pairs, [path, *settings, name, max_len, eval_split, seed, overwrite], [saved, dataset],
                   api_name="prepare_preference")
