"""Prepared datasets on disk: what training reads, never overwritten silently, and the CLI twin."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from studio.cli import main
from studio.data import store
from studio.data.render import apply_template
from studio.errors import DataError
from studio.models import load_tokenizer

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def test_prepare_hinglish_sample_writes_train_eval_and_meta(workspace, tiny_model_dir):
    folder = store.prepare(ASSETS / "hinglish_demo.jsonl", str(tiny_model_dir), "hinglish", max_len=256,
                           eval_split=0.1)
    assert folder == workspace / "datasets" / "hinglish"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == "openai" and meta["max_len"] == 256 and meta["train_on_all"] is False
    assert meta["counts"] == {"rows_in": 106, "rows_ok": 106, "rows_invalid": 0, "duplicates": 0, "too_long": 0,
                              "rows_cut": 0, "tokens_dropped": 0, "rows_chunked": 0, "chunks": 0,
                              "train": 95, "eval": 11, "over_max_len": 0}
    for key in ("source_file", "source_sha256", "mapping", "model_ref", "tokenizer_fingerprint", "token_stats",
                "created"):
        assert meta[key] is not None, key
    train = pq.read_table(folder / "train.parquet")
    assert {"input_ids", "assistant_masks", "messages"} <= set(train.column_names)
    tok = load_tokenizer(str(tiny_model_dir))
    row = train.slice(0, 1).to_pylist()[0]
    messages = json.loads(row["messages"])
    assert tok.decode(row["input_ids"]) == apply_template(tok, messages)
    assert len(row["input_ids"]) == len(row["assistant_masks"]) <= 256 and 0 < sum(row["assistant_masks"])

    prepared = store.load_prepared("hinglish")
    assert (len(prepared.train), len(prepared.eval)) == (95, 11)
    assert prepared.meta["name"] == "hinglish"
    store.check_tokenizer(prepared.meta, tok)
    assert [m["name"] for m in store.list_datasets()] == ["hinglish"]


def test_existing_name_is_not_overwritten_unless_asked(tiny_model_dir):
    path = ASSETS / "medical_demo.jsonl"
    store.prepare(path, str(tiny_model_dir), "med", eval_split=0.0)
    assert not (store.paths.datasets_dir() / "med" / "eval.parquet").exists()
    with pytest.raises(DataError, match="already exists") as err:
        store.prepare(path, str(tiny_model_dir), "med")
    assert "overwrite" in err.value.fix.lower()
    store.prepare(path, str(tiny_model_dir), "med", eval_split=0.2, overwrite=True)
    assert store.load_prepared("med").meta["counts"]["eval"] == 22


def test_rows_too_long_for_any_answer_are_listed(tmp_path, tiny_model_dir):
    rows = [{"prompt": "word " * 200, "completion": "short"}, {"prompt": "q", "completion": "a"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = store.prepare(path, str(tiny_model_dir), "long", max_len=64, eval_split=0)
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["counts"]["too_long"], meta["counts"]["train"]) == (1, 1)
    problems = [json.loads(line) for line in (folder / "problems.jsonl").read_text().splitlines()]
    assert problems[0]["row"] == 1 and problems[0]["kind"] == "too_long"


def test_other_tokenizer_is_refused(tiny_model_dir):
    store.prepare(ASSETS / "hinglish_demo.jsonl", str(tiny_model_dir), "h")
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = "{{ messages }}"
    with pytest.raises(DataError, match="prepared for the tokenizer"):
        store.check_tokenizer(store.load_prepared("h").meta, tok)


def test_bad_names_and_missing_datasets():
    with pytest.raises(DataError, match="not allowed"):
        store.prepare(ASSETS / "hinglish_demo.jsonl", "bundled", "../escape")
    with pytest.raises(DataError, match="no prepared dataset named 'ghost'"):
        store.load_prepared("ghost")


def test_cli_inspect_prepare_list_delete(tiny_model_dir, capsys):
    assert main(["data", "inspect", str(ASSETS / "medical_demo.jsonl"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["format"], report["rows_ok"]) == ("reasoning", 111)
    assert main(["data", "inspect", str(ASSETS / "hinglish_demo.jsonl"), "--model", str(tiny_model_dir),
                 "--show-row", "1"]) == 0
    out = capsys.readouterr().out
    assert "format      openai" in out and "[[Ek cup paani ubaalo" in out and "<|im_end|>]]" in out
    args = ["data", "prepare", str(ASSETS / "medical_demo.jsonl"), "--model", str(tiny_model_dir), "--name", "m",
            "--max-len", "128", "--eval-split", "0.1"]
    assert main(args) == 0
    assert "saved" in capsys.readouterr().out
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "list"]) == 0 and "m " in capsys.readouterr().out
    assert main(["data", "delete", "m"]) == 0
    assert store.list_datasets() == []


def test_cli_mapping_for_unknown_columns(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("colA,colB\nhello,world\n")
    assert main(["data", "inspect", str(path)]) == 2
    assert "needs a column mapping" in capsys.readouterr().err
    assert main(["data", "inspect", str(path), "--map", "prompt=colA,response=colB", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_ok"] == 1
