"""eval lm-eval: benchmark tasks through EleutherAI's lm-eval for the base and adapters (the CLI twin of the
Evaluate tab's "Benchmark tasks (lm-eval)" section; both call studio.lmeval.run_lm_eval)."""

from __future__ import annotations

import json
import sys

from studio.config import QUANT_MODES


def add_lm_eval(kinds) -> None:
    from studio.lmeval import DEFAULT_TASKS
    from studio.models import default_model_ref

    p = kinds.add_parser("lm-eval", help="lm-eval benchmark tasks (local task YAMLs) for the base and adapters",
                         description="Tasks come from assets/lm_eval_tasks/ (studio_tiny_mc, studio_tiny_arith) and "
                                     "<workspace>/lm_eval_tasks/; their data must be local (no hub).")
    p.add_argument("--model", default=default_model_ref(), help="'bundled', a local folder, a .gguf file or a hub id")
    p.add_argument("--quant", default="fp32", choices=QUANT_MODES)
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="task names (see --list)")
    p.add_argument("--adapters", nargs="*", default=[], help="adapter names to score beside the base")
    p.add_argument("--limit", type=int, default=None, help="score only the first N items of each task")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's own)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chat-template", action="store_true",
                   help="wrap each item in the model's chat template (as the adapters were trained)")
    p.add_argument("--include-path", default=None,
                   help="also a folder of lm-eval task YAMLs read by lm-eval itself (Python code allowed; local only)")
    p.add_argument("--list", action="store_true", help="list the tasks found and exit")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.set_defaults(func=lm_eval_cmd)


def lm_eval_cmd(args) -> int:
    from studio.lmeval import available_tasks, run_lm_eval

    if args.list:
        for name, path in available_tasks().items():
            print(f"{name:28} {path}")
        return 0
    report = run_lm_eval(args.model, args.quant, args.tasks, args.adapters, args.limit, args.batch_size,
                         args.num_fewshot, args.chat_template, args.include_path,
                         progress=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(format_table(report))
    print("\nsaved: " + ", ".join(report["saved_to"]))
    return 0


def format_table(report: dict) -> str:
    """Base and adapters side by side, one line per (task, metric), with each task's item count."""
    models = list(report["results"])
    width = max(14, *(len(m) + 2 for m in models))
    lines = [f"{'task':24} {'metric':28} " + "".join(f"{m:>{width}}" for m in models)]
    for row in report["table"]:
        cells = "".join(f"{str(row.get(m, '-')):>{width}}" for m in models)
        lines.append(f"{row['task']:24} {row['metric']:28} {cells}")
    counts = ", ".join(f"{task}: {n}" for task, n in report["samples"].items())
    lines.append(f"\nitems scored per model: {counts}; value ± standard error (lm-eval {report['lm_eval']})")
    return "\n".join(lines)
