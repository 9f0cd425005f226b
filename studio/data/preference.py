"""Preference data (chosen vs rejected answers) for DPO and ORPO: detect, convert, render, prepare.

Every row becomes one `Pair`: the prompt as a conversation (optional system, then user/assistant turns,
ending with a user turn) and two answers to it, `chosen` and `rejected` (the assistant's next turn).

Formats (names are what `detect` returns and what the user may force):
- trl: TRL's `prompt` / `chosen` / `rejected`, as strings or as lists of messages (chosen and rejected
  hold the assistant's answer only).
- hh: Anthropic-HH style, `chosen` / `rejected` are whole conversations (the raw "\\n\\nHuman: ...
  \\n\\nAssistant: ..." text, or message lists) that share everything up to the last assistant turn.
- sharegpt: a ShareGPT `conversations` list (from/value or role/content) plus `chosen` / `rejected`
  turns (LLaMA-Factory's preference layout).
- ultrafeedback: UltraFeedback-binarized style, a `prompt` string and `chosen` / `rejected` message lists
  that repeat the user turn before the answer.
- mapped: anything else, through a mapping {"prompt": col, "chosen": col, "rejected": col, "system": col}.

`inspect_file` reads a file (through studio.data.io), converts every row and lists the problems (row and
reason: unreadable, a side empty, chosen identical to rejected, duplicates, a prompt that leaves no room
for an answer within max_len). `prepare` renders prompt and answers through the model's chat template,
tokenizes them and saves train/eval splits under datasets/<name>/ with `"kind": "preference"` in meta.json.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

from studio import templates
from studio.data import formats, io, render
from studio.errors import DataError

FORMATS = ("trl", "hh", "sharegpt", "ultrafeedback", "mapped")
KIND = "preference"  # meta.json "kind" of a prepared preference dataset (SFT datasets have none, or "sft")
PREFERENCE_METHODS = ("dpo", "orpo")
SAMPLE_ROWS = 200  # rows looked at by detect()
PREVIEW_ROWS = 50
MAX_PROBLEMS_SHOWN = 1000
BATCH = 500  # pairs tokenized per batched tokenizer call
TURN_KEYS = ("conversations", "conversation", "messages", "dialog", "dialogue", "chat", "turns")
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
            "model": "assistant", "chatgpt": "assistant", "system": "system"}
# Column names (lower case) a mapping is guessed from, most specific first.
GUESSES = {"prompt": ("prompt", "question", "instruction", "query", "input", "user"),
           "chosen": ("chosen", "preferred", "accepted", "better", "good", "winner", "response_chosen",
                      "chosen_response", "positive"),
           "rejected": ("rejected", "dispreferred", "worse", "bad", "loser", "response_rejected",
                        "rejected_response", "negative"),
           "system": ("system", "system_prompt")}
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant|System): ")

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    pass


class RowError(ValueError):
    """One row cannot be read as a preference pair; `reason` is shown with its row number."""

    def __init__(self, reason: str, kind: str = "invalid"):
        self.reason, self.kind = reason, kind
        super().__init__(reason)


@dataclass(frozen=True)
class Pair:
    prompt: list[dict]  # system?, user, (assistant, user)*: the conversation before the answer
    chosen: str
    rejected: str

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


@dataclass(frozen=True)
class Detection:
    format: str  # one of FORMATS, or "" when the rows are not preference data at all
    evidence: str
    columns: list[str] = field(default_factory=list)
    mapping: dict = field(default_factory=dict)
    needs_mapping: bool = False
    matched: int = 0
    sampled: int = 0

    @property
    def is_preference(self) -> bool:
        return bool(self.format)


# ---------------------------------------------------------------- detection


_keys = formats.column_keys  # lower-case name -> actual name


def _is_turns(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, dict) for t in value)


def _is_turn(value) -> bool:
    return isinstance(value, dict) and (("from" in value and "value" in value) or
                                        ("role" in value and "content" in value))


def _has_user_turn(turns: list[dict]) -> bool:
    return any(SPEAKERS.get(str(t.get("role", t.get("from"))).lower()) == "user" for t in turns)


def shape_of(record: dict) -> tuple[str, dict] | None:
    """The preference format one record looks like, with the columns that say so; None when none fits."""
    keys = _keys(record)
    if "chosen" not in keys or "rejected" not in keys:
        return None
    chosen = record[keys["chosen"]]
    used = {"chosen": keys["chosen"], "rejected": keys["rejected"]}
    turns = next((keys[k] for k in TURN_KEYS if k in keys and _is_turns(record[keys[k]])), None)
    if turns and (_is_turn(chosen) or isinstance(chosen, str) or _is_turns(chosen)) and "prompt" not in keys:
        return "sharegpt", {**used, "conversations": turns}
    if _is_turns(chosen) and _has_user_turn(chosen):
        return ("ultrafeedback", {**used, "prompt": keys["prompt"]}) if "prompt" in keys else ("hh", used)
    if "prompt" in keys:
        return "trl", {**used, "prompt": keys["prompt"]}
    if isinstance(chosen, str) and HH_TURN.search(chosen):
        return "hh", used
    return None


def guess_mapping(columns: list) -> dict:
    keys = {str(c).lower(): c for c in columns}
    guess = {part: next((keys[n] for n in names if n in keys), None) for part, names in GUESSES.items()}
    return {part: col for part, col in guess.items() if col}


def detect(records: list) -> Detection:
    """Vote over up to SAMPLE_ROWS records. format "" means: not preference data."""
    sample = formats.readable_sample(records, SAMPLE_ROWS)
    columns = list(dict.fromkeys(str(k) for r in sample for k in r))
    won = formats.vote(sample, shape_of)
    if won and won.fitting * 2 > len(sample):  # most rows are pairs
        text = f"{won.count} of {len(sample)} sampled rows are {won.fmt} preference pairs ({won.columns_used})."
        return Detection(won.fmt, text, columns, won.mapping, matched=won.count, sampled=len(sample))
    guess = guess_mapping(columns)
    if "chosen" in guess and "rejected" in guess:
        text = (f"Preference pairs without a known layout: guessed chosen='{guess['chosen']}', rejected="
                f"'{guess['rejected']}'" + (f", prompt='{guess['prompt']}'" if "prompt" in guess else "") +
                " from the column names. Check the mapping.")
        return Detection("mapped", text, columns, guess, needs_mapping="prompt" not in guess, sampled=len(sample))
    return Detection("", f"No chosen/rejected columns among: {', '.join(columns)}: this is not preference data.",
                     columns, sampled=len(sample))


def not_preference_error(name: str, columns: list) -> DataError:
    """An SFT (or other) file offered for DPO/ORPO."""
    return DataError(f"{name} is not preference data: it has no chosen and rejected answers (columns: "
                     f"{', '.join(map(str, columns[:12]))}). DPO and ORPO learn from pairs of a better and a worse "
                     "answer to the same prompt.",
                     "Train this file with method sft; for dpo/orpo give rows with prompt, chosen and rejected "
                     "(see assets/preference_demo.jsonl), or map your columns with --map prompt=COL,chosen=COL,"
                     "rejected=COL.")


# ---------------------------------------------------------------- conversion


def _text(value, what: str) -> str:
    """A text field as `formats.scalar_text` reads it, or a list of {"type": "text"} parts joined by newlines."""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "\n".join(_text(p.get("text"), what) for p in value)
    try:
        return formats.scalar_text(value, what)
    except formats.RowError as exc:
        raise RowError(exc.reason) from None


def _turn(turn, where: str) -> dict:
    try:
        role = formats.speaker_role(turn, where, SPEAKERS, "use system, user or assistant (or human/gpt)", "role")
    except formats.RowError as exc:
        raise RowError(exc.reason) from None
    return {"role": role, "content": _text(turn.get("content", turn.get("value")), where)}


def _turns(value, what: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if what == "prompt" else [{"role": "assistant", "content": value}]
    if _is_turn(value):
        value = [value]
    if not isinstance(value, list):
        raise RowError(f"{what} is a {type(value).__name__}, not text or a list of messages")
    return [_turn(t, f"{what} message {i}") for i, t in enumerate(value, start=1)]


def _answer(turns: list[dict], what: str) -> str:
    """The text of an answer given as assistant turn(s)."""
    if not turns:
        raise RowError(f"the {what} answer is empty", "empty")
    if any(t["role"] != "assistant" for t in turns):
        raise RowError(f"the {what} side holds a {next(t['role'] for t in turns if t['role'] != 'assistant')} "
                       "turn; it should hold only the assistant's answer")
    return "\n".join(t["content"] for t in turns)


def _parse_hh(text: str, what: str) -> list[dict]:
    """'\\n\\nHuman: ... \\n\\nAssistant: ...' -> messages."""
    pieces = HH_TURN.split(text)
    if len(pieces) < 3:
        raise RowError(f"the {what} text has no 'Human:' / 'Assistant:' turns")
    if pieces[0].strip():
        raise RowError(f"the {what} text does not start with a 'Human:' turn")
    roles = {"Human": "user", "Assistant": "assistant", "System": "system"}
    return [{"role": roles[pieces[i]], "content": pieces[i + 1].strip()} for i in range(1, len(pieces), 2)]


def _split_last_answer(turns: list[dict], what: str) -> tuple[list[dict], str]:
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last is None:
        raise RowError(f"the {what} conversation has no assistant turn", "empty")
    if last != len(turns) - 1:
        raise RowError(f"the {what} conversation ends with a {turns[-1]['role']} turn after the last answer")
    return turns[:last], turns[last]["content"]


def _shared_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """Split two whole conversations at their last assistant turn; the parts before must be the same."""
    prompt_c, answer_c = _split_last_answer(chosen, "chosen")
    prompt_r, answer_r = _split_last_answer(rejected, "rejected")
    if prompt_c != prompt_r:
        raise RowError("the chosen and rejected conversations differ before their last answer, so they do not "
                       "answer the same prompt")
    return prompt_c, answer_c, answer_r


_get = formats.field_value  # record[name], or the column named so in another case


def to_pair(record: dict, fmt: str, mapping: dict | None = None) -> Pair:
    """One record in `fmt` -> a checked Pair; RowError (with the reason) when it does not fit."""
    if fmt not in FORMATS:
        raise DataError(f"Unknown preference format {fmt!r}.", f"Use one of: {', '.join(FORMATS)}.")
    mapping = mapping or {}
    chosen_v = _get(record, mapping.get("chosen", "chosen"))
    rejected_v = _get(record, mapping.get("rejected", "rejected"))
    if chosen_v is None or rejected_v is None:
        raise RowError(f"the {'chosen' if chosen_v is None else 'rejected'} column is missing", "empty")
    if fmt == "hh":
        chosen = _parse_hh(chosen_v, "chosen") if isinstance(chosen_v, str) else _turns(chosen_v, "chosen")
        rejected = _parse_hh(rejected_v, "rejected") if isinstance(rejected_v, str) else _turns(rejected_v, "rejected")
        prompt, answer_c, answer_r = _shared_prompt(chosen, rejected)
    elif fmt == "ultrafeedback":
        prompt, answer_c, answer_r = _shared_prompt(_turns(chosen_v, "chosen"), _turns(rejected_v, "rejected"))
    elif fmt == "sharegpt":
        prompt = _turns(_get(record, mapping.get("conversations", "conversations")), "prompt")
        system = _text(_get(record, "system"), "system")
        if system.strip() and not (prompt and prompt[0]["role"] == "system"):
            prompt = [{"role": "system", "content": system}, *prompt]
        answer_c, answer_r = _answer(_turns(chosen_v, "chosen"), "chosen"), _answer(_turns(rejected_v, "rejected"),
                                                                                    "rejected")
    else:  # trl and mapped
        prompt = _turns(_get(record, mapping.get("prompt", "prompt")), "prompt")
        system = _text(_get(record, mapping.get("system")), "system") if mapping.get("system") else ""
        if system.strip():
            prompt = [{"role": "system", "content": system}, *prompt]
        answer_c, answer_r = _answer(_turns(chosen_v, "chosen"), "chosen"), _answer(_turns(rejected_v, "rejected"),
                                                                                    "rejected")
    return check_pair(Pair(prompt, answer_c, answer_r))


def check_pair(pair: Pair) -> Pair:
    """RowError unless the prompt ends with a non-empty user turn and the two answers differ and are non-empty."""
    if not pair.prompt:
        raise RowError("the prompt is empty", "empty")
    body = pair.prompt[1:] if pair.prompt[0]["role"] == "system" else pair.prompt
    if not body or body[-1]["role"] != "user":
        raise RowError("the prompt does not end with a user turn, so there is nothing to answer")
    if not body[-1]["content"].strip():
        raise RowError("the prompt's last user turn is empty", "empty")
    for side, text in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        if not text.strip():
            raise RowError(f"the {side} answer is empty", "empty")
    if pair.chosen.strip() == pair.rejected.strip():
        raise RowError("chosen and rejected are the same answer: the pair teaches nothing", "same")
    return pair


# ---------------------------------------------------------------- rendering


@dataclass
class RenderedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]  # the answer's tokens (what is trained), after truncation to max_len
    rejected_ids: list[int]
    prompt_text: str
    chosen_text: str  # the answer as the template renders it, end-of-turn token included
    rejected_text: str
    lengths: dict  # tokens before truncation: prompt, chosen, rejected

    @property
    def too_long(self) -> bool:
        return not self.chosen_ids or not self.rejected_ids


def _answer_text(tokenizer, prompt: list[dict], answer: str, prompt_text: str) -> str:
    """The rendered answer: what the template adds after the generation prompt, through the end-of-turn token."""
    messages = [*prompt, {"role": "assistant", "content": answer}]
    full, spans = render.render_text(tokenizer, messages)
    if not full.startswith(prompt_text) or not spans:
        raise RowError("the chat template renders the prompt differently once an answer follows, so the answer "
                       "cannot be cut off cleanly; use a model whose template keeps earlier turns as they are")
    return full[len(prompt_text):spans[-1][1]]


def render_pairs(tokenizer, pairs: list[Pair], max_len: int) -> list[RenderedPair | RowError]:
    """Prompt (with the generation prompt) and both answers through the chat template, tokenized apart (as
    at inference the prompt is), each side cut to max_len tokens together with the prompt."""
    texts = []
    out: list[RenderedPair | RowError | None] = []
    for pair in pairs:
        try:
            prompt_text = render.apply_template(tokenizer, pair.prompt, add_generation_prompt=True)
            texts.append((prompt_text, _answer_text(tokenizer, pair.prompt, pair.chosen, prompt_text),
                          _answer_text(tokenizer, pair.prompt, pair.rejected, prompt_text)))
            out.append(None)
        except RowError as exc:
            out.append(exc)
    flat = [t for triple in texts for t in triple]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    k = 0
    for i, item in enumerate(out):
        if item is not None:
            continue
        prompt_ids, chosen_ids, rejected_ids = ids[3 * k:3 * k + 3]
        prompt_ids = templates.with_bos(tokenizer, prompt_ids)  # BOS exactly once where SFT and chat put one
        room = max(0, max_len - len(prompt_ids))
        out[i] = RenderedPair(list(prompt_ids), list(chosen_ids[:room]), list(rejected_ids[:room]), *texts[k],
                              {"prompt": len(prompt_ids), "chosen": len(chosen_ids), "rejected": len(rejected_ids)})
        k += 1
    return out


def highlight_pair(rendered: RenderedPair) -> dict[str, list[tuple[str, str | None]]]:
    """For gr.HighlightedText and the CLI: each side as (prompt, not trained) + (answer, 'chosen'/'rejected')."""
    return {side: [(rendered.prompt_text, None), (getattr(rendered, f"{side}_text"), side)]
            for side in ("chosen", "rejected")}


# ---------------------------------------------------------------- inspecting a file


@dataclass(frozen=True)
class Problem:
    row: int
    reason: str
    kind: str = "invalid"  # invalid | empty | same | duplicate | too_long

    def as_dict(self) -> dict:
        return {"row": self.row, "kind": self.kind, "reason": self.reason}


@dataclass
class Inspection:
    path: str
    detection: Detection
    format: str
    mapping: dict
    rows_in: int = 0
    rows_ok: int = 0
    counts: Counter = field(default_factory=Counter)  # problems by kind
    problems: list[Problem] = field(default_factory=list)
    preview: list[tuple[int, Pair]] = field(default_factory=list)
    lengths: dict = field(default_factory=lambda: {"prompt": [], "chosen": [], "rejected": []})
    token_stats: dict | None = None
    template_warning: str = ""
    seconds: float = 0.0

    def add_problem(self, problem: Problem) -> None:
        self.counts[problem.kind] += 1
        if len(self.problems) < MAX_PROBLEMS_SHOWN:
            self.problems.append(problem)

    def summary(self) -> dict:
        return {"file": self.path, "kind": KIND, "format": self.format, "evidence": self.detection.evidence,
                "mapping": self.mapping, "rows_in": self.rows_in, "rows_ok": self.rows_ok,
                "problems_by_kind": dict(self.counts), "token_stats": self.token_stats,
                "seconds": round(self.seconds, 2)}


def _choose(path, fmt: str | None, mapping: dict | None) -> tuple[Detection, str, dict, Iterator]:
    records = io.iter_records(path)
    head = list(islice(records, SAMPLE_ROWS))
    good = [r for _, r in head if isinstance(r, dict)]
    if not good:
        raise DataError(f"None of the first {len(head)} rows of {Path(path).name} can be read.",
                        "Check the file type and encoding (JSON Lines need one JSON object per line).")
    detection = detect(good)
    if not detection.is_preference and not fmt and not mapping:
        raise not_preference_error(Path(path).name, detection.columns)
    fmt = fmt or ("mapped" if mapping and not detection.is_preference else detection.format)
    if fmt not in FORMATS:
        raise DataError(f"Unknown preference format {fmt!r}.", f"Use one of: {', '.join(FORMATS)}.")
    mapping = {k: v for k, v in (mapping or {}).items() if v} or (dict(detection.mapping)
                                                                 if fmt == detection.format else {})
    if fmt == "mapped" and not all(mapping.get(k) for k in ("prompt", "chosen", "rejected")):
        raise DataError(f"{Path(path).name} needs a column mapping for its preference pairs. {detection.evidence}",
                        "Choose the prompt, chosen and rejected columns (CLI: --map prompt=COL,chosen=COL,"
                        "rejected=COL).")
    return detection, fmt, mapping, chain(head, records)


def _pairs(rows: Iterator, fmt: str, mapping: dict, report: Inspection) -> Iterator[tuple[int, Pair]]:
    seen: dict[bytes, int] = {}
    for row, record in rows:
        report.rows_in += 1
        if isinstance(record, io.BadRecord):
            report.add_problem(Problem(row, record.reason))
            continue
        try:
            pair = to_pair(record, fmt, mapping)
        except RowError as exc:
            report.add_problem(Problem(row, exc.reason, exc.kind))
            continue
        key = hashlib.blake2b(json.dumps(pair.as_dict(), sort_keys=True).encode(), digest_size=16).digest()
        if key in seen:
            report.add_problem(Problem(row, f"exact duplicate of row {seen[key]} (removed)", "duplicate"))
            continue
        seen[key] = row
        yield row, pair


def _scan(path, fmt, mapping, tokenizer, max_len: int, progress: Progress) -> tuple[Inspection, Iterator[list]]:
    detection, fmt, mapping, rows = _choose(path, fmt, mapping)
    report = Inspection(str(path), detection, fmt, mapping,
                        template_warning=render.template_warning(tokenizer) if tokenizer is not None else "")
    return report, _scan_batches(report, _pairs(rows, fmt, mapping, report), tokenizer, max_len, progress)


def _scan_batches(report: Inspection, pairs: Iterator, tokenizer, max_len: int, progress: Progress):
    start = time.time()
    expected = io.estimate_rows(report.path)
    while batch := list(islice(pairs, BATCH)):
        rendered = render_pairs(tokenizer, [p for _, p in batch], max_len) if tokenizer is not None else [None] * len(
            batch)
        kept = []
        for (row, pair), item in zip(batch, rendered, strict=True):
            if isinstance(item, RowError):
                report.add_problem(Problem(row, item.reason, item.kind))
                continue
            if item is not None and item.too_long:
                report.add_problem(Problem(row, f"the prompt alone has {item.lengths['prompt']} tokens, leaving no "
                                                f"room for an answer within max_len={max_len}; raise the max length",
                                           "too_long"))
                continue
            if item is not None:
                for side in ("prompt", "chosen", "rejected"):
                    report.lengths[side].append(item.lengths[side])
            if len(report.preview) < PREVIEW_ROWS:
                report.preview.append((row, pair))
            kept.append((row, pair, item))
        yield io.batch_read(report, kept, expected, progress)
    if tokenizer is not None:
        report.token_stats = pair_token_stats(report.lengths, max_len)
    report.seconds += time.time() - start


def pair_token_stats(lengths: dict, max_len: int) -> dict:
    """Tokens of prompt + chosen and prompt + rejected per row (histogram of the longer side), and each side's mean."""
    longer = [p + max(c, r) for p, c, r in zip(lengths["prompt"], lengths["chosen"], lengths["rejected"], strict=True)]
    stats = render.token_stats(longer, max_len)
    for side in ("prompt", "chosen", "rejected"):
        values = lengths[side]
        stats[f"{side}_mean"] = round(sum(values) / len(values), 1) if values else 0.0
    return stats


def inspect_file(path, fmt: str | None = None, mapping: dict | None = None, tokenizer=None, max_len: int = 1024,
                 progress: Progress = _no_progress) -> Inspection:
    """Detect, convert and check every row (and count tokens when a tokenizer is given)."""
    report, batches = _scan(path, fmt, mapping, tokenizer, max_len, progress)
    for _ in batches:
        pass
    return report


def pair_at(path, row: int, fmt: str | None = None, mapping: dict | None = None) -> Pair:
    """The Pair of one row (as numbered in the problems list); DataError if it is invalid."""
    _, fmt, mapping, rows = _choose(path, fmt, mapping)
    record = io.record_at(rows, row, path)
    try:
        return to_pair(record, fmt, mapping)
    except RowError as exc:
        raise DataError(f"Row {row} is invalid: {exc.reason}.", "Choose another row, or fix it.") from exc


# ---------------------------------------------------------------- preparing and loading


SCHEMA_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "pair", "row")


def _table(kept: list):
    import pyarrow as pa

    schema = pa.schema([("prompt_ids", pa.list_(pa.int32())), ("chosen_ids", pa.list_(pa.int32())),
                        ("rejected_ids", pa.list_(pa.int32())), ("pair", pa.string()), ("row", pa.int64())])
    return pa.table({"prompt_ids": [r.prompt_ids for _, _, r in kept],
                     "chosen_ids": [r.chosen_ids for _, _, r in kept],
                     "rejected_ids": [r.rejected_ids for _, _, r in kept],
                     "pair": [json.dumps(p.as_dict(), ensure_ascii=False) for _, p, _ in kept],
                     "row": [row for row, _, _ in kept]}, schema=schema)


def prepare(path, model_ref: str, name: str, max_len: int = 1024, eval_split: float = 0.1, seed: int = 42,
            fmt: str | None = None, mapping: dict | None = None, overwrite: bool = False,
            progress: Progress = _no_progress) -> Path:
    """Render and tokenize every pair, split train/eval with a seed, save datasets/<name>/ (never silently over
    an existing one): train.parquet, eval.parquet, problems.jsonl, meta.json with kind 'preference'."""
    import shutil

    from studio.data import store
    from studio.util import write_json_atomic

    if not 0 <= eval_split < 1:
        raise DataError(f"The eval split {eval_split} is not between 0 and 1.", "Use e.g. 0.1 for 10%.")
    target = store._target(name, overwrite)
    tokenizer = store.tokenizer_for(model_ref)
    report, batches = _scan(path, fmt, mapping, tokenizer, max_len, progress)
    kept = [item for batch in batches for item in batch]
    if not kept:
        reasons = "; ".join(f"row {p.row}: {p.reason}" for p in report.problems[:3])
        raise DataError(f"No usable preference pair in {Path(path).name} ({reasons}).",
                        "Fix the rows listed in the problems, or raise the max length.")
    tmp, train_idx, eval_idx = write_splits(_table(kept), target, eval_split, seed)
    with open(tmp / "problems.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p.as_dict(), ensure_ascii=False) + "\n" for p in report.problems)
    meta = {"name": name, "kind": KIND, "source_file": str(Path(path).resolve()),
            "source_sha256": store._source_hash(path), "format": f"preference:{report.format}",
            "evidence": report.detection.evidence, "mapping": report.mapping, "model_ref": model_ref,
            "tokenizer_fingerprint": render.tokenizer_fingerprint(tokenizer),
            "template": "model" if tokenizer.chat_template else "chatml-fallback",
            "template_warning": report.template_warning, "max_len": max_len, "eval_split": eval_split, "seed": seed,
            "counts": {"rows_in": report.rows_in, "rows_ok": report.rows_ok, "train": len(train_idx),
                       "eval": len(eval_idx), "rows_invalid": report.counts["invalid"] + report.counts["empty"],
                       "same": report.counts["same"], "duplicates": report.counts["duplicate"],
                       "too_long": report.counts["too_long"]},
            "token_stats": report.token_stats, "problems_file": "problems.jsonl",
            "seconds": round(report.seconds, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(tmp / "meta.json", meta)
    from studio import policy

    policy.stamp(tmp)  # hosted: the dataset is the logged-in user's
    if target.exists():
        shutil.rmtree(target)  # only reached with overwrite=True (store._target refuses otherwise)
    tmp.replace(target)
    progress(1.0, f"saved {len(kept):,} pairs")
    return target


def write_splits(table, target: Path, eval_split: float, seed: int) -> tuple[Path, list[int], list[int]]:
    """A seeded train/eval split of a pyarrow table written to a fresh .<name>.tmp folder beside `target`."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    train_idx, eval_idx = render.split_indices(len(table), eval_split, seed)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pq.write_table(table.take(pa.array(train_idx, pa.int64())), tmp / "train.parquet")
    if eval_idx:
        pq.write_table(table.take(pa.array(eval_idx, pa.int64())), tmp / "eval.parquet")
    return tmp, train_idx, eval_idx


def is_preference_meta(meta: dict) -> bool:
    return meta.get("kind") == KIND


def check_method(meta: dict, method: str) -> None:
    """DataError when a dataset does not fit the training method (preference data for SFT, or the reverse)."""
    name = meta.get("name", "?")
    if (method == "kto") != (meta.get("kind") == "kto"):  # unpaired good/bad answers (studio.data.kto)
        what = "not KTO data: method kto needs" if method == "kto" else f"KTO data, which method {method} cannot read:"
        raise DataError(f"The dataset {name!r} is {what} answers labelled good or bad.",
                        "Train a KTO dataset (prepared from rows with kto_tag or label, e.g. assets/kto_demo.jsonl) "
                        "with method kto, and other datasets with the other methods.")
    if method in PREFERENCE_METHODS and not is_preference_meta(meta):
        raise DataError(f"The dataset {name!r} is SFT data (one answer per conversation), not preference pairs: "
                        f"method {method} needs a chosen and a rejected answer for every prompt.",
                        "Pick a dataset prepared from a preference file (prompt/chosen/rejected, e.g. "
                        "assets/preference_demo.jsonl), or set method sft.")
    if method not in PREFERENCE_METHODS and is_preference_meta(meta):
        raise DataError(f"The dataset {name!r} is preference data (chosen/rejected): use method dpo or orpo.",
                        "Set method: dpo (or orpo) in the run (the Train tab's Method), or pick an SFT dataset.")


@dataclass
class PreparedPairs:
    train: object  # datasets.Dataset with prompt_ids, chosen_ids, rejected_ids, pair
    eval: object | None
    meta: dict
    path: Path


def load(name: str) -> PreparedPairs:
    """A prepared preference dataset by name; DataError if it is an SFT dataset."""
    import datasets
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    from studio.data import store
    from studio.util import read_json

    folder = store._folder(name)
    meta = read_json(folder / "meta.json", {})
    check_method(meta, "dpo")

    def split(which: str):
        file = folder / f"{which}.parquet"
        if not file.is_file():
            return None
        return datasets.Dataset(InMemoryTable(pq.read_table(file, columns=list(SCHEMA_COLUMNS[:4]))))

    return PreparedPairs(split("train"), split("eval"), meta, folder)


def dataset_kind(name: str) -> str:
    """'preference', 'kto' or 'sft' for a prepared dataset name (without loading it)."""
    from studio.data import store
    from studio.util import read_json

    meta = read_json(store._folder(name) / "meta.json", {})
    return KIND if is_preference_meta(meta) else "kto" if meta.get("kind") == "kto" else "sft"


def refuse_kto_for_scoring(name: str) -> None:
    """Perplexity and the battery need one reference answer per row; KTO rows are answers marked good or bad."""
    if dataset_kind(name) == "kto":
        raise DataError(f"The dataset {name!r} is KTO data (answers labelled good or bad): it has no one reference "
                        "answer per question to measure against.",
                        "Compare a KTO adapter on a question/answer dataset: Held-out reward (e.g. arith-heldout from "
                        "assets/arithmetic_heldout.jsonl), perplexity or the battery.")


def file_is_preference(path) -> bool:
    """True when a data file's first rows are preference pairs (the CLI and the Data tab route on it)."""
    head = [r for _, r in islice(io.iter_records(path), SAMPLE_ROWS) if isinstance(r, dict)]
    return bool(head) and detect(head).is_preference
