"""`python -m benchmarks.decode_floor`: what one token costs on this CPU, one row: the weight matmuls alone
(every linear layer of the model called on one input row, nothing else) against a whole transformers decode
step and the serving engine's lean step (studio/serving/decode.py, a base-only step: q8's fused projections), in
fp32 and with q8's int8 linears (studio/q8.py). The matmuls are the floor any PyTorch decode loop pays, whatever
Python it saves around them; compare them with llama-server's whole step (1000 / its tok/s).
"""

from __future__ import annotations

import argparse
import time


def _best_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def measure(model_ref: str, quant: str, repeats: int) -> tuple[int, float, float, float]:
    """(linear layers, their matmuls alone, a transformers decode step, a lean step), in ms, for one row."""
    import torch
    from transformers import DynamicCache

    from studio import q8
    from studio.inference import _cache_arg
    from studio.models import load_model
    from studio.serving import decode

    model = load_model(model_ref, quant, "cpu").model.eval()
    dtype = torch.bfloat16 if quant == "q8" else torch.float32  # q8 multiplies bf16 activations
    linears = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, q8.Int8Linear))]
    inputs = {m.in_features: torch.randn(1, m.in_features, dtype=dtype) for m in linears}
    with torch.inference_mode():
        matmuls = _best_ms(lambda: [m(inputs[m.in_features]) for m in linears], repeats)
        cache = DynamicCache(config=model.config)
        out = model(input_ids=torch.randint(0, 1000, (1, 64)), use_cache=True, **{_cache_arg(model): cache})
        last = out.logits[:, -1:].argmax(-1)

        def crop():  # back to 64 positions: every step sees the same cache length
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[:, :, :64], layer.values[:, :, :64]

        def step():
            model(input_ids=last, use_cache=True, logits_to_keep=1, **{_cache_arg(model): cache})
            crop()

        mask, position = torch.ones(1, 65, dtype=torch.long), torch.tensor([64])

        def lean():
            decode.step(model, cache.layers, last[:, 0], position, mask, base_only=True)
            crop()

        return len(linears), matmuls, _best_ms(step, repeats), _best_ms(lean, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode_floor", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    import torch

    print(f"one row, {torch.get_num_threads()} threads, best of {args.repeats}:")
    for quant in ("fp32", "q8"):
        count, matmuls, whole, lean = measure(args.model, quant, args.repeats)
        print(f"  {quant:<5} {count} linear layers alone: {matmuls:5.1f} ms | a transformers decode step: "
              f"{whole:5.1f} ms ({1000 / whole:.0f} tok/s at most) | the lean step: {lean:5.1f} ms "
              f"({1000 / lean:.0f} tok/s at most)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
