"""An LLM judge for the arena: a rubric scored by a judge model, pairwise (position-swapped) or single-answer.

The judge is any OpenAI-compatible endpoint (a URL and an optional key: a local server, the studio's own
`/v1`, a hosted API), asked through the official `openai` client, or `base`: the loaded base itself.

Pairwise grading asks each pair of a round's answers twice, once in each order (A then B, B then A), since
judges favour a position; the verdict counts when both orders agree, a disagreement is a tie (as in
MT-Bench), and the share of pairs whose two orders agree is reported as the judge's consistency. Single
grading scores each answer 1-10 on every criterion of the rubric. Verdicts go to the arena's
`judge.jsonl`, beside the human votes, and the arena leaderboard shows both.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from studio import arena, policy
from studio.errors import ConfigError

DEFAULT_RUBRIC = """\
# One criterion a line, "name: what a good answer does". Lines starting with # are ignored.
helpfulness: answers what the user asked, directly and with useful detail, without padding
correctness: its facts, reasoning, numbers and code are right; it does not invent things
system prompt: follows the system prompt (role, language, format, length) where one was given
"""
JUDGE_TOKENS = 96  # the verdict comes first, one sentence of reasons after it
PARALLEL = 4  # pairs judged at once (each asks both orders at once): 8 requests, the scheduler's default batch
VERDICT_RE = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
# a reply that starts with the bare verdict: "B.", "Answer A is better", "Verdict: tie" (never "A fever is...")
LEAD_RE = re.compile(r"^\W*(?:verdict\s*:?\s*)?(?:answer\s+)?(A|B|C|tie)\s*(?:$|[.,:;!)\]]|is\b)", re.IGNORECASE)
SCORE_RE = r"{name}\s*[:=-]\s*\[*\s*(\d{{1,2}})(?:\s*/\s*10)?"


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str


def parse_rubric(text: str) -> list[Criterion]:
    """Criteria from "name: description" lines (comments and blank lines skipped)."""
    found = []
    for number, line in enumerate((text or "").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, description = line.partition(":")
        if not sep or not name.strip() or not description.strip():
            raise ConfigError(f"Rubric line {number} ({line[:60]!r}) is not 'name: description'.",
                              "Write one criterion a line, e.g. 'correctness: its facts are right'.")
        found.append(Criterion(name.strip(), description.strip()))
    if not found:
        raise ConfigError("The rubric has no criteria.", "Write at least one 'name: description' line, or "
                          "leave the rubric at its default (helpfulness, correctness, system prompt).")
    return found


def load_rubric(path: str | None) -> str:
    """The rubric text of a file (None: the default)."""
    if not path:
        return DEFAULT_RUBRIC
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read the rubric file {path}: {exc.strerror}.",
                          "Give a text file with one 'name: description' line per criterion.") from None


# ---------------------------------------------------------------- the judge model


@dataclass
class Judge:
    """A judge model: `ask(messages) -> text`, and a label for the records (never the key)."""
    label: str
    ask: Callable[[list[dict]], str]


def endpoint_judge(url: str, key: str | None = None, model: str | None = None, max_tokens: int = JUDGE_TOKENS,
                   timeout: float = 300.0) -> Judge:
    """A judge behind an OpenAI-compatible URL (e.g. http://127.0.0.1:7860/v1); the model defaults to the
    first one the endpoint lists (the studio's /v1 lists its base first)."""
    import openai

    if not re.match(r"^https?://", url or ""):
        raise ConfigError(f"The judge {url!r} is neither 'base' nor an http(s) URL.",
                          "Give 'base' (the loaded base judges) or an OpenAI-compatible URL such as "
                          "http://127.0.0.1:7860/v1.")
    client = openai.OpenAI(base_url=url.rstrip("/"), api_key=key or "no-key", timeout=timeout, max_retries=1)
    try:
        model = model or client.models.list().data[0].id
    except (openai.OpenAIError, IndexError) as exc:
        raise ConfigError(f"The judge endpoint {url} did not list a model ({type(exc).__name__}: {exc}).",
                          "Check the URL (it ends in /v1), that the server runs, and the key; or name the "
                          "model with --judge-model.") from None

    def ask(messages: list[dict]) -> str:
        try:
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                   temperature=0)
        except openai.OpenAIError as exc:
            raise ConfigError(f"The judge {url} ({model}) failed: {exc}.",
                              "Check the endpoint, the key and the model name.") from None
        return reply.choices[0].message.content or ""
    return Judge(f"{url.rstrip('/')} ({model})", ask)


def base_judge(engine, max_tokens: int = JUDGE_TOKENS) -> Judge:
    """The loaded base (no adapter) as the judge, greedy."""
    from studio.inference import GenerationSettings

    settings = GenerationSettings(max_new_tokens=max_tokens, temperature=0.0, repetition_penalty=1.0)
    return Judge(f"base ({engine.ref})", lambda messages: "".join(engine.answer(messages, settings, None)))


def make_judge(spec: str, key: str | None = None, engine_of: Callable[[], object] | None = None,
               model: str | None = None, max_tokens: int = JUDGE_TOKENS) -> Judge:
    """'base' (the loaded base judges; `engine_of` gives it) or an OpenAI-compatible URL."""
    spec = (spec or "").strip()
    if spec.lower() == "base":
        if engine_of is None:
            raise ConfigError("No base is loaded to judge with.", "Load a model first, or give a judge URL.")
        return base_judge(engine_of(), max_tokens)
    if policy.hosted() and policy.actor().role not in ("local", "system", "admin"):
        raise policy.AccessError("This hosted studio judges with its own base only (a URL would make the "
                                 "server call out to any address).", "Use the judge 'base'.")
    return endpoint_judge(spec, key, model, max_tokens)


# ---------------------------------------------------------------- prompts and parsing


def _criteria_lines(rubric: list[Criterion]) -> str:
    return "\n".join(f"- {c.name}: {c.description}" for c in rubric)


def _context(question: str, system: str) -> str:
    head = f"[System prompt the assistant was given]\n{system}\n\n" if system else ""
    return f"{head}[User question]\n{question}"


# One worked example before the real task: small judges copy the verdict format from it.
EXAMPLE = [{"role": "user", "content": "Compare two assistant answers to the user's question.\n\n[User question]\n"
            "What is 2 + 3?\n\n[Answer A]\n5\n\n[Answer B]\n6\n\nWhich answer is better overall? Start your reply "
            "with the verdict: [[A]], [[B]] or [[C]] for a tie."},
           {"role": "assistant", "content": "[[A]] A is correct: 2 + 3 is 5."}]


def pairwise_messages(question: str, first: str, second: str, rubric: list[Criterion], system: str = "") -> list[dict]:
    """The judge's prompt for one order of a pair."""
    task = (f"Compare two assistant answers to the user's question using this rubric:\n{_criteria_lines(rubric)}"
            f"\n\n{_context(question, system)}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\n"
            "Which answer is better overall? Start your reply with the verdict: [[A]] if A is better, [[B]] if B "
            "is better, [[C]] for a tie. Then give one sentence of reasons.")
    return [{"role": "system", "content": "You are an impartial judge of answers. Ignore the order in which the "
             "answers appear and their length; judge only by the rubric."}, *EXAMPLE,
            {"role": "user", "content": task}]


def single_messages(question: str, answer: str, rubric: list[Criterion], system: str = "") -> list[dict]:
    lines = "\n".join(f"{c.name}: [[score]]" for c in rubric)
    task = (f"Grade an assistant's answer from 1 (bad) to 10 (excellent) on each criterion:\n"
            f"{_criteria_lines(rubric)}\n\n{_context(question, system)}\n\n[Answer]\n{answer}\n\n"
            f"Reply with exactly these lines, a whole number in place of score:\n{lines}")
    return [{"role": "system", "content": "You are a strict, impartial grader."}, {"role": "user", "content": task}]


def parse_pairwise(text: str) -> str | None:
    """'A', 'B' or 'tie' from a judge's reply ([[A]], [[B]], [[C]] first; a reply starting 'A'/'Answer B'
    next); None when it names none."""
    match = VERDICT_RE.search(text or "") or LEAD_RE.match((text or "").strip())
    if not match:
        return None
    found = match.group(1).upper()
    return arena.TIE if found in ("C", "TIE") else found


def parse_scores(text: str, rubric: list[Criterion]) -> dict[str, int | None]:
    """Each criterion's 1-10 score from a single-grading reply (None where it is missing or out of range)."""
    scores: dict[str, int | None] = {}
    for criterion in rubric:
        match = re.search(SCORE_RE.format(name=re.escape(criterion.name)), text or "", re.IGNORECASE)
        value = int(match.group(1)) if match else None
        scores[criterion.name] = value if value is not None and 1 <= value <= 10 else None
    return scores


def combine(first: str | None, second: str | None) -> tuple[str | None, bool | None]:
    """Both orders' verdicts (already mapped to 'a', 'b', 'tie' of the pair) -> (verdict, orders agree).

    Agreeing orders give their verdict; disagreeing ones a tie; one unreadable order gives the other's."""
    if first is not None and second is not None:
        return (first, True) if first == second else (arena.TIE, False)
    return first if first is not None else second, None


# ---------------------------------------------------------------- judging an arena's rounds


def _mapped(letter: str | None, swapped: bool) -> str | None:
    """A verdict about positions A/B -> about the pair (a, b); in the swapped order A is b."""
    if letter in (None, arena.TIE):
        return letter
    return {"A": "b", "B": "a"}[letter] if swapped else {"A": "a", "B": "b"}[letter]


def judge_pair(judge: Judge, question: str, a: tuple[str, str], b: tuple[str, str], rubric: list[Criterion],
               system: str = "") -> dict:
    """Both orders of one pair ((model, answer) each): the two verdicts, the combined one and the raw replies."""
    with ThreadPoolExecutor(2) as pool:  # both orders at once: a batching server decodes them together
        raw = list(pool.map(judge.ask, [pairwise_messages(question, a[1], b[1], rubric, system),
                                        pairwise_messages(question, b[1], a[1], rubric, system)]))
    first, second = _mapped(parse_pairwise(raw[0]), False), _mapped(parse_pairwise(raw[1]), True)
    verdict, orders_agree = combine(first, second)
    return {"mode": "pairwise", "a": a[0], "b": b[0], "first": first, "second": second, "verdict": verdict,
            "orders_agree": orders_agree, "raw": raw}


def judge_single(judge: Judge, question: str, model: str, answer: str, rubric: list[Criterion],
                 system: str = "") -> dict:
    raw = judge.ask(single_messages(question, answer, rubric, system))
    scores = parse_scores(raw, rubric)
    known = [v for v in scores.values() if v is not None]
    return {"mode": "single", "model": model, "scores": scores,
            "mean": round(sum(known) / len(known), 2) if known else None, "raw": [raw]}


def _judged(name: str, label: str) -> set[tuple]:
    """(round, mode, models) already judged by this judge: judging again adds only what is new."""
    done = set()
    for r in arena.read_lines(arena.folder_of(name), "judge.jsonl"):
        if r.get("judge") == label:
            done.add((r["round"], r["mode"], r.get("a") or r.get("model"), r.get("b")))
    return done


def _jobs(name: str, label: str, mode: str, limit: int | None) -> list[tuple[dict, tuple]]:
    """(round, models to judge) for the rounds not judged yet, oldest first, at most `limit` rounds."""
    done, jobs, rounds = _judged(name, label), [], 0
    for found in arena.voted_rounds(name):
        pairs = list(zip(found["models"], found["answers"], strict=True))
        units = itertools.combinations(pairs, 2) if mode == "pairwise" else ((p,) for p in pairs)
        fresh = [u for u in units if (found["id"], mode, u[0][0], u[1][0] if len(u) > 1 else None) not in done]
        if fresh and (limit is None or rounds < limit):
            rounds += 1
            jobs += [(found, u) for u in fresh]
    return jobs


def judge_arena(name: str, judge: Judge, rubric_text: str = DEFAULT_RUBRIC, mode: str = "pairwise",
                limit: int | None = None, system: str = "", progress=None) -> list[dict]:
    """Judge the arena's rounds not judged yet by this judge (pairwise: every pair of each round, both
    orders); appends to the arena's judge.jsonl and returns the new records."""
    if mode not in ("pairwise", "single"):
        raise ConfigError(f"Unknown judging mode {mode!r}.", "Use 'pairwise' or 'single'.")
    rubric = parse_rubric(rubric_text)
    folder = arena.folder_of(name)
    policy.require_owner(folder, "judge in", f"the arena {name}")
    jobs = _jobs(name, judge.label, mode, limit)

    def run(job: tuple[dict, tuple]) -> dict:
        found, unit = job
        result = (judge_pair(judge, found["prompt"], unit[0], unit[1], rubric, system) if mode == "pairwise"
                  else judge_single(judge, found["prompt"], unit[0][0], unit[0][1], rubric, system))
        record = {"round": found["id"], "dataset": found["dataset"], "judge": judge.label,
                  "rubric": [c.name for c in rubric], "time": time.strftime("%Y-%m-%d %H:%M:%S"), **result}
        arena.append_line(folder, "judge.jsonl", record)  # kept as it comes: a stopped run loses nothing judged
        return record

    records = []
    with ThreadPoolExecutor(PARALLEL) as pool:  # a few pairs at once, so a batching judge decodes them together
        for done, record in enumerate(pool.map(run, jobs), 1):
            records.append(record)
            if progress is not None:
                progress(done / len(jobs), f"judged {done} of {len(jobs)}")
    return records


def single_table(name: str, dataset: str | None = None) -> list[dict]:
    """Per model: the mean of the judge's single-answer scores per criterion and overall."""
    table: dict[str, dict[str, list[int]]] = {}
    for r in arena.judge_records(name, dataset, mode="single"):
        row = table.setdefault(r["model"], {})
        for criterion, value in (r.get("scores") or {}).items():
            if value is not None:
                row.setdefault(criterion, []).append(value)
    rows = []
    for model, scores in sorted(table.items()):
        every = [v for values in scores.values() for v in values]
        rows.append({"model": model, **{k: round(sum(v) / len(v), 2) for k, v in scores.items()},
                     "overall": round(sum(every) / len(every), 2) if every else None})
    return rows
