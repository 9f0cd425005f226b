"""eval, prune, export: the CLI twins of the Evaluate and Export tabs."""

from __future__ import annotations

import json
import sys

from studio.config import QUANT_MODES
from studio.export import GGUF_TYPES, LORA_TYPES


def add(sub) -> None:
    from studio.models import default_model_ref

    default_ref = default_model_ref()
    p = sub.add_parser("eval", help="perplexity (and ROUGE battery) of the base and adapters on a dataset's eval split")
    p.add_argument("--model", default=default_ref, help="'bundled', a local folder, a .gguf file or a hub id")
    p.add_argument("--quant", default="fp32", choices=QUANT_MODES)
    p.add_argument("--dataset", default=None, help="a prepared dataset (Data tab / `python -m studio data`)")
    p.add_argument("--adapter", action="append", default=[], help="an adapter name (repeat for several)")
    p.add_argument("--battery", type=int, default=0, help="also generate answers for this many eval prompts (ROUGE)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-rows", type=int, default=None, help="evaluate only the first N eval rows")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--beta", type=float, default=0.1,
                   help="preference datasets: the DPO beta of the reward margin (base as the reference)")
    p.add_argument("--rewards", action="store_true",
                   help="held-out mean reward and exact-match accuracy of generated answers (GRPO datasets)")
    p.add_argument("--reward-config", default=None,
                   help="a run YAML whose grpo.rewards score the answers (default: numeric_match, last number)")
    p.add_argument("--split", default="eval", choices=("eval", "train"), help="--rewards: the split to answer")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=evaluate)
    kinds = p.add_subparsers(dest="eval_kind", metavar="KIND", help="or one of these evaluations")
    from studio.commands.arena import add_kinds

    add_kinds(kinds)  # eval arena, eval judge
    from studio.commands.lm_eval import add_lm_eval

    add_lm_eval(kinds)  # eval lm-eval

    p = sub.add_parser("prune", help="SparseGPT or magnitude pruning, or a perplexity-vs-sparsity sweep")
    p.add_argument("--model", default=default_ref)
    p.add_argument("--dataset", default="builtin:pydoc",
                   help="calibration (train split) and held-out (eval split) text: a prepared dataset, or "
                        "builtin:pydoc (Python's own reference docs, works offline)")
    p.add_argument("--method", default="sparsegpt", choices=("sparsegpt", "magnitude"))
    p.add_argument("--sparsity", default="0.5", help="0.5, 50%% or an n:m pattern (2:4, 4:8)")
    p.add_argument("--sweep", nargs="*", default=None, metavar="LEVEL",
                   help="sweep both methods over these levels (default: 0 0.25 0.5 0.6 0.7 2:4)")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-len", type=int, default=256)
    p.add_argument("--eval-rows", type=int, default=64, help="held-out rows to measure perplexity on")
    p.add_argument("--out", default=None, help="save the pruned model as exports/<out> (not with --sweep)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=prune)

    _add_export(sub, default_ref)


def _add_export(sub, default_ref: str) -> None:
    """export merge|adapter|lora-gguf|gguf|push."""
    p = sub.add_parser("export", help="merge an adapter, zip it, write GGUF, or push to the Hub")
    esub = p.add_subparsers(dest="export_command", required=True, metavar="ACTION")
    e = esub.add_parser("merge", help="merge an adapter into its base and save a full HF folder")
    e.add_argument("--model", default=default_ref)
    e.add_argument("--quant", default="fp32", choices=QUANT_MODES, help="4bit/8bit bases are dequantized first")
    e.add_argument("--adapter", required=True)
    e.add_argument("--out", required=True, help="folder name under exports/")
    e.add_argument("--gguf", nargs="*", default=[], choices=GGUF_TYPES, help="also write these GGUF files")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=export_merge)
    e = esub.add_parser("adapter", help="zip an adapter into exports/<name>.zip")
    e.add_argument("--adapter", required=True)
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=export_adapter)
    e = esub.add_parser("gguf", help="write an HF model folder as GGUF (llama.cpp, Ollama)")
    e.add_argument("folder", help="a merged (or any Llama-architecture) HF folder")
    e.add_argument("--out", required=True, help="file name under exports/ (without .gguf)")
    e.add_argument("--type", default="q8_0", choices=GGUF_TYPES)
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=export_gguf)
    e = esub.add_parser("lora-gguf", help="write an adapter as a GGUF LoRA plus an Ollama Modelfile, without "
                                          "merging (llama-server --lora, Ollama ADAPTER)")
    e.add_argument("--model", default=default_ref, help="the base the adapter was trained on")
    e.add_argument("--adapter", required=True)
    e.add_argument("--out", required=True, help="folder name under exports/")
    e.add_argument("--type", default="f16", choices=LORA_TYPES, help="the LoRA's weights (f16: exact enough)")
    e.add_argument("--base-gguf", default=None,
                   help="the base as GGUF for the Modelfile's FROM (default: the bundled file or the --model .gguf; "
                        "an HF folder base is converted to base.f16.gguf beside the adapter)")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=export_lora_gguf)
    e = esub.add_parser("push", help="upload an exported folder or file to the Hugging Face Hub")
    e.add_argument("path")
    e.add_argument("--repo", required=True, help="user/name")
    e.add_argument("--public", action="store_true", help="create a public repo (private by default)")
    e.set_defaults(func=export_push)


def _progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr)


def _print(data, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text)


def evaluate(args) -> int:
    from studio.data.preference import dataset_kind
    from studio.errors import ConfigError
    from studio.evaluation import compare_battery, compare_perplexity

    if not args.dataset:
        raise ConfigError("eval needs a dataset (or a kind: eval arena, eval judge).",
                          "Pass --dataset NAME (a prepared dataset), or run e.g. `python -m studio eval arena --help`.")
    if dataset_kind(args.dataset) == "preference":
        return evaluate_preference(args)
    if args.rewards:
        return evaluate_rewards(args)
    report = compare_perplexity(args.model, args.quant, args.dataset, args.adapter, args.batch_size,
                                args.max_rows, _progress)
    lines = [f"{'model':24} {'perplexity':>10} {'loss':>8} {'tokens':>7}"]
    lines += [f"{name:24} {r['perplexity']:10.3f} {r['loss']:8.4f} {r['tokens']:7d}"
              for name, r in report["results"].items()]
    if args.battery:
        report["battery"] = compare_battery(args.model, args.quant, args.dataset, args.adapter, args.battery,
                                            args.max_new_tokens, _progress)
        lines += ["", f"{'model':24} " + " ".join(f"{k:>8}" for k in ("rouge1", "rouge2", "rougeL"))]
        lines += [f"{name:24} " + " ".join(f"{v:8.4f}" for v in scores.values())
                  for name, scores in report["battery"]["rouge"].items()]
    saved = report["saved_to"] + report.get("battery", {}).get("saved_to", [])
    lines += ["", "saved: " + ", ".join(saved)]
    _print(report, args.json, "\n".join(lines))
    return 0


def evaluate_rewards(args) -> int:
    """Held-out mean reward and exact-match accuracy of the base and each adapter (GRPO data)."""
    from studio.config import RunSpec, load_yaml
    from studio.reward_eval import compare_rewards, summary_lines

    specs = load_yaml(RunSpec, args.reward_config).grpo.rewards if args.reward_config else None
    report = compare_rewards(args.model, args.quant, args.dataset, args.adapter, specs, args.split, args.max_rows,
                             args.max_new_tokens, _progress)
    _print(report, args.json, "\n".join([*summary_lines(report), "", "saved: " + ", ".join(report["saved_to"])]))
    return 0


def evaluate_preference(args) -> int:
    """Held-out preference accuracy and reward margin of the base and each adapter (DPO/ORPO data)."""
    from studio.evaluation import compare_preference

    report = compare_preference(args.model, args.quant, args.dataset, args.adapter, args.beta, args.max_rows,
                                args.batch_size, _progress)
    lines = [f"{'model':24} {'pref. accuracy':>14} {'per-token acc.':>14} {'logp margin':>11} {'reward margin':>13} "
             f"{'reward acc.':>11}"]
    for name, r in report["results"].items():
        acc = "-" if r.get("reward_accuracy") is None else f"{r['reward_accuracy']:.3f}"
        lines.append(f"{name:24} {r['preference_accuracy']:14.3f} {r['normalized_accuracy']:14.3f} "
                     f"{r['mean_logp_margin']:11.3f} {r['mean_reward_margin']:13.4f} {acc:>11}")
    lines += ["", f"{report['results']['base']['pairs']} held-out pairs of {args.dataset}; reward margin = beta "
              f"{args.beta} x (log-ratio chosen - log-ratio rejected) against the base", "",
              "saved: " + ", ".join(report["saved_to"])]
    _print(report, args.json, "\n".join(lines))
    return 0


def prune(args) -> int:
    from studio import pruning

    if args.sweep is not None:
        results = pruning.sweep(args.model, args.dataset, args.sweep or pruning.SWEEP_DEFAULT,
                                calib_samples=args.calib_samples, calib_len=args.calib_len,
                                eval_rows=args.eval_rows, progress=_progress)
        folder = pruning.save_sweep(results, args.out)
        _print(results, args.json, pruning.sweep_markdown(results) + f"\n\nsaved: {folder}")
        return 0
    sparsity, pattern = pruning.parse_level(args.sparsity)
    spec = pruning.PruneSpec(args.method, sparsity, pattern, args.calib_samples, args.calib_len)
    report = pruning.prune_and_save(args.model, spec, args.dataset, args.out or _default_name(args), args.overwrite,
                                    args.eval_rows, _progress)
    _print(report, args.json, f"{report['label']}: sparsity {report['measured_sparsity']:.1%}, held-out perplexity "
           f"{report['perplexity_before']:.2f} -> {report['perplexity_after']:.2f}\nsaved: {report['path']}")
    return 0


def _default_name(args) -> str:
    from pathlib import Path

    stem = Path(args.model).name if args.model != "bundled" else "bundled"
    return f"{stem}-{args.method}-{args.sparsity.replace(':', 'of').replace('%', 'pct')}"


def export_merge(args) -> int:
    from studio.export import merge, to_gguf

    report = merge(args.model, args.adapter, args.out, args.quant, args.overwrite, _progress)
    for qtype in args.gguf:
        path = to_gguf(report["path"], f"{args.out}.{qtype}", qtype, args.overwrite, _progress)
        print(f"gguf: {path}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"merged: {report['path']}")
    return 0


def export_adapter(args) -> int:
    from studio.export import export_adapter_zip

    print(export_adapter_zip(args.adapter, args.overwrite))
    return 0


def export_gguf(args) -> int:
    from studio.export import to_gguf

    print(to_gguf(args.folder, args.out, args.type, args.overwrite, _progress))
    return 0


def export_lora_gguf(args) -> int:
    from studio.export import lora_gguf

    report = lora_gguf(args.model, args.adapter, args.out, args.type, args.base_gguf, args.overwrite, _progress)
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"lora-gguf: {report['path']}\nllama.cpp: {report['llama_server']}\nollama: {report['ollama']}")
    return 0


def export_push(args) -> int:
    from studio.export import push_to_hub

    print(push_to_hub(args.path, args.repo, private=not args.public, progress=_progress))
    return 0
