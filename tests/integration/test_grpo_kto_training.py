"""GRPO and KTO through the real worker (TRL's GRPOTrainer / KTOTrainer) on a tiny random model: two steps
train, the reward / KL / completion-length curves and a completions table land in events.jsonl, GRPO stops
and resumes from its checkpoint, and a bad reward is refused before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.config import GrpoSpec, LoraSpec, ModelSpec, RewardSpec, RunSpec, TrainSpec
from studio.data import kto, store
from studio.errors import StudioError
from studio.jobs import manager, worker
from studio.jobs.events import read_events

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def _small(tmp_path: Path, sample: str, rows: int) -> Path:
    small = tmp_path / sample
    small.write_text("\n".join((ASSETS / sample).read_text(encoding="utf-8").splitlines()[:rows]) + "\n")
    return small


def _spec(name: str, dataset: str, model_ref: str, method: str, max_steps: int = 2, rewards=None,
          **changes) -> RunSpec:
    settings = dict(max_seq_len=128, micro_batch=2, grad_accum=2, lr=5e-3, warmup_ratio=0.0, scheduler="constant",
                    max_steps=max_steps, save_steps=2, eval_steps=0, gradient_checkpointing=False,
                    optimizer="adamw_torch", precision="fp32", packing=False, method=method)
    grpo = GrpoSpec(num_generations=2, max_completion_length=8,
                    rewards=rewards or [RewardSpec(preset="numeric_match"),
                                        RewardSpec(preset="regex", pattern=r"\d", weight=0.2)])
    return RunSpec(name=name, dataset=dataset, model=ModelSpec(ref=model_ref, quant="fp32"),
                   lora=LoraSpec(r=8, alpha=16, dropout=0.0), train=TrainSpec(**{**settings, **changes}), grpo=grpo)


@pytest.fixture
def arithmetic(tmp_path, tiny_model_dir) -> str:
    store.prepare(_small(tmp_path, "arithmetic_demo.jsonl", 16), str(tiny_model_dir), "arith", max_len=128,
                  eval_split=0.0)
    return "arith"


def test_two_step_grpo_logs_rewards_per_function_kl_length_and_completions(arithmetic, tiny_model_dir):
    path = manager.create(_spec("grpo-run", arithmetic, str(tiny_model_dir), "grpo"))
    assert worker.train(path) == "completed"
    events = read_events(path)
    logs = [e for e in events if e.get("type") == "log" and "loss" in e]
    assert [e["step"] for e in logs] == [1, 2]
    for e in logs:  # the Train tab's curves: total reward, each function, KL, completion length
        assert {"reward", "reward_numeric_match", "reward_regex", "kl", "completion_length"} <= e.keys()
        assert 0 <= e["reward_regex"] <= 1 and 0 < e["completion_length"] <= 8
    table = [e for e in events if e.get("type") == "completions"]
    assert table and {"prompt", "completion", "numeric_match", "regex"} <= table[-1]["rows"][0].keys()
    card = json.loads((path / "adapter" / "card.json").read_text())
    assert card["train"]["method"] == "grpo" and "reward" in card["metrics"]
    assert not (path / "adapter" / "ref").exists()


def test_grpo_stops_and_resumes_from_its_checkpoint(arithmetic, tiny_model_dir):
    path = manager.create(_spec("grpo-resume", arithmetic, str(tiny_model_dir), "grpo", max_steps=2, save_steps=1))
    (path / worker.STOP_FILE).touch()  # Stop pressed during step 1: checkpoint, then exit
    assert worker.train(path) == "stopped"
    assert (path / "checkpoints" / "checkpoint-1").is_dir()
    assert worker.train(path) == "completed"
    steps = [e["step"] for e in read_events(path) if e.get("type") == "log" and "loss" in e]
    assert steps == [1, 2]


def test_a_broken_reward_file_fails_before_the_model_loads(arithmetic, tiny_model_dir, tmp_path):
    bad = tmp_path / "my_reward.py"
    bad.write_text("import no_such_module_here\n\ndef reward(prompts, completions, **row):\n    return [0.0]\n")
    path = manager.create(_spec("grpo-bad", arithmetic, str(tiny_model_dir), "grpo",
                                rewards=[RewardSpec(preset="file", path=str(bad))]))
    with pytest.raises(StudioError, match="no_such_module_here"):
        worker.train(path)
    assert not (path / "checkpoints").exists()


def test_two_step_kto_logs_the_reward_margin_and_kl(tmp_path, tiny_model_dir):
    kto.prepare(_small(tmp_path, "kto_demo.jsonl", 24), str(tiny_model_dir), "thumbs", eval_split=0.25)
    spec = _spec("kto-run", "thumbs", str(tiny_model_dir), "kto", grad_accum=1, eval_steps=2)
    path = manager.create(spec)
    assert worker.train(path) == "completed"
    logs = [e for e in read_events(path) if e.get("type") == "log"]
    assert [e["step"] for e in logs if "loss" in e] == [1, 2]
    assert all("kl" in e for e in logs if "loss" in e)  # a batch of only good answers has no margin yet
    assert any("eval_reward_margin" in e for e in logs)  # the DPO curve: desirable vs undesirable reward
    card = json.loads((path / "adapter" / "card.json").read_text())
    assert card["train"]["method"] == "kto" and "eval_reward_margin" in card["metrics"]


def test_kto_data_is_refused_for_other_methods_and_sft_data_for_kto(tmp_path, tiny_model_dir, arithmetic):
    kto.prepare(_small(tmp_path, "kto_demo.jsonl", 24), str(tiny_model_dir), "thumbs", eval_split=0.25)
    with pytest.raises(StudioError, match="KTO data"):
        manager.create(_spec("sft-on-kto", "thumbs", str(tiny_model_dir), "sft"))
    with pytest.raises(StudioError, match="not KTO data"):
        manager.create(_spec("kto-on-sft", arithmetic, str(tiny_model_dir), "kto", grad_accum=1))
