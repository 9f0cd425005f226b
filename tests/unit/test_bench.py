"""The benchmark harness in smoke mode on a tiny model, so `python -m benchmarks.train_bench` cannot rot."""

from __future__ import annotations

import json
import math

from benchmarks import train_bench as bench


def test_smoke_run_measures_both_sides_and_writes_the_tables(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "bench.json"
    # one torch thread: the suite shares the cores with other tests, and oversubscribed OpenMP threads crawl
    assert bench.main(["--smoke", "--cpu", "--threads", "1", "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["machine"]["torch"] and results["loss_tolerance"] == bench.LOSS_TOLERANCE
    (workload,) = results["workloads"]
    sides = {r["side"] for r in workload["runs"]}
    assert sides == {"baseline", "studio"}
    for run in workload["runs"]:
        assert run["steps"] == 2 and run["tokens"] > 0 and run["tokens_per_s"] > 0
        assert run["peak_rss_mb"] > 100  # a real child process that loaded torch and a model
        assert math.isfinite(run["heldout_loss"])
    assert {(r["side"], r["precision"]) for r in workload["runs"]} == {
        ("baseline", "fp32"), ("baseline", "bf16-weights"), ("studio", "fp32")}
    fp32, bf16_weights = workload["training"]
    assert fp32["speedup"] > 0 and isinstance(fp32["loss_ok"], bool)
    assert bf16_weights["precision"] == "bf16-weights" and "studio" not in bf16_weights  # a baseline only
    best = workload["against_best"]  # the studio against the fastest plain baseline, whichever precision
    fastest = max(fp32["baseline"]["tokens_per_s"], bf16_weights["baseline"]["tokens_per_s"])
    assert best["baseline_tokens_per_s"] == fastest and best["speedup"] > 0
    inference = workload["inference"]
    assert inference["packing_check"]["ok"], inference["packing_check"]  # packed rows never see each other
    for what in ("base", "adapter", "merged"):
        assert inference[what]["tokens"] > 0 and inference[what]["ttft_ms"] > 0
    assert set(inference["adapter_load_ms"]) == {"baseline-fp32", "studio-fp32"}
    assert inference["swap_ms_mean"] >= 0 and inference["fold_ms_mean"] > 0  # the active adapter decodes merged
    parts = workload["parts"]  # the CPU fast path timed one change at a time
    bf16 = parts["precision"] == "bf16"
    expected = [c for level, c in enumerate(bench.PARTS) if bf16 or level not in bench.BF16_ONLY]
    assert [r["change"] for r in parts["rows"]] == expected  # fp32: the bf16-only levels are left out
    assert parts["sequences"] >= 1 and all(r["tokens_per_s"] > 0 for r in parts["rows"])
    table = out.with_suffix(".md").read_text()
    assert "| cpu-tiny | fp32 | baseline |" in table and "| cpu-tiny | fp32 | studio |" in table
    assert "| cpu-tiny | bf16-weights | baseline |" in table and "best plain baseline" in table
    assert "| + attention per packed sequence |" in table
    assert "real tok/s" in capsys.readouterr().out  # the table is printed too


def test_random_shape_model_keeps_the_shape_and_fits_the_tokenizer(tmp_path):
    from transformers import AutoConfig

    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2}
    folder = bench.random_model("tinyllama-1.1b", tmp_path / "tiny-shape", overrides=small)
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.num_hidden_layers == 2
    assert config.vocab_size == 49152  # TinyLlama's 32,000 raised to the bundled tokenizer's vocabulary
    assert (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").is_file()


def test_long_chats_are_multi_turn_conversations(tmp_path):
    path = bench.write_long_chats(tmp_path / "long.jsonl", rows=5)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert 8 <= len(roles) <= 28 and roles[:2] == ["user", "assistant"]


def test_answer_heavy_rows_are_alpaca_with_long_answers(tmp_path):
    from studio.data.formats import detect

    path = bench.write_answer_heavy(tmp_path / "answers.jsonl", rows=200)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 200 and detect(rows).format == "alpaca"
    answer_share = sum(len(r["output"]) for r in rows) / sum(len(r["output"]) + len(r["instruction"]) for r in rows)
    assert answer_share > 0.8  # answers are most of each row: little for "logits only where a label is" to skip
    lengths = sorted(len(r["output"]) for r in rows)
    assert lengths[-10] > 2.5 * lengths[10]  # lengths spread, as in public instruction sets
