"""The Train tab's GRPO / KTO fields (without starting the app): what a user types becomes the run spec, a
bad rewards list says how to fix it, and the live curves and completions table come from events.jsonl."""

from __future__ import annotations

import pytest

from studio.config import RunSpec, TrainSpec
from studio.errors import StudioError
from studio.ui.tabs import train_grpo
from studio.ui.tabs.train_method import with_method


def _spec(method: str) -> RunSpec:
    spec = RunSpec(name="r", dataset="arith", train=TrainSpec(micro_batch=2, grad_accum=4))
    return with_method(spec, method, 0.1, 0.1, "")


def test_the_grpo_fields_become_the_run_spec():
    rewards = "- {preset: numeric_match, extract: boxed}\n- {preset: length, target: 20, weight: 0.5}\n"
    spec = train_grpo.with_grpo_kto(_spec("grpo"), 8, 32, 0.0, 0.7, rewards, 1.0, 1.0)
    assert (spec.grpo.num_generations, spec.grpo.max_completion_length, spec.grpo.beta) == (8, 32, 0.0)
    assert [(r.preset, r.extract, r.weight) for r in spec.grpo.rewards] == [
        ("numeric_match", "boxed", 1.0), ("length", "last_number", 0.5)]
    assert train_grpo.parse_rewards(train_grpo.DEFAULT_REWARDS)[1].pattern == "\\d+\\.?\\s*$"


def test_kto_needs_two_rows_per_pass():
    with pytest.raises(StudioError, match="at least 2 rows per pass"):
        with_method(RunSpec(name="r", dataset="d", train=TrainSpec(micro_batch=1)), "kto", 0.1, 0.1, "")


def test_the_kto_weights_become_the_run_spec_and_grpo_fields_are_ignored_for_kto():
    spec = train_grpo.with_grpo_kto(_spec("kto"), 3, 32, 0.0, 0.7, "not: [yaml", 1.0, 1.5)
    assert spec.kto.undesirable_weight == 1.5 and spec.grpo.num_generations == 4


@pytest.mark.parametrize("text, message", [("- {preset: regex}", "has no pattern"),
                                           ("- [unclosed", "not valid YAML"), ("", "nothing would score")])
def test_a_bad_rewards_list_names_the_problem(text, message):
    with pytest.raises(StudioError, match=message) as info:
        train_grpo.with_grpo_kto(_spec("grpo"), 4, 32, 0.04, 1.0, text, 1.0, 1.0)
    assert info.value.fix


def test_a_generation_count_that_does_not_divide_the_batch_is_refused():
    with pytest.raises(StudioError, match="does not divide the effective batch"):
        train_grpo.with_grpo_kto(_spec("grpo"), 3, 32, 0.04, 1.0, train_grpo.DEFAULT_REWARDS, 1.0, 1.0)


def test_curves_and_the_completions_table_come_from_the_events():
    events = [{"type": "log", "step": 1, "loss": 0.1, "reward": 0.4, "reward_numeric_match": 0.25, "reward_regex": 0.75,
               "reward_std": 0.3, "kl": 0.0, "completion_length": 30.5},
              {"type": "completions", "step": 1, "rows": [{"prompt": "2+2?", "completion": "4", "numeric_match": 1.0}]},
              {"type": "log", "step": 2, "loss": 0.1, "reward": 0.6, "reward_numeric_match": 0.5, "reward_regex": 0.5,
               "kl": 0.01, "completion_length": 20.0}]
    rewards, kl, length, table = train_grpo.grpo_frames(events)
    assert set(rewards["series"]) == {"total", "numeric_match", "regex"} and len(rewards) == 6
    assert list(kl["value"]) == [0.0, 0.01] and list(length["value"]) == [30.5, 20.0]
    assert table.iloc[0].to_dict() == {"step": 1, "prompt": "2+2?", "completion": "4", "numeric_match": 1.0}
    assert train_grpo.grpo_frames([{"type": "log", "step": 1, "loss": 2.0}]) == (None, None, None, None)
