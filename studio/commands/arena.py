"""eval arena, eval judge: the CLI twins of the Arena tab (blind votes, leaderboard, LLM judge)."""

from __future__ import annotations

import json
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor

from studio.config import QUANT_MODES


def add_kinds(kinds) -> None:
    """`eval arena` and `eval judge` (kinds: the `eval` command's subparsers)."""
    from studio.models import default_model_ref

    p = kinds.add_parser("arena", help="blind arena: answers of the base and adapters with names hidden; vote; "
                                       "leaderboard", description="Play from a terminal: each round prints the "
                                       "answers as A, B, C...; type the best letter, 'tie', 'bad' or 'q'.")
    _common(p, default_model_ref())
    p.add_argument("--rounds", type=int, default=5, help="rounds to play (prompts asked)")
    p.add_argument("--leaderboard", action="store_true", help="only print the leaderboard (no playing)")
    p.add_argument("--seed", type=int, default=None, help="the shuffle's seed (default: random)")
    p.set_defaults(func=play)

    p = kinds.add_parser("judge", help="an LLM judge scores an arena's answers against a rubric",
                         description="Pairwise: every pair of a round's answers, asked in both orders (A/B and "
                                     "B/A); the orders' agreement is reported. Single: a 1-10 score per criterion.")
    _common(p, default_model_ref())
    p.add_argument("--judge", required=True, help="'base' (the loaded base judges) or an OpenAI-compatible URL, "
                                                  "e.g. http://127.0.0.1:7860/v1 (the studio's own API)")
    p.add_argument("--key", default=None, help="the judge endpoint's API key (default: $STUDIO_JUDGE_KEY)")
    p.add_argument("--judge-model", default=None, help="the model the endpoint serves (default: its first)")
    p.add_argument("--rubric", default=None, help="a text file, one 'name: description' line per criterion "
                                                  "(default: helpfulness, correctness, system prompt)")
    p.add_argument("--mode", default="pairwise", choices=("pairwise", "single"))
    p.add_argument("--judge-tokens", type=int, default=96, help="the longest judge reply (the verdict comes first)")
    p.add_argument("--new-rounds", type=int, default=0,
                   help="first ask this many new prompts (from --dataset or --prompt) of --models, unvoted")
    p.add_argument("--limit", type=int, default=None, help="judge at most this many rounds not judged yet")
    p.set_defaults(func=judge)


def _common(p, default_ref: str) -> None:
    p.add_argument("--name", default="arena", help="the arena (a folder under arenas/; made on first use)")
    p.add_argument("--models", nargs="+", default=[], metavar="MODEL",
                   help="'base' and adapter names (two or more)")
    p.add_argument("--model", default=default_ref, help="the base: 'bundled', a local folder or a hub id")
    p.add_argument("--quant", default="fp32", choices=QUANT_MODES)
    p.add_argument("--dataset", default=None, help="draw prompts from this prepared dataset's eval split "
                                                   "(the leaderboard: only its votes)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt to ask (repeat for several)")
    p.add_argument("--system", default="", help="a system prompt for every answer")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print the leaderboard as JSON")


def _prompts(args, count: int):
    """The --prompt texts first, then draws from --dataset, then (a terminal) typed prompts."""
    from studio import arena

    rng = random.Random(args.seed if hasattr(args, "seed") else 0)
    for index in range(count):
        if index < len(args.prompt):
            yield args.prompt[index], arena.TYPED
        elif args.dataset:
            yield arena.draw_prompt(args.dataset, rng), args.dataset
        else:
            typed = input("prompt (empty: stop)> ").strip()
            if not typed:
                return
            yield typed, arena.TYPED


def _round(args, engine, prompt: str, dataset: str):
    from studio import arena
    from studio.inference import GenerationSettings

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    answers = arena.answers(engine, prompt, args.models, settings, args.system)
    return arena.new_round(args.name, prompt, dataset, answers, getattr(args, "seed", None))


def _show_board(args) -> None:
    from studio import arena

    board = arena.leaderboard(args.name, args.dataset)
    print(json.dumps(board, indent=2) if args.json else arena.leaderboard_text(board))


def play(args) -> int:
    from studio import arena
    from studio.inference import get_engine

    if args.leaderboard:
        _show_board(args)
        return 0
    arena.check_models(args.models)
    engine = get_engine(args.model, args.quant)
    for prompt, dataset in _prompts(args, args.rounds):
        found = _round(args, engine, prompt, dataset)
        print(f"\n=== prompt ({dataset}) ===\n{prompt}")
        for letter, text in found.hidden():
            print(f"\n--- answer {letter} ---\n{text}")
        choice = _read_vote(found.choices())
        if choice is None:
            break
        record = arena.vote(args.name, found.id, choice)
        print("revealed: " + ", ".join(f"{letter} = {m}" for letter, m in zip(arena.LETTERS, record["models"],
                                                                               strict=False))
              + f"; winner: {record['winner'] or record['vote']}")
    print()
    _show_board(args)
    return 0


def _read_vote(choices: list[str]) -> str | None:
    """A vote from the terminal: a letter, 'tie', 'bad'; 'q' (or end of input) stops."""
    while True:
        try:
            typed = input(f"vote [{'/'.join(choices)}/q]> ").strip()
        except EOFError:
            return None
        if typed.lower() in ("q", "quit"):
            return None
        if typed.upper() in choices or typed.lower() in choices:
            return typed
        print(f"type one of {', '.join(choices)} (a letter: that answer is the best), or q", file=sys.stderr)


def judge(args) -> int:
    from studio import arena
    from studio import judge as judging
    from studio.inference import get_engine

    def engine_of():
        return get_engine(args.model, args.quant)

    if args.new_rounds:
        arena.check_models(args.models)
        asked = list(_prompts(args, args.new_rounds))
        with ThreadPoolExecutor(2) as pool:  # two rounds at once: their answers decode in one batch
            list(pool.map(lambda item: _round(args, engine_of(), *item), asked))
    judge_model = judging.make_judge(args.judge, args.key or os.environ.get("STUDIO_JUDGE_KEY"), engine_of,
                                     args.judge_model, args.judge_tokens)
    records = judging.judge_arena(args.name, judge_model, judging.load_rubric(args.rubric), args.mode, args.limit,
                                  args.system, progress=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr))
    print(f"judged {len(records)} new {'pairs' if args.mode == 'pairwise' else 'answers'} with {judge_model.label}")
    if args.mode == "single":
        for row in judging.single_table(args.name, args.dataset):
            print(json.dumps(row))
        return 0
    _show_board(args)
    return 0
