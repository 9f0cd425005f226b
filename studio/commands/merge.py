"""adapters merge: the CLI twin of the Export tab's "Combine adapters" section (studio.merging)."""

from __future__ import annotations

import sys

from studio.merging import DEFAULT_DENSITY, METHODS


def add_merge(asub) -> None:
    q = asub.add_parser("merge", help="combine two or more LoRA adapters of one base into a new adapter "
                                      "(PEFT add_weighted_adapter: linear, cat, ties, dare_linear, dare_ties, svd...)")
    q.add_argument("--inputs", nargs="+", required=True, metavar="ADAPTER", help="the parents' registry names")
    q.add_argument("--name", required=True, help="the new adapter's name (an existing name is refused)")
    q.add_argument("--method", default="ties", choices=METHODS,
                   help="linear and ties/dare need equal ranks; cat and *_svd take any (see docs/evaluation.md)")
    q.add_argument("--weights", nargs="+", type=float, default=[],
                   help="one per input (default: 1.0 each for ties/dare_ties, else 1/n each)")
    q.add_argument("--density", type=float, default=None,
                   help=f"ties/dare/magnitude_prune: the fraction of entries kept (default {DEFAULT_DENSITY})")
    q.add_argument("--svd-rank", type=int, default=None, help="*_svd methods: the result's rank (default: the largest)")
    q.add_argument("--seed", type=int, default=0, help="DARE's random drops: the same seed gives the same adapter")
    q.add_argument("--model", default=None,
                   help="the base to merge on (default: the base the first adapter's card names)")
    q.set_defaults(func=merge_cmd)


def merge_cmd(args) -> int:
    from studio.merging import MergeSpec, merge

    spec = MergeSpec(tuple(args.inputs), args.name, args.method, tuple(args.weights), args.density, args.svd_rank,
                     args.seed)
    info = merge(spec, ref=args.model, progress=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr))
    weights = ", ".join(f"{p['name']} x {p['weight']:g}" for p in info.card["merge"]["parents"])
    print(f"merged {weights} ({args.method}) into {info.name}: {info.path}")
    return 0
