"""`python -m studio <command>`: the CLI twin of every tab in the app."""

from __future__ import annotations

import argparse
import importlib
import sys

from studio.errors import StudioError

# One module per command group (studio/commands/<name>.py), each with add(subparsers).
COMMAND_MODULES = (
    "studio.commands.model",  # hardware, model info, generate, app
    "studio.commands.estimate",  # estimate, presets
    "studio.commands.data",  # data inspect|prepare|list|delete
    "studio.commands.train",  # train, runs list|show|stop|resume|delete
    "studio.commands.chat",  # chat, adapters list|import|export|delete
    "studio.commands.evaluate",  # eval, prune (and --sweep), export merge|adapter|gguf|push
    "studio.commands.serve",  # serve (OpenAI-compatible API; --engine vllm)
    "studio.commands.experiments",  # sweep list|show|stop (runs compare|report|checkpoints|branch: in train)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio",
                                     description="Tuning Studio: fine-tune open chat models with QLoRA / LoRA.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except StudioError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.fix:
            print(f"fix: {exc.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
