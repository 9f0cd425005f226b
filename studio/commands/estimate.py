"""estimate, presets: the CLI twin of the Presets tab."""

from __future__ import annotations

import argparse
import json

from studio.config import QUANT_MODES, replace


def add(sub) -> None:
    p = sub.add_parser("estimate", help="estimate peak training memory for a model and preset, and say if it fits")
    p.add_argument("--model", default="bundled",
                   help="a shipped shape (llama-3-8b, tinyllama-1.1b, ...), 'bundled', or a folder with config.json")
    p.add_argument("--preset", default="16gb", help="a preset name (8gb, 12gb, 16gb, 24gb, cpu, or your own)")
    p.add_argument("--seq-len", type=int, help="override train.max_seq_len")
    p.add_argument("--batch", type=int, help="override train.micro_batch")
    p.add_argument("--rank", type=int, help="override lora.r (alpha follows as 2r)")
    p.add_argument("--quant", choices=QUANT_MODES, help="override how the base weights are held")
    p.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    p.add_argument("--device", choices=("cuda", "cpu"), help="override the preset's device")
    p.add_argument("--memory-gb", type=float, help="memory to fit in (default: the preset's budget)")
    p.add_argument("--method", choices=("sft", "dpo", "orpo"), default=None,
                   help="training method: dpo/orpo put a chosen and a rejected row through per pair (dpo: plus "
                        "the reference pass)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=estimate)

    p = sub.add_parser("presets", help="list presets, or recommend one for a model and a memory budget")
    p.add_argument("--model", help="recommend the largest preset that fits this model")
    p.add_argument("--memory-gb", type=float, default=16.0, help="memory budget for the recommendation")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--method", choices=("sft", "dpo", "orpo"), default="sft", help="training method to size for")
    p.set_defaults(func=presets)


def apply_overrides(preset, args: argparse.Namespace):
    """The preset with the command-line overrides applied (validated)."""
    from studio.config import replace

    train, lora = preset.train, preset.lora
    if args.seq_len is not None:
        train = replace(train, max_seq_len=args.seq_len)
    if args.batch is not None:
        train = replace(train, micro_batch=args.batch)
    if args.no_checkpointing:
        train = replace(train, gradient_checkpointing=False)
    if getattr(args, "method", None):
        train = replace(train, method=args.method)
    if args.rank is not None:
        lora = replace(lora, r=args.rank, alpha=2 * args.rank)
    changes = {"train": train, "lora": lora}
    if args.quant:
        changes["quant"] = args.quant
    if args.device:
        changes["device"] = args.device
    return replace(preset, **changes)


def estimate(args) -> int:
    from studio.presets import advise, cpu_note, estimate_preset, load_preset, model_shape

    preset = apply_overrides(load_preset(args.preset), args)
    memory = args.memory_gb if args.memory_gb is not None else preset.memory_gb
    preset = replace(preset, memory_gb=memory)  # on CPU the recipe's pass depends on the memory (cpu_pass)
    shape = model_shape(args.model)
    est = estimate_preset(shape, preset)
    verdict = "fits" if est.fits(memory) else "does not fit"
    if args.json:
        print(json.dumps({"model": args.model, "preset": preset.name, "memory_gb": memory, "fits": est.fits(memory),
                          "breakdown": est.breakdown, "params": est.params}, indent=2))
        return 0
    t = preset.train
    print(f"{args.model} with preset {preset.name}: {preset.quant}, r {preset.lora.r}, seq {t.max_seq_len}, "
          f"batch {t.micro_batch}, checkpointing {'on' if t.gradient_checkpointing else 'off'}, {preset.device}, "
          f"method {t.method}")
    print(est.table())
    print(f"verdict: {verdict} in {memory:g} GB ({est.total:.2f} GB estimated)")
    if note := cpu_note(shape, preset):
        print(note)
    if not est.fits(memory):
        print(advise(shape, preset, memory))
    return 0 if est.fits(memory) else 1


def presets(args) -> int:
    from studio.presets import list_presets, load_preset, model_shape, recommend

    if not args.model:
        for name in list_presets():
            p = load_preset(name)
            print(f"{name:10} {p.device:5} {p.memory_gb:5g} GB  {p.description}")
        return 0
    rec = recommend(model_shape(args.model), args.memory_gb, args.device, args.method)
    print(f"recommended preset: {rec.preset or 'none'}")
    print(rec.advice)
    return 0 if rec.preset else 1
