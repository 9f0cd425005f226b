"""Bad input gets a clear message; valid rows are never dropped silently; big files stream."""

from __future__ import annotations

import json

import pytest

from studio.data import io, store
from studio.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty.jsonl is empty"):
        store.inspect(path)


def test_invalid_json_line_is_named_and_other_rows_kept(tmp_path):
    lines = [json.dumps({"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "A"}]})
             for i in range(5)]
    lines[2] = '{"messages": [oops'
    path = jsonl(tmp_path / "d.jsonl", lines)
    report = store.inspect(path)
    assert (report.rows_in, report.rows_ok, report.rows_invalid) == (5, 4, 1)
    assert report.problems[0].row == 3 and "line 3 is not valid JSON" in report.problems[0].reason
    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        io.read_records(path)


def test_csv_without_expected_columns_asks_for_a_mapping(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("alpha,beta\nx,y\n", encoding="utf-8")
    with pytest.raises(DataError, match="needs a column mapping") as err:
        store.inspect(path)
    assert "alpha, beta" in err.value.message


def test_non_utf8_bytes_name_the_line(tmp_path):
    csv_path = tmp_path / "latin.csv"
    csv_path.write_bytes("instruction,output\nok,fine\ncaf\xe9,bad\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text: byte 0xe9 on line 3") as err:
        store.inspect(csv_path)
    assert "UTF-8" in err.value.fix
    lines_path = tmp_path / "latin.jsonl"
    lines_path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"text": "caf\xe9"}'.encode("latin-1") + b"\n")
    report = store.inspect(lines_path)
    assert report.rows_ok == 1 and report.problems[0].row == 2
    assert "line 2 is not UTF-8" in report.problems[0].reason


def test_every_row_invalid_is_an_error_listing_reasons(tmp_path, tiny_model_dir):
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}
    path = jsonl(tmp_path / "bad.jsonl", [json.dumps(bad)] * 3)
    report = store.inspect(path)
    assert (report.rows_ok, report.rows_invalid) == (0, 3)
    with pytest.raises(DataError, match="No row of bad.jsonl is usable .*row 1: the assistant turn 2 is empty"):
        store.prepare(path, str(tiny_model_dir), "bad")
    assert not any(p.name.startswith(".") for p in (store.paths.datasets_dir()).iterdir())


def test_unreadable_file_start_is_explained(tmp_path):
    path = jsonl(tmp_path / "junk.jsonl", ["not json", "[1, 2]"])
    with pytest.raises(DataError, match="None of the first 2 rows.*line 1 is not valid JSON"):
        store.inspect(path)


def test_empty_answers_and_non_alternating_rows_are_counted_and_listed(tmp_path):
    empty = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}
    twice = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                          {"role": "assistant", "content": "c"}]}
    path = jsonl(tmp_path / "d.jsonl", [json.dumps(GOOD), json.dumps(empty), json.dumps(twice), json.dumps(GOOD)])
    report = store.inspect(path)
    assert (report.rows_in, report.rows_ok, report.rows_invalid, report.duplicates) == (4, 1, 2, 1)
    listed = {(p.row, p.kind) for p in report.problems}
    assert listed == {(2, "invalid"), (3, "invalid"), (4, "duplicate")}
    reasons = " ".join(p.reason for p in report.problems)
    assert "assistant turn 2 is empty" in reasons and "do not alternate" in reasons and "duplicate of row 1" in reasons


def test_json_object_holding_one_list(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": 1, "data": [GOOD]}), encoding="utf-8")
    assert io.read_records(path) == [GOOD]


def test_unsupported_extension_and_missing_file(tmp_path):
    (tmp_path / "d.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match=".xlsx is not a supported file type"):
        store.inspect(tmp_path / "d.xlsx")
    with pytest.raises(DataError, match="does not exist"):
        store.inspect(tmp_path / "nope.jsonl")


def test_50k_row_csv_streams_without_crashing(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8") as f:
        f.write("instruction,input,output\n")
        for i in range(50_000):
            f.write(f'"Add {i} and 1","",{i + 1}\n')
    assert io.estimate_rows(path) == 50_000
    report = store.inspect(path)
    assert (report.format, report.rows_in, report.rows_ok, report.rows_invalid) == ("alpaca", 50_000, 50_000, 0)
    assert report.preview[0][1][1]["content"] == "1"
