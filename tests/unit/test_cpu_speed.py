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


def test_shared_masks_reuse_one_dropped_copy_for_the_same_input_only():
    torch.manual_seed(0)
    q, k = cpu_speed.FastDropout(0.3, share=True), cpu_speed.FastDropout(0.3, share=True)
    x = torch.ones(64, 64, requires_grad=True)
    first = q(x)
    assert k(x) is first  # q/k/v of one layer read one tensor: one mask, as a fused qkv LoRA has
    other = k(x.detach().clone())  # another tensor (the next layer's input): a fresh mask
    assert not torch.equal(other == 0, first == 0)
    x.data.mul_(1.0)  # changed in place since: never the stale copy
    assert k(x) is not first
    (first.sum() + first.sum()).backward()  # used twice: gradients add up through the one mask
    assert torch.equal(x.grad, 2 * first.detach())
    assert cpu_speed.FastDropout(0.3).train()(x) is not k(x)  # share=False (the default) never reuses


def test_lora_inputs_kept_in_bf16_give_the_same_numbers_under_autocast(tiny_model_dir):
    model = _peft_model(tiny_model_dir, dropout=0.0)
    cpu_speed.store_frozen_in_bf16(model)
    ids, positions, _ = _packed_row(model.config.vocab_size)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    loss, grads = step()
    assert cpu_speed.keep_lora_inputs(model) == 2 * 7
    loss2, grads2 = step()
    assert torch.equal(loss, loss2)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads2, strict=True))  # exactly the same step


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
    trainer.fused_loss = False  # the path models with scaled logits take (tested below: test_fused_lm_loss_*)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape == (1, sum(LENGTHS))  # one packed row
    expected = model(**{k: v for k, v in batch.items()}, use_cache=False).loss
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(output.logits.shape[1]))
    loss = trainer.compute_loss(model, dict(batch))
    labelled = int((batch["labels"][0, 1:] != -100).sum())
    assert seen == [labelled] == [sum(LENGTHS) - 3 * len(LENGTHS)]  # the LM head ran on assistant tokens only
    torch.testing.assert_close(loss, expected)


def _packed_trainer(model, model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig

    from studio.jobs.worker import trainer_class

    rows = [{"input_ids": list(range(10 + n, 10 + n + length)),
             "assistant_masks": [0] * 3 + [1] * (length - 3)} for n, length in enumerate(LENGTHS)]
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=1, packing=True, max_length=64,
                     report_to=[], use_cpu=True, bf16=False)  # fp32: compared with the model's loss exactly
    trainer = trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.fused_loss = None  # off in the recipe for now (worker.CpuSFTTrainer): decide on the first step
    return trainer, next(iter(trainer.get_train_dataloader()))


def test_fused_lm_loss_gives_the_models_loss_and_gradients_without_the_lm_head(tiny_model_dir, tmp_path, capsys):
    model = _peft_model(tiny_model_dir, dropout=0.0)
    trainer, batch = _packed_trainer(model, tiny_model_dir, tmp_path)
    expected = model(**dict(batch), use_cache=False).loss
    expected.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, dict(batch))  # the first step decides: the probe matches
    assert trainer.fused_loss and "CPU fast path: LM head in chunks" in capsys.readouterr().out
    calls = []
    model.get_base_model().lm_head.register_forward_hook(lambda *a: calls.append(1))
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    assert calls == []  # no logits tensor over the positions: the head's weight is used chunk by chunk
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


def test_fused_lm_loss_falls_back_where_the_model_soft_caps_its_logits(bundled_dir, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    model.save_pretrained(tmp_path / "gemma2")
    tokenizer.save_pretrained(tmp_path / "gemma2")
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer, batch = _packed_trainer(model, tmp_path / "gemma2", tmp_path)
    expected = model(**dict(batch), use_cache=False).loss
    loss = trainer.compute_loss(model, dict(batch))
    assert trainer.fused_loss is False
    lines = [line for line in capsys.readouterr().out.splitlines() if "LM head in chunks" in line]
    assert len(lines) == 1 and "off" in lines[0] and "final_logit_softcapping" in lines[0]
    torch.testing.assert_close(loss, expected)  # the model's own (soft-capped) loss


def test_linear_cross_entropy_matches_plain_cross_entropy_in_chunks():
    torch.manual_seed(0)
    hidden = torch.randn(300, 64, requires_grad=True)
    weight = torch.randn(1000, 64) * 0.1
    targets = torch.randint(0, 1000, (300,))
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    expected.backward()
    reference, hidden.grad = hidden.grad.clone(), None
    got = cpu_speed.linear_cross_entropy(hidden, weight, targets, chunk=128)  # 3 chunks, the last one short
    (got * 0.5).backward()
    torch.testing.assert_close(got, expected.detach())
    torch.testing.assert_close(hidden.grad, reference * 0.5)


def test_fused_lm_loss_probe_catches_a_loss_that_differs(tiny_model_dir, tmp_path, monkeypatch, capsys):
    model = _peft_model(tiny_model_dir, dropout=0.0)
    trainer, batch = _packed_trainer(model, tiny_model_dir, tmp_path)
    expected = model(**dict(batch), use_cache=False).loss
    right = cpu_speed.linear_cross_entropy  # a changed head (a scale, a cap) gives another loss
    monkeypatch.setattr(cpu_speed, "linear_cross_entropy", lambda *a, **k: right(*a, **k) * 1.1)
    assert torch.isclose(trainer.compute_loss(model, dict(batch)), expected)  # the model's own loss instead
    assert trainer.fused_loss is False and "differs from the model's own" in capsys.readouterr().out
