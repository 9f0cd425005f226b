"""The serving benchmark on a tiny model, so `python -m benchmarks.serve_bench` cannot rot: every cell is
measured for the studio, a peer (a second studio server, driven as any OpenAI-compatible server) and plain
`model.generate`, and greedy answers agree across the three."""

from __future__ import annotations

import json

from benchmarks import serve_bench


def test_bench_measures_every_cell_for_the_studio_a_peer_and_plain_generate(tiny_model_dir, tmp_path):
    from studio.inference import Engine
    from studio.serving.local import random_adapters, start_server

    adapters = random_adapters(str(tiny_model_dir), tmp_path / "work", serve_bench.ADAPTERS)
    peer_engine = Engine(str(tiny_model_dir), "fp32")
    server, url = start_server(peer_engine, adapters)
    out = tmp_path / "serve.json"
    try:
        assert serve_bench.main(["--model", str(tiny_model_dir), "--requests", "3", "--max-tokens", "4",
                                 "--threads", "1", "--peer", url, "--workdir", str(tmp_path / "work"),
                                 "--out", str(out)]) == 0
    finally:
        server.should_exit = True
        peer_engine.close()
    result = json.loads(out.read_text())
    assert [c["cell"] for c in result["cells"]] == [c[0] for c in serve_bench.CELLS]
    assert len(result["labels"]) == 3 and result["labels"][-1].startswith("plain model.generate")
    for cell in result["cells"]:
        studio, other, generate = (cell["targets"][label] for label in result["labels"])
        assert studio["tokens"] > 0 and studio["tok_s"] > 0
        assert studio["texts"] == other["texts"]  # the same engine behind the peer: the same greedy answers
        if cell["cell"] == "1 client, base":  # one at a time, no padding: generate writes the very same answers
            assert studio["texts"] == generate["texts"]
    table = serve_bench.table(result)
    assert "8 clients, base + 2 LoRAs mixed" in table and "plain model.generate" in table
