"""The memory estimate follows the training method: a DPO/ORPO pair is two rows, DPO adds its reference pass."""

from __future__ import annotations

import pytest

from studio import presets
from studio.config import LoraSpec, TrainSpec


@pytest.fixture(scope="module")
def config():
    return presets.model_shape("meta-llama/Meta-Llama-3-8B-Instruct")


def _train(method: str) -> TrainSpec:
    return TrainSpec(max_seq_len=1024, micro_batch=2, method=method)


def test_dpo_and_orpo_cost_more_than_sft_and_the_parts_add_up(config):
    sft, dpo, orpo = (presets.estimate_memory(config, "4bit", LoraSpec(), _train(m)) for m in ("sft", "dpo", "orpo"))
    assert sft.breakdown["activations"] * 2 == pytest.approx(dpo.breakdown["activations"], rel=0.01)
    assert "reference" in dpo.breakdown and "reference" not in orpo.breakdown and "reference" not in sft.breakdown
    assert sft.total < orpo.total and sft.total < dpo.total
    assert dpo.breakdown["weights"] == sft.breakdown["weights"]  # no second copy of the model for the reference
    for est in (dpo, orpo):
        assert sum(v for k, v in est.breakdown.items() if k != "total") == pytest.approx(est.total, abs=0.01)


def test_verdict_and_recommendation_follow_the_method(config):
    sft = presets.recommend(config, 16.0, "cuda", "sft")
    dpo = presets.recommend(config, 16.0, "cuda", "dpo")
    assert dpo.estimate.breakdown.get("reference", 0) > 0
    order = presets.list_presets()
    assert dpo.preset is None or order.index(dpo.preset) <= order.index(sft.preset)


def test_cpu_pass_leaves_preference_rows_unpacked(config):
    train = TrainSpec(max_seq_len=256, micro_batch=8, grad_accum=1, method="dpo")
    assert presets.cpu_pass(config, "fp32", LoraSpec(), train, 64.0) == train
