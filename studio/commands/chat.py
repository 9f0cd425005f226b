"""chat, adapters: the CLI twin of the Chat tab (one base, many adapters, base vs tuned)."""

from __future__ import annotations

import json
import sys

from studio.config import QUANT_MODES
from studio.inference import BASE_LABEL, GenerationSettings

QUIT = ("/quit", "/exit")
CLEAR = "/clear"


def add(sub) -> None:
    from studio.models import default_model_ref

    p = sub.add_parser("chat", help="chat with a base model and its LoRA adapters; base vs tuned with --compare",
                       description="With a prompt: answer it and exit. Without: an interactive chat "
                                   f"({CLEAR} forgets the conversation, {QUIT[0]} or Ctrl-D ends it).")
    p.add_argument("prompt", nargs="?", help="the question; leave out for an interactive chat")
    p.add_argument("--model", default=default_model_ref(), help="'bundled', a local folder, a .gguf file or a hub id")
    p.add_argument("--quant", default="fp32", choices=QUANT_MODES, help="how to hold the base weights")
    p.add_argument("--adapter", action="append", default=[], metavar="PATH",
                   help="an adapter folder or a registry name (run:<id>, an imported name); repeat for more")
    p.add_argument("--compare", action="store_true",
                   help="answer as the base and as every adapter, one after the other (greedy by default)")
    p.add_argument("--system", default="", help="a system prompt")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats", action="store_true", help="print load and swap ms and tokens/s as JSON at the end")
    p.set_defaults(func=chat)

    p = sub.add_parser("adapters", help="adapter registry: list, import, export, delete, merge")
    asub = p.add_subparsers(dest="adapters_command", required=True, metavar="ACTION")
    q = asub.add_parser("list", help="list run and imported adapters with their cards")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=list_cmd)
    q = asub.add_parser("import", help="import a folder, a .zip, or adapter_config.json + adapter_model.safetensors")
    q.add_argument("source", nargs="+")
    q.add_argument("--name", required=True)
    q.set_defaults(func=import_cmd)
    q = asub.add_parser("export", help="zip one adapter into exports/ (an existing zip is refused)")
    q.add_argument("name")
    q.add_argument("--overwrite", action="store_true", help="replace exports/NAME.zip if it exists")
    q.set_defaults(func=export_cmd)
    q = asub.add_parser("delete", help="delete an imported adapter")
    q.add_argument("name")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    q.set_defaults(func=delete_cmd)
    from studio.commands.merge import add_merge

    add_merge(asub)  # adapters merge


def _settings(args) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)


def _progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr)


def chat(args) -> int:
    from studio.inference import get_engine

    settings = _settings(args)
    settings.validate()  # before minutes of loading
    engine = get_engine(args.model, args.quant, progress=_progress)
    for name in args.adapter:
        ms = engine.load_adapter(name)
        print(f"loaded adapter {name} in {ms:.0f} ms", file=sys.stderr)
    targets: list[str | None] = [None, *args.adapter] if args.compare else [(args.adapter or [None])[0]]
    system = [{"role": "system", "content": args.system}] if args.system else []
    histories = {t: list(system) for t in targets}
    report: dict = {"answers": {}}
    prompts = [args.prompt] if args.prompt is not None else _read_prompts(histories, system)
    for prompt in prompts:
        for target in targets:
            histories[target].append({"role": "user", "content": prompt})
            stats: dict = {}
            if len(targets) > 1 or args.prompt is None:
                print(f"=== {target or BASE_LABEL} ===", flush=True)
            text = ""
            for piece in engine.answer(histories[target], settings, target, stats=stats):
                text += piece
                print(piece, end="", flush=True)
            print()
            histories[target].append({"role": "assistant", "content": text})
            report["answers"][target or BASE_LABEL] = stats
    if args.stats:
        print(json.dumps({**engine.stats(), **report}, indent=2))
    return 0


def _read_prompts(histories: dict, system: list[dict]):
    """Interactive mode: yield prompts typed at the terminal until /quit or end of input."""
    print(f"Interactive chat: type a message; {CLEAR} forgets the conversation, {QUIT[0]} ends.", file=sys.stderr)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            return
        if line in QUIT:
            return
        if line == CLEAR:
            for key in histories:
                histories[key] = list(system)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line:
            yield line


def list_cmd(args) -> int:
    from studio.adapters import list_adapters

    found = [a.summary() | {"path": str(a.path)} for a in list_adapters()]
    if args.json:
        print(json.dumps(found, indent=2))
    elif not found:
        print("No adapters yet: train one (python -m studio train) or import one.")
    for row in [] if args.json else found:
        print(f"{row['name']:32} base={row['base_model']} dataset={row['dataset']} r={row['r']}")
    return 0


def import_cmd(args) -> int:
    from studio.adapters import import_adapter

    source = args.source[0] if len(args.source) == 1 else args.source
    info = import_adapter(source, args.name)
    print(f"imported {info.name} into {info.path}")
    return 0


def export_cmd(args) -> int:
    from studio.adapters import export_zip

    print(export_zip(args.name, overwrite=args.overwrite))
    return 0


def delete_cmd(args) -> int:
    from studio.adapters import delete_adapter, get_adapter

    info = get_adapter(args.name)
    if not args.yes and input(f"Delete {info.name} at {info.path}? [y/N] ").strip().lower() != "y":
        print("not deleted")
        return 1
    delete_adapter(args.name)
    print(f"deleted {args.name}")
    return 0
