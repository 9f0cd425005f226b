"""Write the team-written samples with verifiable numeric answers, for GRPO and KTO on a CPU:

- assets/arithmetic_demo.jsonl: 160 short word problems (sums, differences, products, unit conversions) in
  OpenAI `messages` form; the assistant turn is the worked answer, ending with the number. GRPO uses the
  user turn as the prompt and the number as the reference its `numeric_match` reward compares against.
- assets/arithmetic_heldout.jsonl: 48 more problems of the same kinds with other numbers, for Evaluate's
  held-out mean reward and exact-match accuracy (never trained on: the numbers are drawn apart).
- assets/kto_demo.jsonl: 160 unpaired answers in TRL's `prompt` / `completion` / `label` form: a correct
  worked answer (label true) or a fluent one with a wrong result (label false), for KTO.

The sentence templates below were written by the Tuning Studio team; the script only fills in numbers from a
seeded generator, so the files are reproducible: `python scripts/make_arithmetic_demo.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
INSTRUCTION = " Answer with the number at the end."

# (question template, worked-answer template, how the answer follows from a and b)
KINDS = [
    ("Sam has {a} apples and buys {b} more. How many apples does Sam have now?",
     "{a} + {b} = {c}. Sam has {c} apples.", lambda a, b: a + b),
    ("A jar holds {a} marbles. Mia adds {b} marbles. How many marbles are in the jar?",
     "{a} + {b} = {c}. There are {c} marbles.", lambda a, b: a + b),
    ("A shelf has {a} books. {b} books are taken away. How many books are left?",
     "{a} - {b} = {c}. {c} books are left.", lambda a, b: a - b),
    ("Leo had {a} stickers and gave {b} to a friend. How many stickers does Leo have left?",
     "{a} - {b} = {c}. Leo has {c} stickers left.", lambda a, b: a - b),
    ("There are {a} rows with {b} chairs in each row. How many chairs are there?",
     "{a} x {b} = {c}. There are {c} chairs.", lambda a, b: a * b),
    ("One box holds {b} eggs. How many eggs are in {a} boxes?",
     "{a} x {b} = {c}. There are {c} eggs.", lambda a, b: a * b),
    ("How many centimeters are in {a} meters and {b} centimeters?",
     "1 meter is 100 centimeters, so {a} x 100 + {b} = {c}. The answer is {c}.", lambda a, b: a * 100 + b),
    ("How many minutes are in {a} hours and {b} minutes?",
     "1 hour is 60 minutes, so {a} x 60 + {b} = {c}. The answer is {c}.", lambda a, b: a * 60 + b),
]


def problem(rng: random.Random, kind: int) -> tuple[str, str, int]:
    question, answer, solve = KINDS[kind]
    a, b = rng.randint(2, 12), rng.randint(1, 9)
    if " - " in answer:
        a = a + b  # differences stay positive
    c = solve(a, b)
    return question.format(a=a, b=b) + INSTRUCTION, answer.format(a=a, b=b, c=c), c


def problems(rng: random.Random, n: int, seen: set[str]) -> list[tuple[str, str, int]]:
    out = []
    while len(out) < n:
        q, a, c = problem(rng, len(out) % len(KINDS))
        if q not in seen:
            seen.add(q)
            out.append((q, a, c))
    return out


def wrong(answer: str, c: int, rng: random.Random) -> str:
    """The worked answer with a wrong result in both places (off by a small amount)."""
    bad = c + rng.choice([-2, -1, 1, 2, 10])
    head, _, tail = answer.rpartition(str(c))
    return head.replace(f"= {c}", f"= {bad}") + str(bad) + tail


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng, seen = random.Random(2026), set()
    train, heldout = problems(rng, 160, seen), problems(rng, 48, seen)
    as_messages = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                   for q, a, _ in train]
    write(ASSETS / "arithmetic_demo.jsonl", as_messages)
    write(ASSETS / "arithmetic_heldout.jsonl", [{"messages": [{"role": "user", "content": q},
                                                              {"role": "assistant", "content": a}]}
                                                for q, a, _ in heldout])
    good = [(i // len(KINDS)) % 2 == 0 for i in range(len(train))]  # every kind both good and bad
    kto = [{"prompt": q, "completion": a if good[i] else wrong(a, c, rng), "label": good[i]}
           for i, (q, a, c) in enumerate(train)]
    write(ASSETS / "kto_demo.jsonl", kto)


if __name__ == "__main__":
    main()
