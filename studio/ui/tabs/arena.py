"""Arena tab: a blind vote across the base and any number of adapters, a leaderboard, an LLM judge beside it.

Each prompt (typed, or drawn from a dataset's eval split) is answered by every chosen model from the one
loaded base (the Model tab's model and precision; adapters hot-swapped in one decoding batch). The answers
show as A, B, C... in a shuffled order; the names come back only after the vote, from the round saved on
the server. All logic is in studio.arena and studio.judge, which `python -m studio eval arena|judge` use.
"""

from __future__ import annotations

import html

import gradio as gr

from studio import arena, judge
from studio.errors import StudioError
from studio.ui.shared import Shared

TITLE = "Arena"
DEFAULT_ARENA = "arena"
BOARD_COLUMNS = ["model", "score", "95% CI", "win rate", "games", "wins", "ties", "judge score", "judge win rate"]
ALL = "all"
VOTE_LABELS = {arena.TIE: "Tie (equally good)", arena.BAD: "All bad"}


# ---------------------------------------------------------------- helpers


def _arenas() -> list[str]:
    return arena.list_arenas()


def _board(name: str | None, dataset: str | None):
    """The leaderboard table and its summary line ('' for an arena with no votes yet)."""
    import pandas as pd

    if not name or name not in _arenas():
        return pd.DataFrame([], columns=BOARD_COLUMNS), "No votes yet: get answers and vote."
    board = arena.leaderboard(name, None if dataset in (None, ALL) else dataset)
    rows = [{"model": r["model"], "score": _cell(r["score"]),
             "95% CI": "-" if r["ci_low"] is None else f"{r['ci_low']:.0f} to {r['ci_high']:.0f}",
             "win rate": _percent(r["win_rate"]), "games": r["games"], "wins": r["wins"], "ties": r["ties"],
             "judge score": _cell(r["judge_score"]), "judge win rate": _percent(r["judge_win_rate"])}
            for r in board["rows"]]
    return pd.DataFrame(rows, columns=BOARD_COLUMNS), arena.summary_line(board["summary"])


def _cell(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _percent(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def _answers_html(found: arena.Round) -> str:
    blocks = [f"<div class='arena-answer' data-letter='{letter}'><b>Answer {letter}</b>"
              f"<pre style='white-space:pre-wrap'>{html.escape(text) or '(empty answer)'}</pre></div>"
              for letter, text in found.hidden()]
    return f"<div id='arena-answer-list' data-round='{found.id}'>{''.join(blocks)}</div>"


def _vote_choices(found: arena.Round) -> list[tuple[str, str]]:
    return [(f"{c} is best" if len(c) == 1 else VOTE_LABELS[c], c) for c in found.choices()]


def _reveal_html(record: dict) -> str:
    names = [f"<b>{letter}</b> = <span class='arena-name'>{html.escape(model)}</span>"
             + (" (best)" if model == record["winner"] else "")
             for letter, model in zip(arena.LETTERS, record["models"], strict=False)]
    verdict = {arena.TIE: "a tie", arena.BAD: "all bad"}.get(record["vote"], f"{record['vote']} is best")
    return f"<div id='arena-revealed'>Your vote: {verdict}. Revealed: {' · '.join(names)}</div>"


def _engine(ref: str, quant: str, progress=None):
    from studio.inference import get_engine

    report = (lambda f, m: progress(f, desc=m)) if progress is not None else None
    return get_engine((ref or "bundled").strip(), quant or "fp32", progress=report)


# ---------------------------------------------------------------- events


def arena_draw(dataset: str | None) -> str:
    """A question from the chosen dataset's eval split."""
    if not dataset or dataset == arena.TYPED:
        raise gr.Error("Pick a dataset under 'Prompts from' to draw a question (or type one).")
    try:
        return arena.draw_prompt(dataset)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc


def arena_ask(ref, quant, name, models, dataset, prompt, system, max_new, progress=gr.Progress()):
    """Every chosen model answers; the answers show under letters, shuffled; the vote opens."""
    from studio.inference import GenerationSettings

    name = (name or DEFAULT_ARENA).strip()
    try:
        arena.check_models(list(models or []))
        arena.open_arena(name)  # refuses before any generating where the caller may not play (hosted)
        engine = _engine(ref, quant, progress)
        answers = arena.answers(engine, prompt, list(models or []), GenerationSettings(max_new_tokens=int(max_new)),
                                system or "")
        found = arena.new_round(name, prompt, dataset or arena.TYPED, answers)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return (found.id, _answers_html(found), gr.Radio(choices=_vote_choices(found), value=None, interactive=True),
            gr.Button(interactive=True), "", gr.Dropdown(choices=_arenas(), value=name))


def arena_vote(name, round_id, choice, board_dataset):
    """Save the vote, reveal the names, refresh the leaderboard."""
    if not round_id:
        raise gr.Error("Get answers first, then vote.")
    if not choice:
        raise gr.Error("Pick the best answer (or Tie / All bad) first.")
    try:
        record = arena.vote(name, round_id, choice)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    table, summary = _board(name, board_dataset)
    return (_reveal_html(record), None, gr.Radio(interactive=False), gr.Button(interactive=False), table, summary,
            gr.Dropdown(choices=_datasets(name)))


def arena_leaderboard(name, dataset):
    try:
        return _board(name, dataset)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc


def arena_judge(ref, quant, name, judge_spec, key, judge_model, rubric, mode, limit, board_dataset,
                progress=gr.Progress()):
    """The judge scores the rounds it has not judged yet; the leaderboard shows it beside the votes."""
    try:
        chosen = judge.make_judge(judge_spec, key or None, lambda: _engine(ref, quant), judge_model or None)
        records = judge.judge_arena(name, chosen, rubric, mode, int(limit) if limit else None,
                                    progress=lambda f, m: progress(f, desc=m))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    table, summary = _board(name, board_dataset)
    if mode == "single":
        rows = judge.single_table(name, None if board_dataset in (None, ALL) else board_dataset)
        detail = "; ".join(f"{r['model']}: {r['overall']}" for r in rows)
        return f"Judged {len(records)} answers with {chosen.label}. Mean scores (1-10): {detail}.", table, summary
    return f"Judged {len(records)} pairs (each in both orders) with {chosen.label}.", table, summary


def arena_open():
    """On page load: the arenas on disk, the newest one's leaderboard."""
    names = _arenas()
    name = names[0] if names else DEFAULT_ARENA
    table, summary = _board(name, ALL)
    return gr.Dropdown(choices=names, value=name), table, summary, gr.Dropdown(choices=_datasets(name), value=ALL)


def arena_datasets(name: str | None):
    """The datasets the arena's votes were on, to filter the board by (all votes first)."""
    return gr.Dropdown(choices=_datasets(name), value=ALL)


def _datasets(name: str | None) -> list[str]:
    if not name or name not in _arenas():
        return [ALL]
    return [ALL, *arena.leaderboard(name)["summary"]["datasets"]]


def arena_follow(current, picked):
    """New adapters and datasets show up in the pickers; the models already ticked stay ticked."""
    choices = [arena.BASE, *current.adapters]
    return (gr.CheckboxGroup(choices=choices, value=[m for m in picked or [] if m in choices]),
            gr.Dropdown(choices=[arena.TYPED, *current.datasets]))


# ---------------------------------------------------------------- layout


def _pickers(shared: Shared) -> tuple:
    current = shared.current.value
    names = _arenas()
    with gr.Row():
        name = gr.Dropdown(names, value=names[0] if names else DEFAULT_ARENA, label="Arena",
                           allow_custom_value=True, elem_id="arena-name", scale=1,
                           info="Votes are kept per arena; type a new name for a new one.")
        models = gr.CheckboxGroup([arena.BASE, *current.adapters], value=[arena.BASE, *current.adapters[:2]],
                                  label="Models (two or more; names stay hidden until you vote)",
                                  elem_id="arena-models", scale=3)
        dataset = gr.Dropdown([arena.TYPED, *current.datasets], value=arena.TYPED, label="Prompts from",
                              elem_id="arena-dataset", scale=1, info="typed, or a dataset's eval split")
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="arena-prompt", scale=4,
                            placeholder="Type a question, or draw one from the dataset")
        with gr.Column(scale=1):
            draw = gr.Button("Draw from dataset", elem_id="arena-draw")
            ask = gr.Button("Get answers", variant="primary", elem_id="arena-ask")
    with gr.Row():
        max_new = gr.Slider(1, 1024, value=128, step=1, label="Max new tokens", elem_id="arena-max-new", scale=1)
        system = gr.Textbox(label="System prompt (for every model; optional)", elem_id="arena-system", scale=3)
    return name, models, dataset, prompt, draw, ask, system, max_new


def _judge_ui() -> tuple:
    with gr.Accordion("LLM judge: scores the arena's answers beside your votes", open=False):
        with gr.Row():
            spec = gr.Textbox("base", label="Judge", elem_id="arena-judge", scale=2,
                              info="'base' (the loaded base) or an OpenAI-compatible URL, e.g. this studio's "
                                   "http://127.0.0.1:7860/v1")
            key = gr.Textbox(label="API key (optional)", type="password", elem_id="arena-judge-key", scale=1)
            model = gr.Textbox(label="Judge model (optional)", elem_id="arena-judge-model", scale=1,
                               info="default: the endpoint's first model")
        rubric = gr.Textbox(judge.DEFAULT_RUBRIC, label="Rubric (editable)", lines=5, elem_id="arena-rubric")
        with gr.Row():
            mode = gr.Radio(["pairwise", "single"], value="pairwise", label="Grading", elem_id="arena-judge-mode",
                            info="pairwise: both orders of every pair (position bias cancelled); single: 1-10")
            limit = gr.Number(10, precision=0, label="Rounds to judge (not judged yet)", elem_id="arena-judge-limit")
            run = gr.Button("Judge", elem_id="arena-judge-run")
        status = gr.Markdown(elem_id="arena-judge-status")
    return spec, key, model, rubric, mode, limit, run, status


def build(shared: Shared) -> None:
    gr.Markdown("A blind test of the base and its adapters: every model answers the same prompt from the one "
                "loaded base (the **Model** tab's model and precision); the answers show in a shuffled order "
                "without names. Pick the best (or Tie / All bad); the names show after your vote.")
    name, models, dataset, prompt, draw, ask, system, max_new = _pickers(shared)
    round_id = gr.State(None)
    answers = gr.HTML(elem_id="arena-answers")
    with gr.Row():
        choice = gr.Radio([], label="Your vote", elem_id="arena-vote", interactive=False, scale=4)
        vote_btn = gr.Button("Vote", variant="primary", elem_id="arena-vote-btn", interactive=False, scale=1)
    reveal = gr.HTML(elem_id="arena-reveal")
    gr.Markdown("### Leaderboard\nBradley-Terry scores on the Elo scale (1000 = average; 400 points = 10:1 odds) "
                "with 95% bootstrap intervals; win rates count ties as half a win.")
    board_dataset = gr.Dropdown([ALL], value=ALL, label="Votes on prompts from", elem_id="arena-board-dataset")
    table = gr.Dataframe(headers=BOARD_COLUMNS, interactive=False, elem_id="arena-board")
    summary = gr.Markdown(elem_id="arena-summary")
    spec, key, judge_model, rubric, mode, limit, judge_btn, judge_status = _judge_ui()

    base = [shared.model_ref, shared.quant]
    draw.click(arena_draw, dataset, prompt, api_name="arena_draw")
    ask.click(arena_ask, [*base, name, models, dataset, prompt, system, max_new],
              [round_id, answers, choice, vote_btn, reveal, name], api_name="arena_ask")
    vote_btn.click(arena_vote, [name, round_id, choice, board_dataset],
                   [reveal, round_id, choice, vote_btn, table, summary, board_dataset], api_name="arena_vote")
    name.change(arena_datasets, name, board_dataset, api_name="arena_datasets")
    for source in (name.change, board_dataset.change):
        source(arena_leaderboard, [name, board_dataset], [table, summary], api_name="arena_leaderboard")
    judge_btn.click(arena_judge, [*base, name, spec, key, judge_model, rubric, mode, limit, board_dataset],
                    [judge_status, table, summary], api_name="arena_judge")
    shared.on_page_load.append((arena_open, [name, table, summary, board_dataset]))
    shared.follow(arena_follow, [models, dataset], [models])
