"""`python -m benchmarks.lora_step`: one decode step of 8 rows on the engine, by how the rows use adapters.

Four ways, in one process on the same cache length (a 60-token prompt, then `--steps` decode steps each):
every row on the base; every row on adapter A (merged into the weights); base/A/B rows mixed through the
stacked LoRA (studio/serving/lora_batch.py); the same mix through PEFT's `adapter_names` route. The adapters
are the serve bench's random r=16 LoRAs on all seven projections (made once under .cache/bench/serve/MODEL).
Rounds alternate the four, so a busy moment hits all of them alike; the best round of each is printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def step_ms(engine, rows: list[str | None], steps: int) -> float:
    import torch

    ids = torch.randint(0, 1000, (len(rows), 60), generator=torch.Generator().manual_seed(0))
    with engine.lock, torch.inference_mode():
        cache = engine.new_cache()
        out = engine.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{engine.cache_arg: cache},
                           **engine.prepare_step(rows, rows))
        last = out.logits[:, -1].argmax(-1)
        start = time.perf_counter()
        for _ in range(steps):
            out = engine.model(input_ids=last[:, None], use_cache=True, logits_to_keep=1,
                               **{engine.cache_arg: cache}, **engine.prepare_step(rows, rows))
            last = out.logits[:, -1].argmax(-1)
        return (time.perf_counter() - start) / steps * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lora_step", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--quant", default="fp32")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from studio.inference import Engine
    from studio.models import resolve
    from studio.serving import lora_batch
    from studio.serving.local import random_adapters

    workdir = Path(".cache/bench/serve") / Path(args.model).name
    adapters = {a: workdir / a for a in ("A", "B")}
    if not all((p / "adapter_config.json").is_file() for p in adapters.values()):
        adapters = random_adapters(resolve(args.model), workdir, tuple(adapters))
    engine = Engine(args.model, args.quant)
    for name, path in adapters.items():
        engine.load_adapter(name, path)
    mixed = [None, "A", "B", None, "A", "B", None, "A"]
    build = lora_batch.BatchedLora.build
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for label, rows, stacked in (("8 rows on the base", [None] * 8, True),
                                     ("8 rows on A (merged; q8: stacked)", ["A"] * 8, True),
                                     ("base/A/B mixed, stacked LoRA", mixed, True),
                                     ("base/A/B mixed, PEFT adapter_names", mixed, False)):
            lora_batch.BatchedLora.build = build if stacked else classmethod(lambda cls, model, names: None)
            engine._drop_batched()  # rebuilt (or refused) at the next mixed step
            best[label] = min(best.get(label, float("inf")), step_ms(engine, rows, args.steps))
    lora_batch.BatchedLora.build = build
    print(f"one decode step, {args.model} {engine.quant}, best of {args.rounds} rounds of {args.steps} steps:")
    for label, ms in best.items():
        print(f"  {label:<38} {ms:6.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
