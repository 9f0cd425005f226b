"""hardware, model info, generate, app: the CLI twin of the app header and the Model panel."""

from __future__ import annotations

import json
import sys

from studio.config import QUANT_MODES


def add(sub) -> None:
    p = sub.add_parser("hardware", help="show GPUs, VRAM, CPU cores and RAM")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=hardware)

    p = sub.add_parser("model", help="model commands: info")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    p = msub.add_parser("info", help="load a model and print its architecture, size and memory footprint")
    _model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=info)

    p = sub.add_parser("generate", help="stream a base-model answer to a prompt")
    _model_args(p, quant="fp32")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--system", default="")
    p.set_defaults(func=generate)

    p = sub.add_parser("app", help="launch the web app (what `make run` does)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=app)


def _model_args(p, quant: str = "fp32") -> None:
    from studio.models import default_model_ref

    p.add_argument("--model", default=default_model_ref(), help="'bundled', a local folder, a .gguf file or a hub id")
    p.add_argument("--quant", default=quant, choices=QUANT_MODES, help="how to hold the weights")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model (off by default)")


def _progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr)


def hardware(args) -> int:
    from studio.models import hardware as detect

    hw = detect()
    print(json.dumps(hw.__dict__, indent=2) if args.json else hw.summary())
    return 0


def info(args) -> int:
    from studio.models import load_model, model_info
    from studio.util import rss_mb

    before = rss_mb()
    loaded = load_model(args.model, args.quant, trust_remote_code=args.trust_remote_code, progress=_progress)
    data = model_info(loaded)
    data["rss_growth_mb"] = round(rss_mb() - before, 1)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key:22} {value}")
    return 0


def generate(args) -> int:
    from studio.inference import GenerationSettings, stream_chat
    from studio.models import load_model
    from studio.templates import describe

    loaded = load_model(args.model, args.quant, trust_remote_code=args.trust_remote_code, progress=_progress)
    print(f"template: {describe(loaded.tokenizer)}", file=sys.stderr)
    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    messages.append({"role": "user", "content": args.prompt})
    for piece in stream_chat(loaded.model, loaded.tokenizer, messages,
                             GenerationSettings(max_new_tokens=args.max_new_tokens)):
        print(piece, end="", flush=True)
    print()
    return 0


def app(args) -> int:
    from studio.ui.app import launch

    launch(host=args.host, port=args.port)
    return 0
