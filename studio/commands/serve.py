"""serve: the OpenAI-compatible API (the same routes the app mounts under /v1), or vLLM's own server."""

from __future__ import annotations

from studio.config import SERVING_QUANTS


def add(sub) -> None:
    from studio.models import default_model_ref

    p = sub.add_parser("serve", help="serve the base and its adapters as an OpenAI-compatible API",
                       description="One loaded base, many adapters, many users at once: requests for different "
                                   "adapters decode in one batch. Set STUDIO_API_KEYS='key1,key2' to require "
                                   "'Authorization: Bearer <key>'. See docs/serving.md.")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (set STUDIO_API_KEYS)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=default_model_ref(), help="'bundled', a local folder or a hub id")
    p.add_argument("--quant", default=None, choices=SERVING_QUANTS,
                   help="how to hold the base weights (default: bf16 on a GPU that computes it, else fp32; q8: int8 "
                        "weights on a CPU, the fastest to decode there, answers close to fp32's but not equal)")
    p.add_argument("--adapters", nargs="*", default=[], metavar="NAME[=FOLDER]",
                   help="adapters to load at start: registry names, or NAME=FOLDER (all registry adapters "
                        "are served anyway, loaded on first request)")
    p.add_argument("--max-batch", type=int, default=8, help="most requests decoded together in one forward pass")
    p.add_argument("--max-queue", type=int, default=64,
                   help="most requests waiting for a batch slot; one more gets HTTP 429")
    p.add_argument("--max-kv-tokens", type=int, default=None,
                   help="KV-cache budget in tokens (rows x longest prompt + max_tokens); a request that can never "
                        "fit gets HTTP 400 (default: a quarter of the free memory)")
    p.add_argument("--max-adapters", type=int, default=None,
                   help="adapters kept attached at once; past it the least recently used idle one is detached "
                        "(default: from free memory, 2 to 32)")
    p.add_argument("--engine", default="studio", choices=("studio", "vllm"),
                   help="vllm: start vLLM's own OpenAI server with the registry's adapters (CUDA only)")
    p.add_argument("--dry-run", action="store_true", help="with --engine vllm: print the command, do not run it")
    p.set_defaults(func=serve)


def serve(args) -> int:
    from studio.errors import ConfigError
    from studio.serving.server import parse_adapters

    adapters = parse_adapters(args.adapters)
    if args.quant is None:
        from studio.inference import serving_quant

        args.quant = serving_quant()
    if args.max_batch < 1 or args.max_queue < 1:
        raise ConfigError("--max-batch and --max-queue must be at least 1.", "Pass e.g. --max-batch 8 --max-queue 64.")
    if (args.max_kv_tokens or 1) < 1 or (args.max_adapters or 1) < 1:
        raise ConfigError("--max-kv-tokens and --max-adapters must be at least 1.",
                          "Leave them out for defaults from free memory, or pass e.g. --max-adapters 4.")
    if args.engine == "vllm":
        from studio.serving.vllm import launch

        return launch(args.model, adapters, args.host, args.port, args.quant, dry_run=args.dry_run)
    from studio.serving.server import serve as run

    run(args.host, args.port, args.model, args.quant, adapters, args.max_batch, args.max_queue,
        args.max_kv_tokens, args.max_adapters)
    return 0
