"""The bundled SmolLM2-135M plus an adapter, merged and written as q8_0 GGUF: transformers' GGUF
loader reads it back and writes the same greedy tokens as the merged model."""

from __future__ import annotations

from pathlib import Path

from test_export import check_gguf_round_trip, random_adapter

from studio import export


def test_bundled_merge_to_q8_0_gguf_keeps_every_greedy_token(bundled_dir, workspace):
    random_adapter(bundled_dir, workspace / "adapters" / "rand", scale=0.05)
    merged = export.merge(str(bundled_dir), "rand", "bundled-merged")["path"]
    check_gguf_round_trip(Path(merged), "q8_0", "bundled.q8_0", all_tokens=True)
