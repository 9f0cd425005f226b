"""DPO and ORPO through the real worker on a tiny model: they train, log reward margin and accuracy, stop and
resume, and DPO's reference is the base with the adapter disabled (no second copy), base weights untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.config import LoraSpec, ModelSpec, RunSpec, TrainSpec
from studio.data import preference
from studio.jobs import manager, worker
from studio.jobs.events import read_events

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "preference_demo.jsonl"


def _pairs(tmp_path: Path, model_ref: str, rows: int = 24, name: str = "pairs") -> str:
    """The first `rows` pairs of the sample (capitals: curt wrong rejected answers)."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:rows]
    small = tmp_path / "pairs.jsonl"
    small.write_text("\n".join(lines) + "\n", encoding="utf-8")
    preference.prepare(small, model_ref, name, max_len=96, eval_split=0.25)
    return name


def _spec(name: str, dataset: str, model_ref: str, method: str, max_steps: int = 2, from_adapter: str = "",
          **changes) -> RunSpec:
    settings = dict(max_seq_len=96, micro_batch=2, grad_accum=1, lr=5e-3, warmup_ratio=0.0, scheduler="constant",
                    max_steps=max_steps, save_steps=2, eval_steps=2, gradient_checkpointing=False,
                    optimizer="adamw_torch", precision="fp32", packing=False, method=method)
    return RunSpec(name=name, dataset=dataset, model=ModelSpec(ref=model_ref, quant="fp32"),
                   lora=LoraSpec(r=8, alpha=16, dropout=0.05), train=TrainSpec(**{**settings, **changes}),
                   from_adapter=from_adapter)


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_two_step_run_logs_preference_metrics_and_saves_one_adapter(method, tmp_path, tiny_model_dir):
    data = _pairs(tmp_path, str(tiny_model_dir))
    path = manager.create(_spec(f"{method}-run", data, str(tiny_model_dir), method))
    assert worker.train(path) == "completed"
    logs = [e for e in read_events(path) if e.get("type") == "log"]
    train_logs = [e for e in logs if "loss" in e]
    assert [e["step"] for e in train_logs] == [1, 2]
    assert all("reward_margin" in e and 0 <= e["reward_accuracy"] <= 1 for e in train_logs)
    assert any("eval_reward_accuracy" in e for e in logs)  # the Train tab plots train and eval
    card = json.loads((path / "adapter" / "card.json").read_text())
    assert card["train"]["method"] == method and "eval_reward_margin" in card["metrics"]
    assert not (path / "adapter" / "ref").exists()  # only the trained adapter, never DPO's reference copy
    status = json.loads((path / "status.json").read_text())
    assert status["state"] == "completed" and status["metrics"]["steps"] == 2


def test_dpo_stops_and_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    data = _pairs(tmp_path, str(tiny_model_dir))
    path = manager.create(_spec("dpo-resume", data, str(tiny_model_dir), "dpo", max_steps=4, eval_steps=0))
    (path / worker.STOP_FILE).touch()  # a Stop pressed during step 1: checkpoint, then exit
    assert worker.train(path) == "stopped"
    assert (path / "checkpoints" / "checkpoint-1").is_dir() and not (path / "adapter").exists()
    assert worker.train(path) == "completed"
    events = read_events(path)
    assert {"type": "resume", "step": 1}.items() <= next(e for e in events if e["type"] == "resume").items()
    steps = [e["step"] for e in events if e.get("type") == "log" and "loss" in e]
    assert steps == [1, 2, 3, 4]  # one continuous curve across the stop
    assert (path / "adapter" / "adapter_model.safetensors").is_file()


def _answer_logps(model, batch) -> list[float]:
    import torch

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * batch["completion_mask"][:, 1:]).sum(1).tolist()


def _args_for(spec, run_dir):
    return lambda has_eval: worker.base_args(spec, run_dir, has_eval, False, spec.train)


def test_dpo_reference_is_the_base_with_the_adapter_disabled(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from studio.jobs.preference import make_trainer

    data = _pairs(tmp_path, str(tiny_model_dir))
    spec = _spec("dpo-ref", data, str(tiny_model_dir), "dpo", max_steps=2, eval_steps=0)
    run_dir = manager.create(spec)
    model, loaded = worker.build_model(spec, recompute=False)
    base_before = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "lora_" not in k}
    _, _, trainer = make_trainer(spec, model, loaded.tokenizer, _args_for(spec, run_dir), [])
    assert trainer.ref_model is None and list(model.peft_config) == ["default"]  # no second model, no ref adapter
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters()) + lora

    trainer.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    policy = _answer_logps(model.eval(), batch)
    chosen_ref, rejected_ref = trainer.compute_ref_log_probs(model, batch)
    expected = _answer_logps(plain.eval(), batch)  # the untouched base, loaded fresh from disk
    assert torch.allclose(torch.cat([chosen_ref, rejected_ref]), torch.tensor(expected), atol=1e-3)
    assert not torch.allclose(torch.tensor(policy), torch.tensor(expected), atol=1e-3)  # the adapter did learn
    after = model.get_base_model().state_dict()
    assert all(torch.equal(base_before[k], after[k]) for k in base_before)  # frozen base weights unchanged


def test_dpo_continues_an_sft_adapter_against_it_as_the_reference(tmp_path, tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from studio.jobs.preference import make_trainer

    sft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                         LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    sft.save_pretrained(tmp_path / "sft-adapter")  # a non-zero adapter, as an SFT run leaves one
    data = _pairs(tmp_path, str(tiny_model_dir))
    spec = _spec("dpo-after-sft", data, str(tiny_model_dir), "dpo", max_steps=1, eval_steps=0,
                 from_adapter=str(tmp_path / "sft-adapter"))
    run_dir = manager.create(spec)
    model, loaded = worker.build_model(spec, recompute=False)
    _, _, trainer = make_trainer(spec, model, loaded.tokenizer, _args_for(spec, run_dir), [])
    assert set(model.peft_config) == {"default", "ref"}  # the SFT adapter, and a frozen copy as the reference
    start = {n: p.detach().clone() for n, p in model.named_parameters() if ".default." in n}
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".ref." in n)
    trainer.train()
    params = dict(model.named_parameters())
    assert any(not torch.equal(start[n], params[n]) for n in start)  # the SFT adapter is trained further
    assert all(torch.equal(start[n], params[n.replace(".default.", ".ref.")]) for n in start)  # reference frozen
    model.save_pretrained(tmp_path / "out", selected_adapters=["default"])
    assert not (tmp_path / "out" / "ref").exists()
