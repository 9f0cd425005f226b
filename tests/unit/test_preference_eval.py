"""Held-out preference accuracy and reward margin: the arithmetic, and the base measured on a real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.errors import DataError
from studio.evaluation import compare_preference, preference_scores

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "preference_demo.jsonl"


def test_scores_count_pairs_where_chosen_is_more_likely_and_reward_against_the_base():
    scores = preference_scores([-1.0, -5.0, -2.0, -3.0], [-2.0, -4.0, -6.0, -3.5], ([-2.0] * 4, [-2.0] * 4), 0.5)
    assert scores["preference_accuracy"] == 0.75 and scores["mean_logp_margin"] == pytest.approx(1.125)
    assert scores["mean_reward_margin"] == pytest.approx(0.5 * 1.125) and scores["reward_accuracy"] == 0.75
    normalized = preference_scores([-4.0], [-6.0], None, 0.1, ([2], [6]))  # -2 per token vs -1 per token
    assert normalized["preference_accuracy"] == 1.0 and normalized["normalized_accuracy"] == 0.0


def test_base_is_measured_on_held_out_pairs_and_sft_data_is_refused(tmp_path, tiny_model_dir):
    from studio.data import preference
    from studio.data.store import prepare as prepare_sft

    preference.prepare(SAMPLE, str(tiny_model_dir), "pairs", max_len=96, eval_split=0.1)
    report = compare_preference(str(tiny_model_dir), "fp32", "pairs", [], max_rows=8, save=False)
    base = report["results"]["base"]
    assert base["pairs"] == 8 and 0 <= base["preference_accuracy"] <= 1 and base["mean_reward_margin"] == 0.0
    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"instruction": "Hi", "output": "Hello"}\n' * 4, encoding="utf-8")
    prepare_sft(sft, str(tiny_model_dir), "sft", max_len=32, eval_split=0.25)
    with pytest.raises(DataError, match="not preference pairs"):
        compare_preference(str(tiny_model_dir), "fp32", "sft", [], save=False)
