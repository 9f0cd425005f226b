"""Team-written files in the shapes public fine-tuning projects ship (tests/data/shapes/): each is
detected, keeps its real roles, renders through a real tool-capable template (and through the
documented fallback where the template has none), and what the preview shows is exactly what
`prepare` saves, token for token, with every cut counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from studio.cli import main
from studio.data import formats, render, store
from studio.errors import DataError
from studio.models import load_tokenizer

SHAPES = Path(__file__).resolve().parents[1] / "data" / "shapes"

# A Qwen2.5/Hermes-style chat template with tools and tool calls, written here (the bundled SmolLM2
# template has none): tool definitions in the system turn, calls in <tool_call>, results in a user
# turn inside <tool_response>, exactly the shape transformers' apply_chat_template(tools=...) feeds.
TOOL_TEMPLATE = """
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}
    {%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first)
           or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
""".strip()


@pytest.fixture(scope="module")
def tool_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model's config and tokenizer with the tool-capable template above."""
    out = tmp_path_factory.mktemp("toolmodel") / "tiny-tools"
    out.mkdir()
    shutil.copy(tiny_model_dir / "config.json", out / "config.json")
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = TOOL_TEMPLATE
    tok.save_pretrained(out)
    return out


def trained_runs(tok, ids, mask) -> list[str]:
    out, cur = [], []
    for i, k in zip(ids, mask, strict=True):
        if k:
            cur.append(i)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    return out + ([tok.decode(cur)] if cur else [])


def saved_rows(folder: Path) -> dict[int, list[tuple[list[int], list[int]]]]:
    """Saved (input_ids, assistant_masks) per source row, train and eval together."""
    rows: dict[int, list] = {}
    for split in ("train", "eval"):
        if (folder / f"{split}.parquet").is_file():
            for r in pq.read_table(folder / f"{split}.parquet").to_pylist():
                rows.setdefault(r["row"], []).append((r["input_ids"], r["assistant_masks"]))
    return rows


def assert_preview_is_what_trains(path, model_dir, name, **settings):
    """prepare, then every saved row equals preview_row's ids and masks for that source row."""
    folder = store.prepare(path, str(model_dir), name, eval_split=0.3, **settings)
    tok = store.tokenizer_for(str(model_dir))
    saved = saved_rows(folder)
    assert saved, "nothing was saved"
    keys = ("fmt", "mapping", "cot_style", "options", "max_len", "train_on_all", "long_docs")
    preview_settings = {k: v for k, v in settings.items() if k in keys}
    for row, items in saved.items():
        _, preview = store.preview_row(path, row, tok, **preview_settings)
        assert [(p.input_ids, p.assistant_masks) for p in preview] == items, f"row {row}"
    return folder, json.loads((folder / "meta.json").read_text())


# ---------------------------------------------------------------- content parts with "value"


def test_content_parts_under_value_and_loss_weight_are_read(tiny_model_dir):
    tok = store.tokenizer_for(str(tiny_model_dir))
    report = store.inspect(SHAPES / "content_parts.jsonl", tokenizer=tok)
    assert report.format == "openai"
    assert (report.rows_ok, report.rows_invalid) == (2, 1)
    first, second = report.preview[0][1], report.preview[1][1]
    assert first[1] == {"role": "user", "content": "What is the boiling point of water\nat sea level?"}
    assert second[1]["content"] == "Red." and second[1]["weight"] == 0 and "weight" not in second[3]
    image = report.problems[0]
    assert image.row == 3 and "'image_url' part: only text is supported" in image.reason
    _, items = store.preview_row(SHAPES / "content_parts.jsonl", 2, tok)
    assert trained_runs(tok, items[0].input_ids, items[0].assistant_masks) == ["Blue.<|im_end|>"]


def test_content_parts_preview_equals_saved(tiny_model_dir):
    assert_preview_is_what_trains(SHAPES / "content_parts.jsonl", tiny_model_dir, "parts")


# ---------------------------------------------------------------- ShareGPT with tools


def test_sharegpt_tools_keep_their_roles(tiny_model_dir):
    report = store.inspect(SHAPES / "sharegpt_tools.jsonl")
    assert report.format == "sharegpt" and report.rows_ok == 3 and report.tool_rows == 2
    convo = report.preview[0][1]
    assert [m["role"] for m in convo] == ["user", "assistant", "tool", "assistant"]
    assert convo[1]["tool_calls"] == [{"type": "function",
                                       "function": {"name": "get_weather", "arguments": {"city": "Pune"}}}]
    assert convo.tools[0]["type"] == "function" and convo.tools[0]["function"]["name"] == "get_weather"
    parallel = report.preview[1][1]
    assert [c["function"]["name"] for c in parallel[2]["tool_calls"]] == ["convert_currency", "get_weather"]
    assert report.preview[2][1].tools == []  # "tools": "[]" adds nothing


def test_tools_render_through_a_tool_capable_template(tool_model_dir):
    tok = store.tokenizer_for(str(tool_model_dir))
    assert render.supports_tools(tok)
    path = SHAPES / "sharegpt_tools.jsonl"
    _, items = store.preview_row(path, 1, tok)
    ids, mask = items[0].input_ids, items[0].assistant_masks
    text = tok.decode(ids)
    assert text == render.apply_template(tok, store.conversation_at(path, 1),
                                         tools=store.conversation_at(path, 1).tools)
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert "<|im_start|>user\n<tool_response>\n{\"temperature_c\": 31" in text  # the template's own tool turn
    assert trained_runs(tok, ids, mask) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pune"}}\n</tool_call><|im_end|>',
        "It is 31 degrees and clear in Pune.<|im_end|>"]
    _, empty_tools = store.preview_row(path, 3, tok)
    assert "# Tools" not in tok.decode(empty_tools[0].input_ids)
    untrained = formats.Options(train_tool_calls=False)
    _, items = store.preview_row(path, 1, tok, options=untrained)
    assert trained_runs(tok, items[0].input_ids, items[0].assistant_masks) == [
        "It is 31 degrees and clear in Pune.<|im_end|>"]


def test_tools_fall_back_to_text_where_the_template_has_no_tool_support(tiny_model_dir):
    from studio.ui.tabs import data as tab

    tok = store.tokenizer_for(str(tiny_model_dir))
    assert not render.supports_tools(tok)
    path = SHAPES / "sharegpt_tools.jsonl"
    _, items = store.preview_row(path, 1, tok)
    text = tok.decode(items[0].input_ids)
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou may call these functions.")
    assert "<|im_start|>user\n<tool_response>\n" in text
    assert trained_runs(tok, items[0].input_ids, items[0].assistant_masks) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pune"}}\n</tool_call><|im_end|>',
        "It is 31 degrees and clear in Pune.<|im_end|>"]
    report = store.inspect(path, tokenizer=tok)
    assert render.TOOL_FALLBACK_NOTE in report.notes
    out = tab.inspect_data(str(path), "auto", "(none)", "(none)", "(none)", "think", str(tiny_model_dir), 1024,
                           False, progress=lambda *a, **k: None)
    assert "no tool support" in out[-1] and "<tool_call>" in out[-1]  # the Data tab names the fallback
    assert "2 rows use tools" in out[6] and "tool calls are trained" in out[6]


@pytest.mark.parametrize("model", ["tool", "plain"])
def test_tool_rows_preview_equals_saved(model, tool_model_dir, tiny_model_dir):
    folder, meta = assert_preview_is_what_trains(SHAPES / "sharegpt_tools.jsonl",
                                                 tool_model_dir if model == "tool" else tiny_model_dir, "tools")
    assert meta["tools"] == ("native" if model == "tool" else "text-fallback")
    assert meta["train_tool_calls"] is True and meta["tool_rows"] == 2


# ---------------------------------------------------------------- raw long text


def test_raw_text_is_chunked_and_preview_equals_saved(tiny_model_dir, capsys):
    path = SHAPES / "raw_text.jsonl"
    tok = store.tokenizer_for(str(tiny_model_dir))
    _, items = store.preview_row(path, 2, tok, max_len=64)
    assert len(items) > 1 and all(set(i.assistant_masks) == {1} for i in items)
    assert "<|im_start|>" not in tok.decode(items[0].input_ids)  # plain text, no chat template
    doc = tok(json.loads(path.read_text().splitlines()[1])["text"])["input_ids"] + [tok.eos_token_id]
    assert sum((i.input_ids for i in items), []) == doc[:len(doc) - sum(i.dropped for i in items)]
    folder, meta = assert_preview_is_what_trains(path, tiny_model_dir, "raw", max_len=64)
    counts = meta["counts"]
    assert counts["rows_chunked"] == 2 and counts["chunks"] > 2 and counts["train"] + counts["eval"] == 2 + counts[
        "chunks"]
    assert main(["data", "inspect", str(path), "--model", str(tiny_model_dir), "--max-len", "64", "--show-row",
                 "2"]) == 0
    out = capsys.readouterr().out
    assert "2 long documents split into" in out and "--- chunk 1 of" in out and "[[<|im_start|>" not in out


def test_raw_text_cut_counts_rows_and_tokens_dropped(tiny_model_dir, capsys):
    path = SHAPES / "raw_text.jsonl"
    tok = store.tokenizer_for(str(tiny_model_dir))
    lengths = [len(tok(json.loads(line)["text"])["input_ids"]) + 1 for line in path.read_text().splitlines()]
    dropped = sum(max(0, n - 64) for n in lengths)
    assert main(["data", "prepare", str(path), "--model", str(tiny_model_dir), "--name", "raw-cut",
                 "--max-len", "64", "--long-docs", "cut", "--eval-split", "0"]) == 0
    out = capsys.readouterr().out
    assert f"2 rows cut at max_len ({dropped:,} tokens dropped)" in out
    meta = json.loads((store.load_prepared("raw-cut").path / "meta.json").read_text())
    assert (meta["counts"]["rows_cut"], meta["counts"]["tokens_dropped"], meta["long_docs"]) == (2, dropped, "cut")
    assert_preview_is_what_trains(path, tiny_model_dir, "raw-cut2", max_len=64, long_docs="cut")


# ---------------------------------------------------------------- placeholders, identity, system prompt


def test_placeholders_are_found_and_replaced_before_saving(tiny_model_dir):
    path = SHAPES / "identity_alpaca.jsonl"
    report = store.inspect(path)
    assert report.placeholders == {"{{name}}": 2, "{{author}}": 2} and report.identity_rows == 2
    options = formats.Options(replacements=formats.identity_replacements("Asha", "Pune Labs"))
    folder, meta = assert_preview_is_what_trains(path, tiny_model_dir, "identity", options=options)
    saved = [json.loads(r["messages"]) for r in pq.read_table(folder / "train.parquet").to_pylist()]
    saved += [json.loads(r["messages"]) for r in pq.read_table(folder / "eval.parquet").to_pylist()]
    answers = {m[-1]["content"] for m in saved}
    assert "I am Asha, an AI assistant developed by Pune Labs. How can I help you today?" in answers
    assert not any("{{" in a for a in answers)
    assert meta["replacements"]["name"] == "Asha" and meta["placeholders"] == {"{{name}}": 2, "{{author}}": 2}


def test_system_prompt_choice_is_applied_and_recorded(tiny_model_dir):
    path = SHAPES / "identity_alpaca.jsonl"
    tok = store.tokenizer_for(str(tiny_model_dir))
    default = render.default_system_prompt(tok)
    assert "SmolLM" in default

    def text(**options):
        return tok.decode(store.preview_row(path, 1, tok, options=formats.Options(**options))[1][0].input_ids)

    assert default in text()
    assert default not in text(system="none") and text(system="none").startswith("<|im_start|>system\n<|im_end|>")
    assert text(system="custom", system_text="You are Asha.").startswith("<|im_start|>system\nYou are Asha.")
    report = store.inspect(path, tokenizer=tok)
    assert any(default in note for note in report.notes)
    _, meta = assert_preview_is_what_trains(path, tiny_model_dir, "sys",
                                            options=formats.Options(system="custom", system_text="You are Asha."))
    assert meta["system_prompt"] == {"mode": "custom", "text": "You are Asha."}
    assert meta["default_system_prompt"] == default
    with pytest.raises(DataError, match="custom system prompt is empty"):
        formats.Options(system="custom").check()


# ---------------------------------------------------------------- preference pairs and unusable files


def test_preference_pairs_are_named_for_what_they_are(capsys):
    path = SHAPES / "preference_pairs.jsonl"
    assert formats.looks_like_preference([json.loads(line) for line in path.read_text().splitlines()])
    with pytest.raises(DataError, match=r"this is preference data \(chosen/rejected\): use method dpo or orpo"):
        store.inspect(path)
    assert main(["data", "inspect", str(path), "--kind", "sft"]) == 2  # asked to read pairs as SFT: refused
    assert "use method dpo or orpo" in capsys.readouterr().err
    assert main(["data", "inspect", str(path)]) == 0  # auto: inspected as what it is, preference pairs
    assert "preference pairs (train with method dpo or orpo)" in capsys.readouterr().out


def test_inspect_exits_non_zero_when_no_row_is_usable(tmp_path, tiny_model_dir, capsys):
    from studio.ui.tabs import data as tab

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    assert main(["data", "inspect", str(path), "--model", str(tiny_model_dir)]) == 2
    captured = capsys.readouterr()
    assert "1 read, 0 ok, 1 invalid" in captured.out
    assert "No row of bad.jsonl is usable" in captured.err and "ends with a user message" in captured.err
    out = tab.inspect_data(str(path), "auto", "(none)", "(none)", "(none)", "think", str(tiny_model_dir), 1024,
                           False, progress=lambda *a, **k: None)
    assert "No row can be trained on: the conversation ends with a user message" in out[6]
    assert "no tokenizer" not in out[10].lower() and "no row is usable" in out[10]


def test_preference_pairs_may_be_mapped_to_their_chosen_answers(tmp_path):
    rows = [{"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = store.inspect(path, fmt="mapped", mapping={"prompt": "prompt", "response": "chosen"})
    assert report.preview[0][1] == [{"role": "user", "content": "Capital of France?"},
                                    {"role": "assistant", "content": "Paris."}]


def test_prompt_weights_of_zero_are_accepted_and_of_one_explained():
    untrained_prompt = {"messages": [{"role": "user", "content": "Hi", "loss_weight": 0},
                                     {"role": "assistant", "content": "Hello", "loss_weight": 1}]}
    assert formats.to_messages(untrained_prompt, "openai")[0] == {"role": "user", "content": "Hi"}
    untrained_prompt["messages"][0]["loss_weight"] = 1
    with pytest.raises(formats.RowError, match="only assistant turns are trained; use 'train on everything'"):
        formats.to_messages(untrained_prompt, "openai")


def test_identity_statements_are_first_person_answers():
    def says(text, role="assistant"):
        return formats.states_identity([{"role": role, "content": text}])

    assert says("I am Asha, an AI assistant developed by Pune Labs.") and says("I was created by Pune Labs.")
    assert says("I'm a language model.") and not says("You are a helpful assistant.", "system")
    assert not says("I am happy to help with your essay.") and not says("The AI was made by hand.")


def test_system_turn_for_chat_follows_the_saved_choice():
    assert formats.system_turn({"mode": "keep", "text": ""}) is None
    assert formats.system_turn({"mode": "none", "text": ""}) == {"role": "system", "content": ""}
    assert formats.system_turn({"mode": "custom", "text": "You are Asha."}) == {"role": "system",
                                                                               "content": "You are Asha."}


def test_a_row_the_template_refuses_is_listed_not_fatal(tmp_path, tool_model_dir):
    """Templates such as Llama 3.1's raise on parallel tool calls: that row is a problem, the rest is kept."""
    strict = tmp_path / "strict-tools"
    shutil.copytree(tool_model_dir, strict)
    tok = load_tokenizer(str(strict))
    tok.chat_template = TOOL_TEMPLATE.replace(
        "{%- for tool_call in message.tool_calls %}",
        "{%- if message.tool_calls | length > 1 %}{{ raise_exception('This model only supports single tool-calls "
        "at once!') }}{%- endif %}{%- for tool_call in message.tool_calls %}")
    tok.save_pretrained(strict)
    report = store.inspect(SHAPES / "sharegpt_tools.jsonl", tokenizer=store.tokenizer_for(str(strict)))
    assert (report.rows_ok, report.rows_invalid) == (2, 1)
    assert report.problems[0].row == 2 and "only supports single tool-calls" in report.problems[0].reason
    with pytest.raises(DataError, match="Row 2 is invalid: the chat template cannot render this row"):
        store.preview_row(SHAPES / "sharegpt_tools.jsonl", 2, store.tokenizer_for(str(strict)))


def test_data_tab_shows_raw_text_as_saved_chunks(tiny_model_dir):
    from studio.ui.tabs import data as tab

    runs, _ = tab.template_view(str(SHAPES / "raw_text.jsonl"), 2, "auto", None, "think", str(tiny_model_dir), 64,
                                False)
    labels = [label for _, label in runs]
    assert labels[0] == "chunk break" and labels.count("chunk break") == 2 and "cut off" not in labels
    assert "<|im_start|>" not in "".join(text for text, label in runs if label == "trained")
    runs, _ = tab.template_view(str(SHAPES / "raw_text.jsonl"), 2, "auto", None, "think", str(tiny_model_dir), 64,
                                False, long_docs="cut")
    assert runs[-1][1] == "cut off" and "tokens cut off at max length 64" in runs[-1][0]


def test_openai_tool_call_ids_are_kept_for_templates_that_pair_them():
    record = {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Pune"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "31 C"},
        {"role": "assistant", "content": "31 degrees."}]}
    convo = formats.to_messages(record, "openai")
    assert convo[1]["tool_calls"] == [{"type": "function", "id": "call_1",
                                       "function": {"name": "get_weather", "arguments": {"city": "Pune"}}}]
    assert convo[2] == {"role": "tool", "content": "31 C", "tool_call_id": "call_1"}
