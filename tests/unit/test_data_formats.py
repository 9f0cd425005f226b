"""Every format, in every file type where it makes sense, converts to exactly the expected conversation."""

from __future__ import annotations

import csv
import json

import pytest

from studio.data import formats, store
from studio.errors import DataError


def write(path, records, kind):
    """Save records as .jsonl/.json/.csv/.tsv/.parquet or a `datasets` folder; return the path."""
    if kind == ".jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    elif kind == ".json":
        path = path.with_suffix(".json")
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    elif kind in (".csv", ".tsv"):
        path = path.with_suffix(kind)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]), delimiter="," if kind == ".csv" else "\t")
            writer.writeheader()
            writer.writerows(records)
    elif kind == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = path.with_suffix(".parquet")
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        import datasets

        datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


FLAT_KINDS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", "datasets")
NESTED_KINDS = (".jsonl", ".json", ".parquet", "datasets")
U, A, S = "user", "assistant", "system"


def m(role, content, **extra):
    return {"role": role, "content": content, **extra}


CASES = {
    "alpaca": (FLAT_KINDS,
               [{"instruction": "Translate to French", "input": "Good morning", "output": "Bonjour"},
                {"instruction": "Name a prime", "input": "", "output": "7"}],
               [[m(U, "Translate to French\n\nGood morning"), m(A, "Bonjour")],
                [m(U, "Name a prime"), m(A, "7")]]),
    "reasoning": (FLAT_KINDS,
                  [{"Question": "2+2?", "Complex_CoT": "Two and two make four.", "Response": "4"}],
                  [[m(U, "2+2?"), m(A, "<think>\nTwo and two make four.\n</think>\n\n4")]]),
    "prompt_completion": (FLAT_KINDS,
                          [{"prompt": "The sky is", "completion": " blue."}],
                          [[m(U, "The sky is"), m(A, " blue.")]]),
    "text": (FLAT_KINDS, [{"text": "Once upon a time."}], [[m(A, "Once upon a time.")]]),
    "openai": (NESTED_KINDS,
               [{"messages": [m(S, "Be brief."), m(U, "Hi"), m(A, "Hello", weight=0), m(U, "Bye?"),
                              m(A, "Bye", weight=1)]},
                {"messages": [m(U, "Part"), m(A, "Done")]}],
               [[m(S, "Be brief."), m(U, "Hi"), m(A, "Hello", weight=0), m(U, "Bye?"), m(A, "Bye")],
                [m(U, "Part"), m(A, "Done")]]),
    "openai_parts": (NESTED_KINDS,
                     [{"messages": [{"role": "user", "content": [{"type": "text", "text": "Part one"},
                                                                 {"type": "text", "text": "part two"}]},
                                    {"role": "assistant", "content": [{"type": "text", "text": "Done"}]}]}],
                     [[m(U, "Part one\npart two"), m(A, "Done")]]),
    "sharegpt": (NESTED_KINDS,
                 [{"conversations": [{"from": "human", "value": "Weather?"},
                                     {"from": "function_call", "value": '{"name": "weather"}'},
                                     {"from": "observation", "value": "Sunny"},
                                     {"from": "gpt", "value": "It is sunny."}],
                   "system": "You help.", "tools": '[{"name": "weather"}]'}],
                 [[m(S, "You help."), m(U, "Weather?"),
                   m(A, "", tool_calls=[{"type": "function", "function": {"name": "weather", "arguments": {}}}]),
                   m("tool", "Sunny"), m(A, "It is sunny.")]]),
}


@pytest.mark.parametrize("fmt,kind", [(f, k) for f, (kinds, _, _) in CASES.items() for k in kinds])
def test_each_format_in_each_file_type_is_detected_and_normalized_exactly(tmp_path, fmt, kind):
    _, records, expected = CASES[fmt]
    path = write(tmp_path / "data", records, kind)
    report = store.inspect(path)
    assert report.format == fmt.split("_parts")[0], report.detection.evidence
    assert f"{len(records)} of {len(records)} sampled rows" in report.detection.evidence
    assert [messages for _, messages in report.preview] == expected
    if fmt == "sharegpt":  # the tool definitions go to the template's tools argument, not into the text
        assert report.preview[0][1].tools == [{"type": "function", "function": {"name": "weather"}}]
    assert (report.rows_in, report.rows_ok, report.rows_invalid) == (len(records), len(records), 0)


def test_sharegpt_role_content_variant_under_another_key():
    record = {"dialog": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}
    detection = formats.detect([record])
    assert (detection.format, detection.mapping) == ("sharegpt", {"messages": "dialog"})
    assert formats.to_messages(record, "sharegpt", detection.mapping) == [m(U, "Hi"), m(A, "Hey")]


def test_alpaca_system_and_history():
    record = {"instruction": "And 3+3?", "input": "", "output": "6", "system": "Math tutor",
              "history": [["1+1?", "2"]]}
    assert formats.to_messages(record, "alpaca") == [m(S, "Math tutor"), m(U, "1+1?"), m(A, "2"),
                                                     m(U, "And 3+3?"), m(A, "6")]


def test_conversational_prompt_completion():
    record = {"prompt": [m(S, "Terse."), m(U, "Capital of France?")], "completion": [m(A, "Paris")]}
    assert formats.detect([record]).format == "prompt_completion"
    assert formats.to_messages(record, "prompt_completion") == [m(S, "Terse."), m(U, "Capital of France?"),
                                                                m(A, "Paris")]


def test_reasoning_answer_only_style():
    record = {"Question": "Q", "Complex_CoT": "thinking", "Response": "A"}
    assert formats.to_messages(record, "reasoning", cot_style="answer") == [m(U, "Q"), m(A, "A")]


def test_txt_file_is_raw_text_one_record_per_paragraph(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First paragraph,\nsecond line.\n\n\nSecond paragraph.\n", encoding="utf-8")
    report = store.inspect(path)
    assert report.format == "text"
    assert report.preview == [(1, [m(A, "First paragraph,\nsecond line.")]), (5, [m(A, "Second paragraph.")])]


def test_unknown_columns_ask_for_a_mapping_then_use_it(tmp_path):
    path = write(tmp_path / "odd", [{"colA": "What is 2+2?", "colB": "4", "colC": "Be exact."}], ".csv")
    report_detection = formats.detect([{"colA": "x", "colB": "y"}])
    assert report_detection.needs_mapping and "colA" in report_detection.evidence
    with pytest.raises(DataError, match="needs a column mapping") as err:
        store.inspect(path)
    assert "prompt" in err.value.fix
    report = store.inspect(path, mapping={"prompt": "colA", "response": "colB", "system": "colC"})
    assert report.format == "mapped"
    assert report.preview[0][1] == [m(S, "Be exact."), m(U, "What is 2+2?"), m(A, "4")]


def test_guessed_mapping_for_query_reply_columns():
    detection = formats.detect([{"query": "hi", "reply": "hello"}])
    assert detection.format == "mapped" and not detection.needs_mapping
    assert detection.mapping == {"prompt": "query", "response": "reply"}


def test_forced_format_overrides_detection(tmp_path):
    path = write(tmp_path / "d", [{"prompt": "p", "completion": "c", "text": "raw"}], ".jsonl")
    assert store.inspect(path).format == "prompt_completion"
    assert store.inspect(path, fmt="text").preview[0][1] == [m(A, "raw")]


@pytest.mark.parametrize("messages,reason", [
    ([m(U, "Hi"), m(A, "  ")], "assistant turn 2 is empty"),
    ([m(U, "Hi"), m(U, "Again"), m(A, "Yes")], "do not alternate: message 2 is user after user"),
    ([m(A, "Hello"), m(U, "Hi")], "message 1 is assistant after the start"),
    ([m(U, "Hi"), m(A, "Yo"), m(U, "And?")], "ends with a user message"),
    ([m(U, "Hi"), m(A, "Yo", weight=0)], "weight 0"),
    ([m(S, "sys")], "only a system message"),
    ([{"role": "tool", "content": "x"}], "message 1 is tool after the start"),
    ([{"role": "robot", "content": "x"}], "role 'robot'"),
    ([m(U, "Hi"), m(A, "", tool_calls=[{"function": {"name": "f"}}]), m(A, "Yo")],
     "message 3 is assistant after assistant tool call \\(expected tool\\)"),
])
def test_invalid_conversations_say_why(messages, reason):
    with pytest.raises(formats.RowError, match=reason):
        formats.to_messages({"messages": messages}, "openai")


def test_non_text_content_part_is_rejected():
    record = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}, m(A, "ok")]}
    with pytest.raises(formats.RowError, match="'image_url' part"):
        formats.to_messages(record, "openai")
