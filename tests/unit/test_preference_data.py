"""Preference data: every layout detected, converted to a Pair and rendered through the chat template;
problem rows listed; SFT/DPO mix-ups refused with a message that says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.data import preference
from studio.errors import DataError, StudioError

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "assets" / "preference_demo.jsonl"
Q, A, B = "What is the capital of France?", "Paris.", "I don't know."

LAYOUTS = {
    "trl-strings": ("trl", {"prompt": Q, "chosen": A, "rejected": B}),
    "trl-messages": ("trl", {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": Q}],
                             "chosen": [{"role": "assistant", "content": A}],
                             "rejected": [{"role": "assistant", "content": B}]}),
    "hh-text": ("hh", {"chosen": f"\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: {Q}\n\nAssistant: {A}",
                       "rejected": f"\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: {Q}\n\nAssistant: {B}"}),
    "hh-messages": ("hh", {"chosen": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}],
                           "rejected": [{"role": "user", "content": Q}, {"role": "assistant", "content": B}]}),
    "sharegpt": ("sharegpt", {"conversations": [{"from": "human", "value": Q}],
                              "chosen": {"from": "gpt", "value": A}, "rejected": {"from": "gpt", "value": B}}),
    "ultrafeedback": ("ultrafeedback", {"prompt": Q, "score_chosen": 9.0, "score_rejected": 2.0,
                                        "chosen": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}],
                                        "rejected": [{"role": "user", "content": Q},
                                                     {"role": "assistant", "content": B}]}),
}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(bundled_dir):
    from studio.data.store import tokenizer_for

    return tokenizer_for(str(bundled_dir))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_is_detected_converted_and_rendered(layout, tmp_path, tokenizer):
    fmt, row = LAYOUTS[layout]
    other = json.loads(json.dumps(row).replace("France", "Spain").replace("Paris", "Madrid"))
    path = _write(tmp_path / f"{layout}.jsonl", [row, other])
    report = preference.inspect_file(path, tokenizer=tokenizer, max_len=256)
    assert report.format == fmt and report.rows_ok == 2, report.summary()
    pair = report.preview[0][1]
    assert pair.prompt[-1] == {"role": "user", "content": Q} and (pair.chosen, pair.rejected) == (A, B)
    if layout == "hh-text":  # split at the last assistant turn: the earlier exchange stays in the prompt
        assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user"]
    rendered = preference.render_pairs(tokenizer, [pair], 256)[0]
    assert rendered.prompt_text.endswith("<|im_start|>assistant\n")  # the generation prompt ends the prompt
    assert rendered.chosen_text == f"{A}<|im_end|>" and rendered.rejected_text == f"{B}<|im_end|>"
    assert tokenizer.decode(rendered.prompt_ids + rendered.chosen_ids) == rendered.prompt_text + rendered.chosen_text
    sides = preference.highlight_pair(rendered)
    assert sides["chosen"][1] == (rendered.chosen_text, "chosen") and sides["rejected"][0][1] is None
    assert report.token_stats["chosen_mean"] > 0 and report.token_stats["rejected_mean"] > 0


def test_mapped_columns_are_guessed_and_used(tmp_path, tokenizer):
    path = _write(tmp_path / "odd.jsonl", [{"question": Q, "good": A, "bad": B}])
    detection = preference.detect([{"question": Q, "good": A, "bad": B}])
    assert detection.format == "mapped" and detection.mapping == {"prompt": "question", "chosen": "good",
                                                                  "rejected": "bad"}
    report = preference.inspect_file(path, tokenizer=tokenizer)
    assert report.preview[0][1].chosen == A


def test_problem_rows_are_listed_with_their_kind(tmp_path, tokenizer):
    rows = [{"prompt": Q, "chosen": A, "rejected": B},
            {"prompt": Q, "chosen": "Same answer.", "rejected": "Same answer."},
            {"prompt": Q, "chosen": A, "rejected": "  "},
            {"prompt": Q, "chosen": A, "rejected": B},
            {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
             "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}], "prompt": Q}]
    report = preference.inspect_file(_write(tmp_path / "bad.jsonl", rows), fmt="trl", tokenizer=tokenizer)
    kinds = {p.row: p.kind for p in report.problems}
    assert kinds[2] == "same" and kinds[3] == "empty" and kinds[4] == "duplicate"
    assert report.rows_ok == 1
    uf = preference.inspect_file(_write(tmp_path / "uf.jsonl", rows[4:]), fmt="ultrafeedback")
    assert "differ before their last answer" in uf.problems[0].reason


def test_too_long_prompt_is_listed(tmp_path, tokenizer):
    rows = [{"prompt": "word " * 400, "chosen": A, "rejected": B}, {"prompt": Q, "chosen": A, "rejected": B}]
    report = preference.inspect_file(_write(tmp_path / "long.jsonl", rows), tokenizer=tokenizer, max_len=64)
    assert report.counts["too_long"] == 1 and "raise the max length" in report.problems[0].reason


def test_sample_set_prepares_with_a_held_out_split(tmp_path, bundled_dir):
    folder = preference.prepare(SAMPLE, str(bundled_dir), "prefs", max_len=256, eval_split=0.15)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == "preference" and meta["counts"]["rows_ok"] >= 150
    assert meta["counts"]["train"] + meta["counts"]["eval"] == meta["counts"]["rows_ok"]
    loaded = preference.load("prefs")
    assert set(loaded.train.column_names) >= {"prompt_ids", "chosen_ids", "rejected_ids"}
    with pytest.raises(DataError, match="already exists"):
        preference.prepare(SAMPLE, str(bundled_dir), "prefs")


def test_sft_and_preference_mix_ups_are_refused(tmp_path, bundled_dir):
    from studio.config import ModelSpec, RunSpec, TrainSpec
    from studio.data.store import prepare as prepare_sft
    from studio.jobs import manager

    sft_file = _write(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": Q},
                                                             {"role": "assistant", "content": A}]}] * 3)
    with pytest.raises(DataError, match="not preference data") as err:
        preference.inspect_file(sft_file)
    assert "method sft" in err.value.fix
    prepare_sft(sft_file, str(bundled_dir), "sft-data", max_len=64, eval_split=0)
    preference.prepare(SAMPLE, str(bundled_dir), "pref-data", max_len=128)
    model = ModelSpec(ref=str(bundled_dir), quant="fp32")
    with pytest.raises(StudioError, match="SFT data .* not preference pairs"):
        manager.create(RunSpec(name="dpo-on-sft", dataset="sft-data", model=model, train=TrainSpec(method="dpo")))
    with pytest.raises(StudioError, match=r"preference data \(chosen/rejected\): use method dpo or orpo"):
        manager.create(RunSpec(name="sft-on-pref", dataset="pref-data", model=model, train=TrainSpec(method="sft")))
    assert preference.dataset_kind("pref-data") == "preference" and preference.dataset_kind("sft-data") == "sft"


def test_cli_routes_preference_files_and_refuses_mix_ups(tmp_path, bundled_dir, capsys):
    from studio.cli import main

    assert main(["data", "inspect", str(SAMPLE)]) == 0
    assert "preference pairs" in capsys.readouterr().out
    code = main(["data", "prepare", str(SAMPLE), "--model", str(bundled_dir), "--name", "x", "--kind", "sft"])
    err = capsys.readouterr().err
    assert code == 2 and "this is preference data (chosen/rejected): use method dpo or orpo" in err
    sft_file = _write(tmp_path / "sft.jsonl", [{"instruction": Q, "output": A}])
    code = main(["data", "prepare", str(sft_file), "--model", str(bundled_dir), "--name", "y", "--kind",
                 "preference"])
    assert code == 2 and "is not preference data" in capsys.readouterr().err


def test_method_settings_are_validated():
    from studio.config import ConfigError, TrainSpec, from_dict

    assert from_dict(TrainSpec, {"method": "orpo", "orpo_lambda": 0.2}).orpo_lambda == 0.2
    with pytest.raises(ConfigError, match="train.method"):
        from_dict(TrainSpec, {"method": "ppo"}, "train")
    with pytest.raises(ConfigError, match="train.beta"):
        from_dict(TrainSpec, {"beta": 0}, "train")


def test_preference_prompts_start_with_bos_as_sft_and_chat_do(bundled_dir):
    """A tokenizer that puts BOS before plain text while its template writes none (Phi-3 style): the prompt
    ids of a pair start with exactly one BOS, the ids chat and the API send for the same prompt."""
    from transformers import AutoTokenizer

    from studio import templates

    tok = AutoTokenizer.from_pretrained(bundled_dir)
    tok.bos_token = "<|endoftext|>"  # SmolLM2's template writes no such token
    tok.add_bos_token = True
    assert templates.prepare_tokenizer(tok).add_bos
    pair = preference.to_pair({"prompt": Q, "chosen": A, "rejected": B}, "trl")
    rendered = preference.render_pairs(tok, [pair], 256)[0]
    assert rendered.prompt_ids[0] == tok.bos_token_id and rendered.prompt_ids.count(tok.bos_token_id) == 1
    assert rendered.prompt_ids == templates.encode(tok, pair.prompt, add_generation_prompt=True)
    assert rendered.chosen_ids == tok(rendered.chosen_text, add_special_tokens=False)["input_ids"]
