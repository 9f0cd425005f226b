"""Unpaired answers marked good or bad (thumbs up / down) for KTO: detect, convert, prepare.

A KTO row is a conversation whose last assistant turn is the answer, plus a boolean label (desirable or not).
Formats `detect` recognizes (any conversation shape the SFT path reads, plus a label column):
- llamafactory: LLaMA-Factory's `kto_tag` beside ShareGPT `conversations` (or messages / alpaca columns);
- trl: TRL's unpaired preference form, `prompt` / `completion` / `label` (text, or lists of messages);
- sharegpt: a ShareGPT or OpenAI turns list plus a `label` column.
Labels may be booleans, 0/1, or the words true/false, yes/no, good/bad, up/down.

`prepare` saves datasets/<name>/ with train/eval parquet (prompt as JSON messages, completion text, label) and
`"kind": "kto"` in meta.json; the worker (`studio.jobs.kto`) hands the rows to TRL's KTOTrainer, which renders
them through the model's chat template.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from studio.data import formats, io, render
from studio.errors import DataError

KIND = "kto"
LABEL_KEYS = ("kto_tag", "label")
SAMPLE_ROWS = 200
TRUE_WORDS = {"true", "1", "yes", "good", "up", "desirable", "thumbs_up", "+"}
FALSE_WORDS = {"false", "0", "no", "bad", "down", "undesirable", "thumbs_down", "-"}


@dataclass(frozen=True)
class Detection:
    format: str  # llamafactory | trl | sharegpt, or "" when the rows carry no label
    evidence: str
    label_key: str = ""
    sft_format: str = ""  # how the conversation itself is read (studio.data.formats)

    @property
    def is_kto(self) -> bool:
        return bool(self.format)


@dataclass
class Report:
    detection: Detection
    rows: list[dict] = field(default_factory=list)  # {"prompt": [messages], "completion": str, "label": bool}
    problems: list[dict] = field(default_factory=list)  # {"row": n, "reason": ...}

    @property
    def counts(self) -> dict:
        good = sum(r["label"] for r in self.rows)
        return {"rows_ok": len(self.rows), "desirable": good, "undesirable": len(self.rows) - good,
                "rows_invalid": len(self.problems)}


def label_value(value) -> bool | None:
    """A label as a bool; None when it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None
    return None


def _label_key(record: dict) -> str | None:
    keys = formats.column_keys(record)
    return next((keys[k] for k in LABEL_KEYS if k in keys and label_value(record[keys[k]]) is not None), None)


def detect(records: list) -> Detection:
    """The KTO format of the first rows (most rows must carry a label and a conversation)."""
    rows = [r for r in records[:SAMPLE_ROWS] if isinstance(r, dict)]
    labelled = [r for r in rows if _label_key(r)]
    if not rows or len(labelled) * 2 <= len(rows):
        return Detection("", "The rows carry no kto_tag or label column with true/false values.")
    label_key = _label_key(labelled[0])
    sft = formats.detect([{k: v for k, v in r.items() if k != label_key} for r in labelled])
    if sft.format in ("mapped", "text"):
        return Detection("", f"The rows have a {label_key} column but no prompt and answer columns.")
    keys = formats.column_keys(labelled[0])
    fmt = ("llamafactory" if label_key.lower() == "kto_tag" else
           "trl" if sft.format == "prompt_completion" else "sharegpt" if sft.format in ("sharegpt", "openai")
           else f"{sft.format}+label")
    evidence = (f"{len(labelled)} of {len(rows)} sampled rows have a boolean {label_key!r} beside "
                f"{sft.format} columns ({', '.join(k for k in keys.values() if k != label_key)}).")
    return Detection(fmt, evidence, label_key, sft.format)


def file_is_kto(path) -> bool:
    head = [r for _, r in islice(io.iter_records(path), SAMPLE_ROWS) if isinstance(r, dict)]
    return bool(head) and detect(head).is_kto


def to_row(record: dict, detection: Detection) -> dict:
    """One record -> {"prompt": messages before the answer, "completion": the answer, "label": bool}."""
    label = label_value(record.get(detection.label_key))
    if label is None:
        raise formats.RowError(f"{detection.label_key} is {record.get(detection.label_key)!r}, not true or false")
    body = {k: v for k, v in record.items() if k != detection.label_key}
    messages = formats.to_messages(body, detection.sft_format)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
    if last == 0 or not str(messages[last].get("content") or "").strip():
        raise formats.RowError("no assistant answer after a prompt")
    prompt = [{"role": m["role"], "content": m.get("content") or ""} for m in messages[:last]]
    return {"prompt": prompt, "completion": str(messages[last]["content"]), "label": label}


def inspect_file(path) -> Report:
    """Every row converted (or its problem listed); DataError when the file is not KTO data."""
    records = list(io.iter_records(path))
    detection = detect([r for _, r in records[:SAMPLE_ROWS]])
    if not detection.is_kto:
        raise DataError(f"{Path(path).name} is not KTO data: {detection.evidence}",
                        "Give every row a kto_tag or label column (true for a good answer, false for a bad one).")
    report = Report(detection)
    for row, record in records:
        try:
            if not isinstance(record, dict):
                raise formats.RowError("unreadable row")
            report.rows.append(to_row(record, detection))
        except (formats.RowError, DataError) as exc:
            report.problems.append({"row": row, "reason": str(getattr(exc, "message", exc))})
    return report


def prepare(path, model_ref: str, name: str, eval_split: float = 0.1, seed: int = 42,
            overwrite: bool = False) -> Path:
    """Save datasets/<name>/ (train/eval parquet, meta.json with kind 'kto'); never over an existing one silently."""
    import shutil

    import pyarrow as pa

    from studio import policy
    from studio.data import store
    from studio.data.preference import write_splits
    from studio.util import write_json_atomic

    if not 0 <= eval_split < 1:
        raise DataError(f"The eval split {eval_split} is not between 0 and 1.", "Use e.g. 0.1 for 10%.")
    target = store._target(name, overwrite)
    report = inspect_file(path)
    if not report.rows or report.counts["desirable"] in (0, len(report.rows)):
        raise DataError(f"{Path(path).name} needs both good and bad answers for KTO ({report.counts}).",
                        "Label some answers true (good) and some false (bad).")
    table = pa.table({"prompt": [json.dumps(r["prompt"], ensure_ascii=False) for r in report.rows],
                      "completion": [r["completion"] for r in report.rows], "label": [r["label"] for r in report.rows]})
    tmp, train_idx, eval_idx = write_splits(table, target, eval_split, seed)
    write_json_atomic(tmp / "meta.json", _meta(name, path, model_ref, report, eval_split, seed, train_idx, eval_idx))
    policy.stamp(tmp)
    if target.exists():
        shutil.rmtree(target)  # only with overwrite=True (store._target refuses otherwise)
    tmp.replace(target)
    return target


def _meta(name, path, model_ref, report: Report, eval_split, seed, train_idx, eval_idx) -> dict:
    from studio.data import store

    tokenizer = store.tokenizer_for(model_ref)
    return {"name": name, "kind": KIND, "source_file": str(Path(path).resolve()),
            "source_sha256": store._source_hash(path), "format": f"kto:{report.detection.format}",
            "evidence": report.detection.evidence, "model_ref": model_ref,
            "tokenizer_fingerprint": render.tokenizer_fingerprint(tokenizer), "eval_split": eval_split, "seed": seed,
            "counts": {**report.counts, "train": len(train_idx), "eval": len(eval_idx)},
            "problems": report.problems[:50], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def load_split(folder: Path, which: str):
    """A prepared KTO split as a datasets.Dataset in TRL's conversational form (prompt / completion / label)."""
    import datasets
    import pyarrow.parquet as pq

    file = folder / f"{which}.parquet"
    if not file.is_file():
        return None
    table = pq.read_table(file).to_pylist()
    return datasets.Dataset.from_list([{"prompt": json.loads(r["prompt"]),
                                        "completion": [{"role": "assistant", "content": r["completion"]}],
                                        "label": bool(r["label"])} for r in table])
