"""The CPU fast path changes how a step is computed, never what it computes."""

from __future__ import annotations

import pytest
import torch

from studio.jobs import cpu_speed

LENGTHS = [7, 12, 5]  # three conversations packed into one row


def _peft_model(model_dir, dropout: float = 0.05):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM",
                        init_lora_weights=False)  # random B: the adapter changes the output
    return get_peft_model(model, config)


def _packed_row(vocab: int):
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (1, sum(LENGTHS)))
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    cu_seq_lens = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    return ids, positions, cu_seq_lens


def test_packed_attention_equals_the_block_diagonal_mask_and_separate_rows(tiny_model_dir, monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(cpu_speed.F, "scaled_dot_product_attention",
                        lambda q, *a, **k: calls.append(q.shape[2]) or sdpa(q, *a, **k))
    model = _peft_model(tiny_model_dir, dropout=0.0).eval()
    ids, positions, cu_seq_lens = _packed_row(model.config.vocab_size)
    with torch.no_grad():
        masked = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        assert cpu_speed.use_packed_attention(model)
        calls.clear()  # the general path called SDPA once per layer on the whole row
        by_positions = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        by_cu_lens = model(input_ids=ids, position_ids=positions, cu_seq_lens_q=cu_seq_lens, use_cache=False).logits
        assert calls == LENGTHS * 2 * 2  # one causal call per conversation, per layer, in both passes
        alone = torch.cat([model(input_ids=part, use_cache=False).logits
                           for part in ids.split(LENGTHS, dim=1)], dim=1)
    torch.testing.assert_close(by_positions, masked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_cu_lens, masked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_positions, alone, atol=1e-5, rtol=1e-5)  # no attention across conversations


def test_packed_attention_leaves_batches_and_generation_on_the_general_path(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert cpu_speed.use_packed_attention(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in a batch of two
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits[1, 3:],
                                   reference(input_ids=ids, attention_mask=mask).logits[1, 3:], atol=1e-5, rtol=1e-5)
        greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert model.generate(ids[:1], **greedy).tolist() == reference.generate(ids[:1], **greedy).tolist()


def test_sliding_window_models_keep_their_attention(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.sliding_window = 4
    assert not cpu_speed.use_packed_attention(model)
    assert model.config._attn_implementation != cpu_speed.ATTENTION


def test_fast_dropout_drops_at_the_rate_asked_and_keeps_the_mean():
    torch.manual_seed(0)
    drop = cpu_speed.FastDropout(0.05)
    x = torch.ones(1000, 1000, requires_grad=True)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.05, abs=0.002)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.95)))
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # the gradient goes through the same mask
    assert drop.eval()(x) is x  # no dropout outside training


def test_fast_dropout_replaces_only_lora_dropouts(tiny_model_dir):
    model = _peft_model(tiny_model_dir)
    count = cpu_speed.use_fast_dropout(model)
    assert count == 2 * 7  # two layers, seven projections each
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def test_frozen_weights_in_bf16_give_the_same_autocast_result(tiny_model_dir):
    model = _peft_model(tiny_model_dir, dropout=0.0).eval()
    ids, positions, _ = _packed_row(model.config.vocab_size)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids, position_ids=positions).logits
        assert cpu_speed.store_frozen_in_bf16(model) == 2 * 7
        after = model(input_ids=ids, position_ids=positions).logits
    torch.testing.assert_close(after, before)  # autocast made the same bf16 copies on the fly
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # LoRA trains in fp32
    assert model.get_input_embeddings().weight.dtype == torch.float32  # the residual stream stays fp32


def test_cpu_trainer_scores_only_labelled_positions_with_the_same_loss(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig

    from studio.jobs.worker import trainer_class

    model = _peft_model(tiny_model_dir, dropout=0.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"input_ids": list(range(10 + n, 10 + n + length)),
             "assistant_masks": [0] * 3 + [1] * (length - 3)} for n, length in enumerate(LENGTHS)]
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=1, packing=True, max_length=64,
                     report_to=[], use_cpu=True)
    trainer = trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape == (1, sum(LENGTHS))  # one packed row
    expected = model(**{k: v for k, v in batch.items()}, use_cache=False).loss
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(output.logits.shape[1]))
    loss = trainer.compute_loss(model, dict(batch))
    labelled = int((batch["labels"][0, 1:] != -100).sum())
    assert seen == [labelled] == [sum(LENGTHS) - 3 * len(LENGTHS)]  # the LM head ran on assistant tokens only
    torch.testing.assert_close(loss, expected)
