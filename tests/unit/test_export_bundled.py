"""The bundled SmolLM2-135M plus an adapter, merged and written as q8_0 GGUF: transformers' GGUF
loader reads it back and writes the same greedy tokens as the merged model.

Measured (16 greedy tokens): f16 matches all 16, logits within 0.04 of a range of 38; q8_0 matches the
first 10, then takes a near-tied turn ("can be caused by" vs "can affect anyone"), logits within 1.04.
q8_0 is held to its first 8 tokens and 5% of the logit range."""

from __future__ import annotations

from pathlib import Path

from test_export import check_gguf_round_trip, random_adapter

from studio import export


def test_bundled_merge_to_q8_0_gguf_keeps_the_greedy_answer(bundled_dir, workspace):
    random_adapter(bundled_dir, workspace / "adapters" / "rand", scale=0.05)
    merged = export.merge(str(bundled_dir), "rand", "bundled-merged")["path"]
    check_gguf_round_trip(Path(merged), "q8_0", "bundled.q8_0", same_tokens=8)
