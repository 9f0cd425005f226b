"""`python -m studio chat` and `adapters`: base and tuned answers one after the other, interactive mode,
and the registry commands."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_adapters_training import PHRASE_A, PROMPTS, train_phrase_adapter  # noqa: E402

from studio.cli import main  # noqa: E402

GREEDY = ["--max-new-tokens", "12", "--repetition-penalty", "1.0"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir) -> Path:
    return train_phrase_adapter(tiny_model_dir, tmp_path_factory.mktemp("cli") / "phrase-a", PHRASE_A, seed=1)


def test_compare_prints_base_then_tuned_with_stats(capsys, tiny_model_dir, adapter):
    code = main(["chat", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--compare", *GREEDY, "--stats",
                 PROMPTS[0]])
    out = capsys.readouterr().out
    assert code == 0
    base_part, tuned_part = out.split(f"=== {adapter} ===")
    assert base_part.startswith("=== (base) ===") and PHRASE_A not in base_part
    assert tuned_part.lstrip().startswith(PHRASE_A)
    stats = json.loads(tuned_part[tuned_part.index("{"):])
    assert stats["answers"][str(adapter)]["tokens"] > 0 and stats["swaps"] >= 1


def test_interactive_mode_keeps_history_until_clear(capsys, monkeypatch, tiny_model_dir, adapter):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{PROMPTS[0]}\n/clear\n{PROMPTS[1]}\n/quit\n"))
    assert main(["chat", "--model", str(tiny_model_dir), "--adapter", str(adapter), *GREEDY]) == 0
    captured = capsys.readouterr()
    assert captured.out.count(PHRASE_A) >= 2 and "(conversation cleared)" in captured.err


def test_bad_prompt_and_settings_exit_with_a_message(capsys, tiny_model_dir):
    assert main(["chat", "--model", str(tiny_model_dir), "--max-new-tokens", "0", "hi"]) == 2
    assert "max_new_tokens=0 is out of range" in capsys.readouterr().err
    assert main(["chat", "--model", str(tiny_model_dir), "   "]) == 2
    assert "The prompt is empty" in capsys.readouterr().err


def test_adapters_commands(capsys, workspace, adapter, monkeypatch):
    assert main(["adapters", "import", str(adapter), "--name", "cli-a"]) == 0
    assert main(["adapters", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert [a["name"] for a in listed] == ["cli-a"]
    assert main(["adapters", "export", "cli-a"]) == 0
    assert (workspace / "exports" / "cli-a.zip").is_file()
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert main(["adapters", "delete", "cli-a"]) == 1  # asked, answered no
    assert main(["adapters", "delete", "cli-a", "--yes"]) == 0
    assert not (workspace / "adapters" / "cli-a").exists()
