"""Read dataset files: .json, .jsonl, .csv, .tsv, .parquet, .txt and folders saved by `datasets`.

Two entry points:
- `iter_records(path)` yields `(row, record)` lazily, where `record` is a dict or a `BadRecord`
  (a line that is not valid JSON, or not UTF-8). Big files stream in batches (pyarrow for
  CSV/TSV/Parquet, line by line for JSONL/TXT), so a 500 MB file never becomes 500 MB of Python
  objects at once. `row` is what the user can find in the file: the line number for .jsonl/.txt,
  the 1-based record number otherwise.
- `read_records(path, limit)` returns a list of dicts and raises `DataError` on the first bad line
  (strict, for small files and callers that want all or nothing).

A .json file (an array, or an object holding one list) is parsed whole by the json module: use
JSONL for files too big for memory.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from studio.errors import DataError

FILE_TYPES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
BATCH_ROWS = 1000  # rows per pyarrow batch: small enough for bounded memory, big enough to be fast
_CHUNK = 1 << 20  # 1 MiB reads when checking that a file is UTF-8


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be read at all (bad JSON, bad bytes); counted and listed, never dropped."""

    reason: str


def file_type(path: str | Path) -> str:
    """'.jsonl', '.csv', ... or 'datasets' for a folder saved by `datasets`; DataError otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"The file {path} does not exist.", "Check the path, or upload the file again.")
    if path.is_dir():
        if any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "datasets"
        raise DataError(f"The folder {path} is not a dataset saved by `datasets` (no dataset_info.json).",
                        "Give a folder written by Dataset.save_to_disk, or one data file.")
    suffix = path.suffix.lower()
    if suffix == ".ndjson":
        return ".jsonl"
    if suffix not in FILE_TYPES:
        raise DataError(f"Cannot read {path.name}: {suffix or 'no extension'} is not a supported file type.",
                        f"Use one of {', '.join(FILE_TYPES)} or a folder saved by `datasets`.")
    if path.stat().st_size == 0:
        raise DataError(f"The file {path.name} is empty.", "Choose a file that holds at least one example.")
    return suffix


def iter_records(path: str | Path) -> Iterator[tuple[int, dict | BadRecord]]:
    """Yield (row, record) for every record of the file, lazily."""
    kind = file_type(path)
    path = Path(path)
    readers = {".jsonl": _iter_jsonl, ".txt": _iter_txt, ".json": _iter_json, ".csv": _iter_csv,
               ".tsv": _iter_csv, ".parquet": _iter_parquet, "datasets": _iter_saved}
    return readers[kind](path)


def read_records(path: str | Path, limit: int | None = None) -> list[dict]:
    """Up to `limit` records as dicts; DataError naming the row/line of the first unreadable one."""
    records = []
    for _row, record in islice(iter_records(path), limit):
        if isinstance(record, BadRecord):
            raise DataError(f"{Path(path).name}: {record.reason}", "Fix or delete that line and try again.")
        records.append(record)
    if not records:
        raise DataError(f"{Path(path).name} holds no records.", "Choose a file with at least one example.")
    return records


def columns_of(records: list[dict]) -> list[str]:
    """Column names in first-seen order across the records."""
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    return list(seen)


# ---------------------------------------------------------------- line-based: JSONL, TXT


def _iter_lines(path: Path) -> Iterator[tuple[int, str | BadRecord]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, BadRecord(f"line {number} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                                        f"column {exc.start + 1}); re-save the file as UTF-8")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict | BadRecord]]:
    for number, line in _iter_lines(path):
        if isinstance(line, BadRecord):
            yield number, line
            continue
        line = line.strip().lstrip("\ufeff")  # a BOM on line 1 is common from Windows editors
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, BadRecord(f"line {number} is not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if isinstance(value, dict):
            yield number, value
        else:
            yield number, BadRecord(f"line {number} holds a JSON {type(value).__name__}, not an object {{...}}")


def _iter_txt(path: Path) -> Iterator[tuple[int, dict | BadRecord]]:
    """Raw text: one record {"text": ...} per paragraph (paragraphs are separated by blank lines)."""
    start, lines = 0, []
    for number, line in _iter_lines(path):
        if isinstance(line, BadRecord):
            yield number, line
            continue
        if line.strip():
            start = start or number
            lines.append(line.rstrip("\r\n"))
        elif lines:
            yield start, {"text": "\n".join(lines)}
            start, lines = 0, []
    if lines:
        yield start, {"text": "\n".join(lines)}


# ---------------------------------------------------------------- whole-file JSON


def _iter_json(path: Path) -> Iterator[tuple[int, dict | BadRecord]]:
    text = _read_utf8(path)
    try:
        value = json.loads(text.lstrip("\ufeff"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).",
                        "Fix the file, or if it has one JSON object per line, rename it to .jsonl.") from exc
    items = _json_items(value, path)
    for number, item in enumerate(items, start=1):
        yield number, item if isinstance(item, dict) else BadRecord(
            f"record {number} is a JSON {type(item).__name__}, not an object {{...}}")


def _json_items(value, path: Path) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = [key for key, v in value.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if len(lists) == 1:
            return value[lists[0]]
        if not lists:
            return [value]  # a single example
        raise DataError(f"{path.name} holds several lists ({', '.join(lists)}); it is unclear which is the data.",
                        "Save the list of examples alone as a JSON array, or as JSONL.")
    raise DataError(f"{path.name} holds a JSON {type(value).__name__}, not a list of examples.",
                    "Save the examples as a JSON array of objects, or as JSONL.")


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path.name} is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line}.",
                        "Re-save it as UTF-8 (e.g. Excel: 'CSV UTF-8'; or `iconv -f latin1 -t utf-8`).") from exc


def check_utf8(path: Path) -> None:
    """DataError naming the line of the first byte that is not UTF-8; reads in 1 MiB chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    newline = b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            pending = len(decoder.getstate()[0])  # bytes of a character split across two chunks
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad = max(exc.start - pending, 0)
                where = line + chunk.count(newline, 0, bad)
                raise DataError(
                    f"{path.name} is not UTF-8 text: byte 0x{chunk[bad]:02x} on line {where} "
                    f"(byte offset {offset + bad}).",
                    "Re-save it as UTF-8 (e.g. Excel: 'CSV UTF-8'; or `iconv -f latin1 -t utf-8`).") from exc
            line += chunk.count(newline)
            offset += len(chunk)


# ---------------------------------------------------------------- columnar: CSV, TSV, Parquet, datasets


def _iter_batches(batches, start: int = 1) -> Iterator[tuple[int, dict]]:
    number = start
    for batch in batches:
        for record in batch.to_pylist():
            yield number, record
            number += 1


def _iter_csv(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    from pyarrow import csv

    check_utf8(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # Every column as text: a column of numbers must not turn "007" into 7 or a prompt into a float.
    try:
        header = csv.open_csv(path, parse_options=csv.ParseOptions(delimiter=delimiter)).schema.names
        reader = csv.open_csv(
            path, read_options=csv.ReadOptions(block_size=1 << 22),  # 4 MiB blocks
            parse_options=csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=csv.ConvertOptions(column_types={name: pa.string() for name in header},
                                               strings_can_be_null=False))
        yield from _iter_batches(reader)
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path.name} is not a readable {'CSV' if delimiter == ',' else 'TSV'} file: {exc}",
                        "Check that every row has as many fields as the header, and quotes are closed.") from exc


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path.name} is not a readable Parquet file: {exc}",
                        "Write it again with pandas.to_parquet or pyarrow.") from exc
    yield from _iter_batches(parquet.iter_batches(batch_size=BATCH_ROWS))


def _iter_saved(path: Path) -> Iterator[tuple[int, dict]]:
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot load the saved dataset in {path}: {exc}",
                        "Give a folder written by Dataset.save_to_disk.") from exc
    if isinstance(saved, datasets.DatasetDict):
        split = "train" if "train" in saved else next(iter(saved))
        saved = saved[split]
    yield from _iter_batches(saved.data.to_batches(max_chunksize=BATCH_ROWS))


def estimate_rows(path: str | Path) -> int | None:
    """A quick row count for progress bars: Parquet metadata, or newlines in text files."""
    path = Path(path)
    kind = file_type(path)
    if kind == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if kind in (".jsonl", ".csv", ".tsv"):
        count = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                count += chunk.count(b"\n")
        return max(count - (kind != ".jsonl"), 1)  # minus the header line of CSV/TSV
    return None


def batch_read(report, kept: list, expected: int | None, progress) -> list:
    """Count a scanned batch's kept rows in `report` (rows_ok) and report progress; returns `kept`."""
    report.rows_ok += len(kept)
    progress(min(0.9, report.rows_in / expected) if expected else 0.5, f"{report.rows_in:,} rows read")
    return kept


def record_at(rows: Iterator, row: int, path) -> dict:
    """The record numbered `row` among (number, record) pairs; DataError when it cannot be read or is not there."""
    for number, record in rows:
        if number == row:
            if isinstance(record, BadRecord):
                raise DataError(f"Row {row} cannot be read: {record.reason}.", "Choose another row.")
            return record
    raise DataError(f"There is no row {row} in {Path(path).name}.", "Choose a row number from the preview.")
