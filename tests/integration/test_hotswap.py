"""One loaded base, two trained adapters: base, A, B, base again from the same weights, swap time measured;
the studio's greedy tokens match vanilla PEFT; concurrent requests never leak adapters; compare mode."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_adapters_training import PHRASE_A, PHRASE_B, PROMPTS, greedy, train_phrase_adapter  # noqa: E402

from studio.inference import Engine, GenerationSettings  # noqa: E402

SETTINGS = GenerationSettings(max_new_tokens=12, repetition_penalty=1.0)  # greedy, no penalty: as vanilla PEFT
ASK = [{"role": "user", "content": PROMPTS[0]}]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return (train_phrase_adapter(tiny_model_dir, root / "phrase-a", PHRASE_A, seed=1),
            train_phrase_adapter(tiny_model_dir, root / "phrase-b", PHRASE_B, seed=2))


@pytest.fixture()
def engine(tiny_model_dir, adapters) -> Engine:
    engine = Engine(str(tiny_model_dir), "fp32")
    engine.load_adapter("A", adapters[0])
    engine.load_adapter("B", adapters[1])
    return engine


def _say(engine: Engine, adapter: str | None, stats: dict | None = None) -> str:
    return "".join(engine.answer(ASK, SETTINGS, adapter, stats=stats))


def test_base_a_b_base_from_one_loaded_model_with_swap_time(engine, capsys):
    weights_before = {n: p.data_ptr() for n, p in engine.model.named_parameters() if "lora" not in n}
    stats_a: dict = {}
    base1 = _say(engine, None)
    said_a = _say(engine, "A", stats_a)
    said_b = _say(engine, "B")
    base2 = _say(engine, None)
    assert said_a.startswith(PHRASE_A) and said_b.startswith(PHRASE_B)
    assert PHRASE_A not in base1 and PHRASE_B not in base1
    assert base1 == base2  # adapters disabled really is the base, before and after swapping
    weights_after = {n: p.data_ptr() for n, p in engine.model.named_parameters() if "lora" not in n}
    assert weights_after == weights_before  # same tensors throughout: nothing was reloaded
    stats = engine.stats()
    assert stats["swaps"] == 2 and 0 <= stats["mean_swap_ms"] < 100  # set_adapter is milliseconds, not a reload
    assert stats_a["tokens"] > 0 and stats_a["swap_ms"] >= 0
    with capsys.disabled():
        print(f"\n[hotswap] load ms {stats['load_ms']}, swap ms mean {stats['mean_swap_ms']}, "
              f"A {stats_a['tokens_per_s']} tok/s\n  base: {base1!r}\n  A: {said_a!r}\n  B: {said_b!r}")


def test_same_greedy_tokens_as_vanilla_peft(engine, tiny_model_dir, adapters):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    vanilla = PeftModel.from_pretrained(base, adapters[1]).eval()
    expected = greedy(vanilla, tokenizer, PROMPTS[0], max_new_tokens=SETTINGS.max_new_tokens)
    assert _say(engine, "B") == expected


def test_concurrent_requests_each_get_their_own_adapter(engine):
    results: dict[str, list[str]] = {"A": [], "B": [], "base": []}
    expected = {"A": _say(engine, "A"), "B": _say(engine, "B"), "base": _say(engine, None)}

    def ask(label: str) -> None:
        for _ in range(3):  # several rounds, so requests interleave in every order
            results[label].append(_say(engine, None if label == "base" else label))

    threads = [threading.Thread(target=ask, args=(label,)) for label in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for label, answers in results.items():
        assert answers == [expected[label]] * 3, label


def test_compare_streams_both_sides_matching_single_answers(engine):
    snapshots = list(engine.compare(ASK, SETTINGS, None, "A"))
    left, right = snapshots[-1]
    assert left == _say(engine, None) and right == _say(engine, "A")
    assert len(snapshots) > 2 and snapshots[0] != snapshots[-1]  # partial texts arrive before the final ones
    left, right = list(engine.compare(ASK, SETTINGS, "A", "B"))[-1]
    assert left.startswith(PHRASE_A) and right.startswith(PHRASE_B)
