"""data inspect | prepare | list | delete: the CLI twin of the Data tab."""

from __future__ import annotations

import json
import sys

from studio.errors import DataError

FORMAT_CHOICES = ("alpaca", "sharegpt", "openai", "prompt_completion", "reasoning", "text", "mapped")
PREFERENCE_FORMATS = ("trl", "hh", "ultrafeedback")  # with --kind preference, also sharegpt and mapped


def add(sub) -> None:
    p = sub.add_parser("data", help="inspect and prepare datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = dsub.add_parser("inspect", help="detect the format, convert every row, list problems and token counts")
    p.add_argument("file", help=".json, .jsonl, .csv, .tsv, .parquet, .txt or a folder saved by `datasets`")
    _format_args(p)
    p.add_argument("--model", default=None, help="count tokens and preview with this model's tokenizer")
    p.add_argument("--max-len", type=int, default=1024, help="max sequence length in tokens")
    p.add_argument("--show-row", type=int, default=None,
                   help="print this row exactly as prepare saves it (chat template), trained text in [[...]]")
    p.add_argument("--train-on-all", action="store_true", help="train on every token, not only the answers")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=inspect)

    p = dsub.add_parser("prepare", help="render, mask, dedupe, split and save a dataset by name")
    p.add_argument("file")
    _format_args(p)
    p.add_argument("--model", required=True, help="the model whose tokenizer and chat template to use")
    p.add_argument("--name", required=True, help="dataset name, saved as datasets/<name>/")
    p.add_argument("--max-len", type=int, default=1024, help="max sequence length in tokens (longer rows are cut)")
    p.add_argument("--eval-split", type=float, default=0.1, help="share of rows held out for evaluation")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/eval split")
    p.add_argument("--train-on-all", action="store_true", help="train on every token, not only the answers")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.set_defaults(func=prepare)

    p = dsub.add_parser("list", help="list prepared datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=list_cmd)

    p = dsub.add_parser("delete", help="delete a prepared dataset")
    p.add_argument("name")
    p.set_defaults(func=delete)


def _format_args(p) -> None:
    p.add_argument("--kind", default="auto", choices=("auto", "sft", "preference", "kto"),
                   help="sft: conversations with one answer each (also GRPO's prompts); preference: prompt + chosen "
                        "+ rejected answers (for method dpo/orpo); kto: answers labelled good/bad (kto_tag or label, "
                        "for method kto); auto: preference when the rows hold chosen and rejected, kto when a label")
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES + PREFERENCE_FORMATS,
                   help="force a format instead of detecting it (preference: trl, hh, sharegpt, ultrafeedback, mapped)")
    p.add_argument("--map", default=None, metavar="prompt=COL,response=COL[,system=COL]",
                   help="column mapping (needed for format 'mapped'; preference data: prompt=COL,chosen=COL,"
                        "rejected=COL)")
    p.add_argument("--cot-style", default="think", choices=("think", "answer"),
                   help="reasoning data: <think>chain of thought</think> then the answer, or the answer only")
    p.add_argument("--system-prompt", default="keep", choices=("keep", "none", "custom"),
                   help="rows without a system turn: keep the template's default system prompt, none, or "
                        "--system-text (a row's own system turn always stays)")
    p.add_argument("--system-text", default="", help="the system prompt for --system-prompt custom")
    p.add_argument("--replace", default=None, metavar="name=TEXT[,author=TEXT]",
                   help="replace placeholders such as {{name}} or <author> in every turn")
    p.add_argument("--no-train-tool-calls", action="store_true",
                   help="do not train the assistant's tool calls (tool results are never trained)")
    p.add_argument("--long-docs", default="chunk", choices=("chunk", "cut"),
                   help="raw text over --max-len: split into max-length chunks, or cut (the rest is dropped)")


def parse_mapping(text: str | None, example: str = "prompt=COL,response=COL[,system=COL]") -> dict | None:
    if not text:
        return None
    mapping = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DataError(f"Cannot read {text!r}.", f"Write it as {example}.")
        mapping[key.strip()] = value.strip()
    return mapping


def options(args):
    """The row options (system prompt, placeholders, tool calls) from the command line."""
    from studio.data.formats import Options

    mode = "custom" if args.system_text and args.system_prompt == "keep" else args.system_prompt
    return Options(system=mode, system_text=args.system_text,
                   replacements=parse_mapping(args.replace, "name=TEXT,author=TEXT") or {},
                   train_tool_calls=not args.no_train_tool_calls).check()


def _progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr)


def _is_preference(args) -> bool:
    """Route a file to the preference path (studio.data.preference) or the SFT one; refuse the mix-ups."""
    from studio.data import preference

    if args.kind == "preference":
        return True
    found = preference.file_is_preference(args.file)
    if args.kind == "sft" and found:
        raise DataError(f"{args.file}: this is preference data (chosen/rejected): use method dpo or orpo.",
                        "Prepare it as preference data (drop --kind sft) and train it with method dpo or orpo; "
                        "for SFT keep only the chosen answers (e.g. as prompt/completion columns).")
    return found and args.kind == "auto"


def _is_kto(args) -> bool:
    from studio.data import kto

    return args.kind == "kto" or (args.kind == "auto" and kto.file_is_kto(args.file))


def kto_summary(args) -> int:
    """Inspect (and with a name, prepare) a KTO file: format, good/bad counts, problems."""
    from studio.data import kto

    if getattr(args, "name", None):
        folder = kto.prepare(args.file, args.model, args.name, args.eval_split, args.seed, args.overwrite)
        c = json.loads((folder / "meta.json").read_text())["counts"]
        print(f"saved {folder}: {c['train']} train and {c['eval']} eval answers ({c['desirable']} good, "
              f"{c['undesirable']} bad, {c['rows_invalid']} invalid). Train it with method kto.")
        return 0
    report = kto.inspect_file(args.file)
    print(f"kind        KTO answers labelled good/bad (train with method kto)\nformat      "
          f"{report.detection.format}: {report.detection.evidence}\ncounts      {report.counts}")
    for problem in report.problems[:10]:
        print(f"problem     row {problem['row']}: {problem['reason']}")
    return 0


def inspect(args) -> int:
    from studio.data import store

    if _is_kto(args):
        return kto_summary(args)
    if _is_preference(args):
        return inspect_preference(args)

    tokenizer = store.tokenizer_for(args.model) if args.model else None
    report = store.inspect(args.file, args.format, parse_mapping(args.map), args.cot_style, tokenizer,
                           args.max_len, args.train_on_all, progress=_progress, options=options(args),
                           long_docs=args.long_docs)
    if args.json:
        print(json.dumps({**report.summary(), "problems": [p.as_dict() for p in report.problems]},
                         indent=2, ensure_ascii=False))
    else:
        _print_report(report, tokenizer is not None)
    store.require_usable(report)  # after the report: exit 2 with the reasons when nothing can train
    if args.show_row is not None:
        _show_row(args, tokenizer)
    return 0


def _show_row(args, tokenizer) -> None:
    from studio.data import store
    from studio.data.render import highlight

    if tokenizer is None:
        messages = store.conversation_at(args.file, args.show_row, args.format, parse_mapping(args.map),
                                         args.cot_style, options(args))
        print(json.dumps({"messages": messages, "tools": messages.tools}, indent=2, ensure_ascii=False))
        return
    _, items = store.preview_row(args.file, args.show_row, tokenizer, args.format, parse_mapping(args.map),
                                 args.cot_style, options(args), args.max_len, args.train_on_all, args.long_docs)
    for n, item in enumerate(items, start=1):
        if len(items) > 1:
            print(f"--- chunk {n} of {len(items)} ({len(item.input_ids)} tokens)")
        print("".join(f"[[{t}]]" if label else t for t, label in highlight(tokenizer, item.input_ids,
                                                                           item.assistant_masks)))
        if item.dropped:
            print(f"--- cut at max_len={args.max_len}: {item.dropped} tokens dropped")


def _print_report(report, tokenized: bool) -> None:
    print(f"format      {report.format}  ({report.detection.evidence})")
    if report.mapping:
        print(f"mapping     {report.mapping}")
    print(f"rows        {report.rows_in} read, {report.rows_ok} ok, {report.rows_invalid} invalid, "
          f"{report.duplicates} duplicates")
    if tokenized:
        print(f"max_len     {report.cuts_line()}")
    if report.tool_rows:
        print(f"tools       {report.tool_rows} rows with tool definitions, calls or results")
    if report.placeholders:
        from studio.data.formats import placeholder_key

        replaced = report.options.replacements
        found = ", ".join(f"{p} ({n} rows, " + (f"replaced by {replaced[placeholder_key(p)]!r})"
                                                if placeholder_key(p) in replaced else "not replaced)")
                          for p, n in report.placeholders.items())
        print(f"placeholder {found}; replace with --replace name=TEXT,author=TEXT")
    if report.identity_rows:
        print(f"identity    {report.identity_rows} rows say who the assistant is; check the name and maker")
    if report.template_warning:
        print(f"template    {report.template_warning}")
    for note in report.notes:
        if note:
            print(f"note        {note}")
    stats = report.token_stats
    if stats and stats.get("rows"):
        print(f"tokens      mean {stats['mean']}, median {stats['median']}, p95 {stats['p95']}, max {stats['max']}; "
              f"{stats['over_max_len']} rows ({stats['over_max_len_share']:.1%}) over max_len={stats['max_len']}")
    print(f"time        {report.seconds:.2f} s")
    for problem in report.problems[:20]:  # the first 20 here; --json lists every kept one
        print(f"  row {problem.row}: [{problem.kind}] {problem.reason}")
    if len(report.problems) > 20:
        print(f"  ... {len(report.problems) - 20} more (use --json for all)")


def inspect_preference(args) -> int:
    from studio.data import preference, store

    tokenizer = store.tokenizer_for(args.model) if args.model else None
    report = preference.inspect_file(args.file, args.format, parse_mapping(args.map), tokenizer, args.max_len,
                                     progress=_progress)
    if args.json:
        print(json.dumps({**report.summary(), "problems": [p.as_dict() for p in report.problems]},
                         indent=2, ensure_ascii=False))
    else:
        _print_preference_report(report)
    if args.show_row is not None:
        pair = preference.pair_at(args.file, args.show_row, args.format, parse_mapping(args.map))
        if tokenizer is None:
            print(json.dumps(pair.as_dict(), indent=2, ensure_ascii=False))
        else:
            rendered = preference.render_pairs(tokenizer, [pair], args.max_len)[0]
            if isinstance(rendered, preference.RowError):
                raise DataError(f"Row {args.show_row}: {rendered.reason}.", "Choose another row.")
            for side, runs in preference.highlight_pair(rendered).items():
                print(f"--- {side} ({rendered.lengths['prompt']} prompt + {rendered.lengths[side]} answer tokens; "
                      "trained text in [[...]])")
                print("".join(f"[[{t}]]" if label else t for t, label in runs))
    return 0


def _print_preference_report(report) -> None:
    print("kind        preference pairs (train with method dpo or orpo)")
    print(f"format      {report.format}  ({report.detection.evidence})")
    if report.mapping:
        print(f"mapping     {report.mapping}")
    c = report.counts
    print(f"rows        {report.rows_in} read, {report.rows_ok} ok, {c['invalid']} invalid, {c['empty']} with an "
          f"empty side, {c['same']} with chosen == rejected, {c['duplicate']} duplicates, {c['too_long']} too long")
    if report.template_warning:
        print(f"warning     {report.template_warning}")
    stats = report.token_stats
    if stats and stats.get("rows"):
        print(f"tokens      prompt mean {stats['prompt_mean']}, chosen mean {stats['chosen_mean']}, rejected mean "
              f"{stats['rejected_mean']}; prompt + longer answer: median {stats['median']}, max {stats['max']}; "
              f"{stats['over_max_len']} rows over max_len={stats['max_len']}")
    print(f"time        {report.seconds:.2f} s")
    for problem in report.problems[:20]:
        print(f"  row {problem.row}: [{problem.kind}] {problem.reason}")
    if len(report.problems) > 20:
        print(f"  ... {len(report.problems) - 20} more (use --json for all)")


def prepare(args) -> int:
    from studio.data import store
    from studio.util import read_json

    if _is_kto(args):
        return kto_summary(args)
    if _is_preference(args):
        return prepare_preference(args)
    folder = store.prepare(args.file, args.model, args.name, max_len=args.max_len, eval_split=args.eval_split,
                           fmt=args.format, mapping=parse_mapping(args.map), cot_style=args.cot_style,
                           train_on_all=args.train_on_all, seed=args.seed, overwrite=args.overwrite,
                           progress=_progress, options=options(args), long_docs=args.long_docs)
    meta = read_json(folder / "meta.json", {})
    if meta.get("template_warning"):
        print(f"template    {meta['template_warning']}")
    counts = meta["counts"]
    print(f"saved {folder}: {counts['train']} train, {counts['eval']} eval rows from {counts['rows_ok']} usable "
          f"of {counts['rows_in']} ({counts['rows_invalid']} invalid, {counts['duplicates']} duplicates; "
          f"see problems.jsonl) in {meta['seconds']} s")
    print(f"max_len     {meta['cuts']}")
    for note in meta.get("notes", []):
        print(f"note        {note}")
    return 0


def list_cmd(args) -> int:
    from studio.data import store

    metas = store.list_datasets()
    if args.json:
        print(json.dumps(metas, indent=2, ensure_ascii=False))
        return 0
    for meta in metas:
        counts = meta.get("counts", {})
        print(f"{meta['name']:24} {meta.get('format', '?'):18} train {counts.get('train', '?'):>7} "
              f"eval {counts.get('eval', '?'):>6}  {meta.get('model_ref', '')}")
    if not metas:
        print("no prepared datasets yet")
    return 0


def delete(args) -> int:
    from studio.data import store

    store.delete_dataset(args.name)
    print(f"deleted dataset {args.name}")
    return 0


def prepare_preference(args) -> int:
    from studio.data import preference
    from studio.util import read_json

    if args.train_on_all:
        raise DataError("--train-on-all does not apply to preference pairs: only the answers are compared.",
                        "Drop --train-on-all.")
    folder = preference.prepare(args.file, args.model, args.name, max_len=args.max_len, eval_split=args.eval_split,
                                seed=args.seed, fmt=args.format, mapping=parse_mapping(args.map),
                                overwrite=args.overwrite, progress=_progress)
    meta = read_json(folder / "meta.json", {})
    c = meta["counts"]
    print(f"saved {folder}: {c['train']} train and {c['eval']} eval preference pairs ({c['rows_invalid']} invalid, "
          f"{c['same']} with chosen == rejected, {c['duplicates']} duplicates, {c['too_long']} too long; see "
          f"problems.jsonl) in {meta['seconds']} s. Train it with method dpo or orpo.")
    return 0
