"""Inspect a dataset file, prepare it for a model, and keep prepared datasets by name.

`inspect` reads a file lazily, detects its format, converts every row and lists the problems
(row number and reason); with a tokenizer it also renders and counts tokens. `prepare` runs the
same scan (one rendering path: what `preview_row` shows is what `prepare` saves, token for token),
then splits train/eval with a seed and saves under `datasets/<name>/`: train.parquet, eval.parquet
(absent when the eval split is 0), problems.jsonl and meta.json. Raw text over the max length is
split into chunks (or cut, if asked); every cut is counted (rows cut, tokens dropped).
An existing name is never overwritten unless `overwrite=True`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, islice
from pathlib import Path

from studio import paths
from studio.data import formats, io, render
from studio.errors import ConfigError, DataError
from studio.util import file_sha256, read_json, write_json_atomic

Progress = Callable[[float, str], None]  # (fraction 0..1, message)
BATCH = 1000  # conversations rendered and tokenized per batch (one batched tokenizer call)
PREVIEW_ROWS = 50  # normalized rows kept for the preview table
MAX_PROBLEMS_SHOWN = 1000  # problems kept in memory for display; all of them are counted


def _no_progress(fraction: float, message: str) -> None:
    pass


@dataclass(frozen=True)
class Problem:
    row: int  # the line number for .jsonl/.txt, else the 1-based record number
    reason: str
    kind: str = "invalid"  # invalid | duplicate | too_long

    def as_dict(self) -> dict:
        return {"row": self.row, "kind": self.kind, "reason": self.reason}


@dataclass
class Inspection:
    path: str
    detection: formats.Detection
    format: str  # the format used: detected, or forced by the user
    mapping: dict
    rows_in: int = 0
    rows_ok: int = 0
    rows_invalid: int = 0
    duplicates: int = 0
    too_long: int = 0  # rows whose trained tokens all lie beyond max_len
    rows_cut: int = 0  # kept rows that lost tokens at max_len
    tokens_dropped: int = 0  # tokens those cuts threw away
    rows_chunked: int = 0  # raw-text documents split into max_len chunks
    chunks: int = 0  # the rows those documents became
    tool_rows: int = 0  # rows with tool definitions, tool calls or tool results
    identity_rows: int = 0  # rows that say who the assistant is
    placeholders: dict = field(default_factory=dict)  # placeholder as the file writes it -> rows holding it
    options: formats.Options = field(default_factory=formats.Options)
    long_docs: str = "chunk"
    notes: list[str] = field(default_factory=list)  # template facts the user should know
    problems: list[Problem] = field(default_factory=list)
    preview: list[tuple[int, list[dict]]] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # tokens per kept row (with a tokenizer)
    token_stats: dict | None = None
    template_warning: str = ""
    seconds: float = 0.0

    def add_problem(self, problem: Problem) -> None:
        if len(self.problems) < MAX_PROBLEMS_SHOWN:
            self.problems.append(problem)

    def summary(self) -> dict:
        return {"file": self.path, "format": self.format, "evidence": self.detection.evidence,
                "mapping": self.mapping, "rows_in": self.rows_in, "rows_ok": self.rows_ok,
                "rows_invalid": self.rows_invalid, "duplicates": self.duplicates, "too_long": self.too_long,
                "rows_cut": self.rows_cut, "tokens_dropped": self.tokens_dropped, "rows_chunked": self.rows_chunked,
                "chunks": self.chunks, "long_docs": self.long_docs, "tool_rows": self.tool_rows,
                "identity_rows": self.identity_rows, "placeholders": self.placeholders,
                "options": self.options.as_meta(), "notes": self.notes,
                "cuts": self.cuts_line() if self.token_stats is not None else None,
                "token_stats": self.token_stats, "seconds": round(self.seconds, 2)}

    def cuts_line(self) -> str:
        """What max_len did to the rows, in words (CLI, Data tab and meta say the same)."""
        parts = [f"{self.rows_cut:,} rows cut at max_len ({self.tokens_dropped:,} tokens dropped)"]
        if self.rows_chunked:
            parts.append(f"{self.rows_chunked:,} long documents split into {self.chunks:,} chunks")
        parts.append(f"{self.too_long:,} rows left out with no trained token within max_len")
        return "; ".join(parts)


@dataclass
class Prepared:
    train: object  # datasets.Dataset
    eval: object | None  # datasets.Dataset, or None when the eval split was 0
    meta: dict
    path: Path


@lru_cache(maxsize=4)
def tokenizer_for(model_ref: str):
    """The tokenizer of a model reference (cached: the Data tab asks for it on every click)."""
    from studio.models import load_tokenizer

    return load_tokenizer(model_ref)


# ---------------------------------------------------------------- reading and converting


def _choose(path, fmt: str | None, mapping: dict | None) -> tuple[formats.Detection, str, dict, Iterator]:
    """Detect on the first rows; return the detection, the format and mapping to use, and all rows."""
    records = io.iter_records(path)
    head = list(islice(records, formats.SAMPLE_ROWS))
    if not head:
        raise DataError(f"{Path(path).name} holds no records.", "Choose a file with at least one example.")
    good = [r for _, r in head if isinstance(r, dict)]
    if not good:
        reasons = "; ".join(r.reason for _, r in head[:3])
        raise DataError(f"None of the first {len(head)} rows of {Path(path).name} can be read: {reasons}.",
                        "Check the file type and encoding (JSON Lines need one JSON object per line).")
    if fmt != "mapped" and formats.looks_like_preference(good):  # a mapping may pick the chosen answers
        raise formats.preference_error(Path(path).name)
    detection = formats.detect(good)
    fmt = fmt or detection.format
    if fmt not in formats.FORMATS:
        raise DataError(f"Unknown format {fmt!r}.", f"Use one of: {', '.join(formats.FORMATS)}.")
    if mapping:
        mapping = {k: v for k, v in mapping.items() if v}
    else:
        mapping = dict(detection.mapping) if fmt == detection.format else {}
    if fmt == "mapped" and not (mapping.get("prompt") and mapping.get("response")):
        raise DataError(f"{Path(path).name} needs a column mapping. {detection.evidence}",
                        "Choose the prompt and response columns (CLI: --map prompt=COL,response=COL).")
    return detection, fmt, mapping, chain(head, records)


def _convert(record, fmt: str, mapping: dict, cot_style: str, options: formats.Options) -> formats.Conversation:
    """One record -> the conversation that is rendered (options applied); RowError when it cannot be."""
    return formats.apply_options(formats.to_messages(record, fmt, mapping, cot_style), options, fmt)


def _note_row(report: Inspection, messages: formats.Conversation) -> None:
    from studio.data.render import uses_tools

    report.tool_rows += uses_tools(messages)
    report.identity_rows += formats.states_identity(messages)
    for placeholder in formats.placeholders(messages):
        report.placeholders[placeholder] = report.placeholders.get(placeholder, 0) + 1


def _conversations(rows: Iterator, fmt: str, mapping: dict, cot_style: str, report: Inspection):
    """Yield (row, messages) for valid rows; count and list the rest (never dropped silently)."""
    seen: dict[bytes, int] = {}
    for row, record in rows:
        report.rows_in += 1
        if isinstance(record, io.BadRecord):
            problem = Problem(row, record.reason)
        else:
            try:
                source = formats.to_messages(record, fmt, mapping, cot_style)
                messages = formats.apply_options(source, report.options, fmt)
            except formats.RowError as exc:
                problem = Problem(row, exc.reason)
            else:
                blob = json.dumps([messages, messages.tools], sort_keys=True)
                key = hashlib.blake2b(blob.encode(), digest_size=16).digest()
                if key in seen:
                    report.duplicates += 1
                    report.add_problem(Problem(row, f"exact duplicate of row {seen[key]} (removed)", "duplicate"))
                    continue
                seen[key] = row
                _note_row(report, source)  # placeholders as the file has them, before replacement
                yield row, messages
                continue
        report.rows_invalid += 1
        report.add_problem(problem)


def _batches(items: Iterator, size: int = BATCH) -> Iterator[list]:
    while batch := list(islice(items, size)):
        yield batch


def _render(tokenizer, fmt: str, conversations: list[list[dict]], max_len: int, train_on_all: bool,
            long_docs: str = "chunk") -> list[list[render.Rendered]]:
    """The one rendering path of preview, inspect and prepare: each conversation -> its saved rows
    (one, or several chunks for a long raw-text document)."""
    if fmt == "text":
        return render.render_plain_batch(tokenizer, [c[0]["content"] for c in conversations], max_len, long_docs)
    return [[r] for r in render.render_batch(tokenizer, conversations, max_len, train_on_all)]


def _render_rows(tokenizer, fmt: str, conversations: list[list[dict]], max_len: int, train_on_all: bool,
                 long_docs: str) -> list:
    """_render, but a row the chat template refuses (e.g. parallel tool calls where the template
    allows one) becomes a RowError for that row instead of stopping the whole file."""
    try:
        return _render(tokenizer, fmt, conversations, max_len, train_on_all, long_docs)
    except Exception:  # jinja2's TemplateError or a template's raise_exception; find the rows one by one
        out = []
        for conversation in conversations:
            try:
                out.append(_render(tokenizer, fmt, [conversation], max_len, train_on_all, long_docs)[0])
            except Exception as exc:
                out.append(formats.RowError(f"the chat template cannot render this row ({exc})"))
        return out


def _notes(tokenizer, options: formats.Options, fmt: str) -> list[str]:
    """What the template will do that the data does not say: its default system prompt, no tools."""
    if tokenizer is None or fmt == "text":
        return []
    notes = []
    default = render.default_system_prompt(tokenizer)
    if default and options.system == "keep":
        notes.append(f"Rows without a system turn get the template's default system prompt: \"{default}\" "
                     f"(choose 'none' or your own to change it).")
    if not render.supports_tools(tokenizer):
        notes.append(render.TOOL_FALLBACK_NOTE)
    return notes


def _scan(path, fmt, mapping, cot_style, tokenizer, max_len, train_on_all, progress: Progress,
          options: formats.Options | None = None, long_docs: str = "chunk") -> tuple[Inspection, Iterator[list]]:
    """The shared engine of inspect and prepare: the report (filled in while iterating) and the
    batches of kept rows, each a list of (row, messages, [Rendered, ...] | None)."""
    options = (options or formats.Options()).check()
    if long_docs not in render.LONG_DOCS:
        raise DataError(f"Unknown choice for long documents {long_docs!r}.", "Use chunk or cut.")
    detection, fmt, mapping, rows = _choose(path, fmt, mapping)
    report = Inspection(str(path), detection, fmt, mapping, options=options, long_docs=long_docs,
                        template_warning=render.template_warning(tokenizer) if tokenizer is not None else "")
    conversations = _conversations(rows, fmt, mapping, cot_style, report)
    return report, _scan_batches(report, conversations, tokenizer, max_len, train_on_all, progress)


def _count_cuts(report: Inspection, items: list[render.Rendered]) -> None:
    report.lengths.append(items[0].length)
    dropped = sum(item.dropped for item in items)
    report.rows_cut += dropped > 0
    report.tokens_dropped += dropped
    if len(items) > 1:
        report.rows_chunked += 1
        report.chunks += len(items)


def _scan_batches(report: Inspection, conversations: Iterator, tokenizer, max_len: int, train_on_all: bool,
                  progress: Progress) -> Iterator[list]:
    start = time.time()
    expected = io.estimate_rows(report.path)
    for batch in _batches(conversations):
        rendered = (_render_rows(tokenizer, report.format, [m for _, m in batch], max_len, train_on_all,
                                 report.long_docs) if tokenizer is not None else [None] * len(batch))
        kept = []
        for (row, messages), items in zip(batch, rendered, strict=True):
            if isinstance(items, formats.RowError):
                report.rows_invalid += 1
                report.add_problem(Problem(row, items.reason))
                continue
            if items is not None and not any(any(item.assistant_masks) for item in items):
                report.too_long += 1
                report.add_problem(Problem(row, f"no trained token within max_len={max_len} (the row has "
                                                f"{items[0].length} tokens); raise the max length", "too_long"))
                continue
            if items is not None:
                _count_cuts(report, items)
            if len(report.preview) < PREVIEW_ROWS:
                report.preview.append((row, messages))
            kept.append((row, messages, items))
        yield io.batch_read(report, kept, expected, progress)
    if tokenizer is not None:
        report.token_stats = render.token_stats(report.lengths, max_len)
        report.notes = _notes(tokenizer, report.options, report.format)
        if report.format == "text" or report.tool_rows == 0:
            report.notes = [n for n in report.notes if n != render.TOOL_FALLBACK_NOTE]
        if report.identity_rows and report.options.system == "keep" and render.default_system_prompt(tokenizer):
            report.notes.append(f"{report.identity_rows:,} rows say who the assistant is, which the template's "
                                f"default system prompt may contradict: consider 'none' or your own.")
    report.seconds += time.time() - start


def inspect(path, fmt: str | None = None, mapping: dict | None = None, cot_style: str = "think",
            tokenizer=None, max_len: int = 1024, train_on_all: bool = False,
            progress: Progress = _no_progress, options: formats.Options | None = None,
            long_docs: str = "chunk") -> Inspection:
    """Detect, convert and check every row (and render and count tokens when a tokenizer is given)."""
    report, batches = _scan(path, fmt, mapping, cot_style, tokenizer, max_len, train_on_all, progress,
                            options, long_docs)
    for _ in batches:
        pass
    return report


def _row(path, row: int, fmt: str | None, mapping: dict | None, cot_style: str,
         options: formats.Options | None) -> tuple[str, formats.Conversation]:
    _, fmt, mapping, rows = _choose(path, fmt, mapping)
    record = io.record_at(rows, row, path)
    try:
        return fmt, _convert(record, fmt, mapping, cot_style, (options or formats.Options()).check())
    except formats.RowError as exc:
        raise DataError(f"Row {row} is invalid: {exc.reason}.", "Choose another row, or fix it.") from exc


def conversation_at(path, row: int, fmt: str | None = None, mapping: dict | None = None,
                    cot_style: str = "think", options: formats.Options | None = None) -> formats.Conversation:
    """The normalized conversation of one row (as numbered in the problems list); DataError if invalid."""
    return _row(path, row, fmt, mapping, cot_style, options)[1]


def preview_row(path, row: int, tokenizer, fmt: str | None = None, mapping: dict | None = None,
                cot_style: str = "think", options: formats.Options | None = None, max_len: int = 1024,
                train_on_all: bool = False, long_docs: str = "chunk"
                ) -> tuple[formats.Conversation, list[render.Rendered]]:
    """One row exactly as `prepare` saves it: its conversation and its rows (ids and masks)."""
    fmt, messages = _row(path, row, fmt, mapping, cot_style, options)
    items = _render_rows(tokenizer, fmt, [messages], max_len, train_on_all, long_docs)[0]
    if isinstance(items, formats.RowError):
        raise DataError(f"Row {row} is invalid: {items.reason}.", "Choose another row, or another model.")
    return messages, items


# ---------------------------------------------------------------- preparing and the store


def _target(name: str, overwrite: bool) -> Path:
    try:
        paths.check_name(name, "dataset name")
    except ConfigError as exc:
        raise DataError(exc.message, exc.fix) from exc
    target = paths.datasets_dir() / name
    if target.exists() and not overwrite:
        raise DataError(f"A dataset named {name!r} already exists.",
                        "Choose another name, or overwrite it (CLI: --overwrite; app: tick 'Overwrite').")
    return target


def _write_all(tmp: Path, batches: Iterator[list]) -> None:
    """Pass 1: every kept row into all.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("assistant_masks", pa.list_(pa.int8())),
                        ("messages", pa.string()), ("tools", pa.string()), ("row", pa.int64()),
                        ("source", pa.int64())])
    source = 0  # ordinal of the kept source row: the split keeps a document's chunks together
    with pq.ParquetWriter(tmp / "all.parquet", schema) as writer:
        for kept in batches:
            flat = []
            for row, messages, items in kept:
                flat += [(row, messages, item, source) for item in items]
                source += 1
            if flat:
                writer.write_table(pa.table({
                    "input_ids": [r.input_ids for _, _, r, _ in flat],
                    "assistant_masks": [r.assistant_masks for _, _, r, _ in flat],
                    "messages": [json.dumps(m, ensure_ascii=False) for _, m, _, _ in flat],
                    "tools": [json.dumps(getattr(m, "tools", []), ensure_ascii=False) for _, m, _, _ in flat],
                    "row": [row for row, _, _, _ in flat], "source": [n for *_, n in flat]}, schema=schema))


def _split_files(tmp: Path, n: int, eval_split: float, seed: int) -> tuple[int, int]:
    """Pass 2: all.parquet -> train.parquet and eval.parquet, by a seeded split of the n kept source
    rows (a document's chunks stay on one side); returns the saved rows on each side."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    _, eval_idx = render.split_indices(n, eval_split, seed)
    is_eval = np.zeros(n, dtype=bool)
    is_eval[eval_idx] = True
    source = pq.ParquetFile(tmp / "all.parquet")
    writers = {"train": pq.ParquetWriter(tmp / "train.parquet", source.schema_arrow)}
    if eval_idx:
        writers["eval"] = pq.ParquetWriter(tmp / "eval.parquet", source.schema_arrow)
    counts = {"train": 0, "eval": 0}
    for batch in source.iter_batches(batch_size=BATCH):
        flags = pa.array(is_eval[batch.column("source").to_numpy()])
        parts = {"train": batch.filter(pc.invert(flags)), "eval": batch.filter(flags)}
        for side, writer in writers.items():
            writer.write_batch(parts[side])
            counts[side] += parts[side].num_rows
    for writer in writers.values():
        writer.close()
    (tmp / "all.parquet").unlink()
    return counts["train"], counts["eval"]


def prepare(path, model_ref: str, name: str, max_len: int = 1024, eval_split: float = 0.1,
            fmt: str | None = None, mapping: dict | None = None, cot_style: str = "think",
            train_on_all: bool = False, seed: int = 42, overwrite: bool = False,
            progress: Progress | None = None, options: formats.Options | None = None,
            long_docs: str = "chunk") -> Path:
    """Convert, render, mask, dedupe, split and save a dataset as datasets/<name>/; returns the folder."""
    progress = progress or _no_progress
    _check_settings(max_len, eval_split, cot_style)
    target = _target(name, overwrite)
    progress(0.0, f"Loading the tokenizer of {model_ref}...")
    tokenizer = tokenizer_for(model_ref)
    tmp = target.with_name(f".{name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        report, batches = _scan(path, fmt, mapping, cot_style, tokenizer, max_len, train_on_all, progress,
                                options, long_docs)
        _write_all(tmp, batches)
        require_usable(report)
        progress(0.92, "Splitting train/eval...")
        n_train, n_eval = _split_files(tmp, report.rows_ok, eval_split, seed)
        _write_problems(tmp / "problems.jsonl", report)
        meta = _meta(name, path, model_ref, tokenizer, report, max_len, eval_split, cot_style,
                     train_on_all, seed, n_train, n_eval)
        write_json_atomic(tmp / "meta.json", meta)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # atomic: a failed or cancelled prepare never leaves a half dataset
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(1.0, f"Saved {n_train} train and {n_eval} eval rows as {name!r}.")
    return target


def _check_settings(max_len: int, eval_split: float, cot_style: str) -> None:
    if not isinstance(max_len, int) or max_len < 16:  # below 16 tokens not even a template header fits
        raise DataError(f"max_len={max_len} is too small.", "Use at least 16 tokens; 512-2048 is typical.")
    if not 0 <= eval_split < 1:
        raise DataError(f"eval_split={eval_split} is out of range.", "Use a fraction in [0, 1), e.g. 0.1.")
    if cot_style not in formats.COT_STYLES:
        raise DataError(f"Unknown chain-of-thought style {cot_style!r}.",
                        f"Use one of: {', '.join(formats.COT_STYLES)}.")


def require_usable(report: Inspection) -> None:
    """DataError naming the first reasons when no row of the file can be trained on."""
    if report.rows_ok == 0:
        fix = "Fix the rows, or choose another format or mapping."
        if report.too_long:
            fix = f"Raise the max length ({report.too_long} rows have no trained token within it), or shorten them."
        raise DataError(f"No row of {Path(report.path).name} is usable ({report.rows_in} rows read): "
                        f"{_first_reasons(report)}.", fix)


def _first_reasons(report: Inspection, n: int = 3) -> str:
    return "; ".join(f"row {p.row}: {p.reason}" for p in report.problems[:n])


def _write_problems(path: Path, report: Inspection) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for problem in report.problems:
            f.write(json.dumps(problem.as_dict(), ensure_ascii=False) + "\n")


def _meta(name, path, model_ref, tokenizer, report: Inspection, max_len, eval_split, cot_style,
          train_on_all, seed, n_train, n_eval) -> dict:
    return {
        "name": name, "source_file": str(Path(path).resolve()), "source_sha256": _source_hash(path),
        "format": report.format, "evidence": report.detection.evidence, "mapping": report.mapping,
        "cot_style": cot_style, "model_ref": model_ref,
        "tokenizer_fingerprint": render.tokenizer_fingerprint(tokenizer),
        "template": "model" if tokenizer.chat_template else "chatml-fallback",
        "template_warning": report.template_warning, "max_len": max_len, "train_on_all": train_on_all,
        "eval_split": eval_split, "seed": seed, **report.options.as_meta(),
        "default_system_prompt": render.default_system_prompt(tokenizer), "long_docs": report.long_docs,
        "tools": "native" if render.supports_tools(tokenizer) else "text-fallback", "notes": report.notes,
        "placeholders": report.placeholders, "identity_rows": report.identity_rows, "tool_rows": report.tool_rows,
        "counts": {"rows_in": report.rows_in, "rows_ok": report.rows_ok, "rows_invalid": report.rows_invalid,
                   "duplicates": report.duplicates, "too_long": report.too_long, "rows_cut": report.rows_cut,
                   "tokens_dropped": report.tokens_dropped, "rows_chunked": report.rows_chunked,
                   "chunks": report.chunks, "train": n_train, "eval": n_eval,
                   "over_max_len": (report.token_stats or {}).get("over_max_len", 0)},
        "cuts": report.cuts_line(),
        "token_stats": report.token_stats, "problems_file": "problems.jsonl",
        "seconds": round(report.seconds, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _source_hash(path) -> str:
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()  # a saved `datasets` folder: hash its files in name order
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode())
        digest.update(file_sha256(item).encode())
    return digest.hexdigest()


def _folder(name: str) -> Path:
    try:
        paths.check_name(name, "dataset name")
    except ConfigError as exc:
        raise DataError(exc.message, exc.fix) from exc
    folder = paths.datasets_dir() / name
    if not (folder / "meta.json").is_file():
        known = ", ".join(d["name"] for d in list_datasets()) or "none yet"
        raise DataError(f"There is no prepared dataset named {name!r} (prepared: {known}).",
                        "Prepare it first in the Data tab or with `python -m studio data prepare`.")
    return folder


def load_prepared(name: str) -> Prepared:
    """The train (and eval) datasets.Dataset of a prepared dataset, with its meta."""
    import datasets
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    folder = _folder(name)

    def load(split: str):
        file = folder / f"{split}.parquet"
        if not file.is_file():
            return None
        table = pq.read_table(file, columns=["input_ids", "assistant_masks", "messages"])
        return datasets.Dataset(InMemoryTable(table))

    return Prepared(load("train"), load("eval"), read_json(folder / "meta.json", {}), folder)


def check_tokenizer(meta: dict, tokenizer) -> None:
    """DataError when a prepared dataset was made for another tokenizer (other ids, other template)."""
    fingerprint = render.tokenizer_fingerprint(tokenizer)
    if meta.get("tokenizer_fingerprint") != fingerprint:
        raise DataError(f"The dataset {meta.get('name')!r} was prepared for the tokenizer of "
                        f"{meta.get('model_ref')!r}, which differs from this model's.",
                        "Prepare the dataset again with this model selected.")


def prepared_sha256(name: str) -> str:
    """A hash of what a run trains on: the prepared splits' files (train/eval parquet), in name order.
    Preparing the same file with the same settings writes the same bytes, so the hash is the same."""
    folder = _folder(name)
    digest = hashlib.sha256()
    for item in sorted(folder.glob("*.parquet")):
        digest.update(item.name.encode())
        digest.update(file_sha256(item).encode())
    return digest.hexdigest()


def check_unchanged(name: str, recorded: str, run_id: str) -> None:
    """DataError when dataset `name` no longer holds the rows run `run_id` started on (hash `recorded`;
    runs made before hashes were recorded have none and are not checked)."""
    if not recorded:
        return
    try:
        now = prepared_sha256(name)
    except DataError as exc:
        raise DataError(f"Run {run_id!r} cannot resume: its dataset {name!r} is gone. {exc.message}",
                        f"Prepare {name!r} again from the same file with the same settings, or start a new run."
                        ) from exc
    if now != recorded:
        raise DataError(f"Run {run_id!r} cannot resume: its dataset {name!r} was prepared again since the run "
                        "started, so the remaining steps would train on other rows than the first ones.",
                        f"Start a new run on {name!r} as it is now, or prepare {name!r} again from the same file "
                        "with the same settings (that gives back the same rows) and resume.")


def list_datasets() -> list[dict]:
    """The meta of every prepared dataset, by name."""
    metas = []
    for folder in sorted(paths.datasets_dir().iterdir()):
        meta = read_json(folder / "meta.json") if folder.is_dir() and not folder.name.startswith(".") else None
        if meta:
            metas.append(meta)
    return metas


def delete_dataset(name: str) -> None:
    shutil.rmtree(_folder(name))
