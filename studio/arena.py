"""A blind arena: the base and any number of adapters answer the same prompt; a person picks the best
without seeing which model wrote what; a Bradley-Terry leaderboard with bootstrap intervals, per dataset.

On disk, one folder per arena under the workspace (`arenas/<name>/`, made by its user's hand, so it is
kept like a run or a dataset; hosted, it carries the maker's `.owner.json`):

    arena.json     name, created
    rounds/<id>.json  one round: prompt, dataset, the models in the order shown, their answers, the vote
    votes.jsonl    one line per vote (append-only): round, dataset, models in order shown, vote, winner
    judge.jsonl    one line per judge verdict (studio.judge)

A round is written before its answers are shown, so the mapping from "Answer A" to a model never leaves
the server until the vote; `vote()` reveals it. All answers come from one engine (one loaded base,
adapters hot-swapped in the same decoding batch).

Scores: each vote becomes pairwise games (the chosen answer beats every other one; "tie" and "all bad"
are ties between every pair). Bradley-Terry strengths are fitted by Hunter's MM algorithm (ties count
half a win to each side), shown on the Elo scale (1000 + 400 log10 strength); intervals are percentiles
of the same fit on votes resampled with replacement.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from studio import paths, policy
from studio.errors import ConfigError, DataError
from studio.util import read_json, write_json_atomic

BASE = "(base)"  # the base without an adapter: the label studio.inference and the Chat tab use
TYPED = "typed"  # the dataset of a prompt the user typed
TIE, BAD = "tie", "bad"  # the votes besides a letter: every answer as good, every answer bad
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PRIOR_TIES = 0.5  # virtual tied games between every pair: keeps a model that won (or lost) all finite
BOOTSTRAP = 200  # resamples for the 95% intervals: enough for two significant digits on a few hundred votes
_lock = threading.Lock()  # one vote at a time per process: a round is voted once
_append_lock = threading.Lock()  # one writer at a time per process for the JSONL files


# ---------------------------------------------------------------- folders


def arenas_dir() -> Path:
    path = paths.workspace() / "arenas"
    path.mkdir(parents=True, exist_ok=True)
    return path


def folder_of(name: str) -> Path:
    """The folder of an existing arena the caller may see (hosted: a published one or their own)."""
    paths.check_name(name, "arena name")
    folder = arenas_dir() / name
    if not (folder / "arena.json").is_file() or not policy.can_see(folder):
        known = ", ".join(list_arenas()) or "none yet"
        raise DataError(f"There is no arena named {name!r} (arenas: {known}).",
                        "Start it first: pick models and get answers in the Arena tab, or "
                        "`python -m studio eval arena --name NAME`.")
    return folder


def open_arena(name: str) -> Path:
    """The arena's folder, made (and, hosted, stamped with its maker) when it does not exist yet; refused
    where the caller may not play in it (hosted: another user's arena)."""
    paths.check_name(name, "arena name")
    folder = arenas_dir() / name
    if not (folder / "arena.json").is_file():
        if policy.actor().role == "visitor":
            raise policy.AccessError("Votes are saved in an arena of your own, which a visitor of this public "
                                     "demo does not have.", "Log in (the owner sets STUDIO_USERS) to play.")
        (folder / "rounds").mkdir(parents=True, exist_ok=True)
        policy.stamp(folder)
        write_json_atomic(folder / "arena.json", {"name": name, "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    folder = folder_of(name)
    policy.require_owner(folder, "play in", f"the arena {name}")
    return folder


def list_arenas() -> list[str]:
    """Arena names the caller may see, the most recently voted first."""
    found = [f for f in arenas_dir().iterdir() if (f / "arena.json").is_file() and policy.can_see(f)]
    return [f.name for f in sorted(found, key=_last_change, reverse=True)]


def _last_change(folder: Path) -> float:
    votes = folder / "votes.jsonl"
    return (votes if votes.is_file() else folder / "arena.json").stat().st_mtime


# ---------------------------------------------------------------- rounds and votes


@dataclass(frozen=True)
class Round:
    """One prompt and its answers in the order shown (models hidden behind letters until the vote)."""
    id: str
    prompt: str
    dataset: str
    models: tuple[str, ...]
    answers: tuple[str, ...]

    def hidden(self) -> list[tuple[str, str]]:
        """(letter, answer) pairs: what a voter sees."""
        return list(zip(LETTERS, self.answers, strict=False))

    def choices(self) -> list[str]:
        return [*LETTERS[:len(self.answers)], TIE, BAD]


def check_models(models: list[str]) -> list[str]:
    """Two or more distinct models, the base written BASE."""
    names = [BASE if m in ("base", BASE, "", None) else m for m in models or []]
    unique = list(dict.fromkeys(names))
    if len(unique) < 2:
        raise ConfigError(f"An arena needs two or more models to compare; got {unique or 'none'}.",
                          f"Pick the base and at least one adapter (or two adapters); '{BASE}' is the base.")
    for name in unique:
        if name != BASE:
            policy.require_name(name)
    return unique


def new_round(name: str, prompt: str, dataset: str, answers: dict[str, str], seed: int | None = None) -> Round:
    """Save a round with its answers shuffled (models hidden) and return it."""
    folder = open_arena(name)
    models = list(answers)
    played = len(list((folder / "rounds").glob("*.json")))  # a fixed seed still shuffles each round its own way
    random.Random(None if seed is None else f"{seed}:{played}").shuffle(models)
    found = Round(uuid.uuid4().hex[:12], prompt, dataset or TYPED, tuple(models), tuple(answers[m] for m in models))
    write_json_atomic(folder / "rounds" / f"{found.id}.json", {**found.__dict__, "vote": None,
                                                               "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    return found


def load_round(name: str, round_id: str) -> dict:
    folder = folder_of(name)
    data = read_json(folder / "rounds" / f"{paths.check_name(str(round_id), 'round id')}.json")
    if not isinstance(data, dict):
        raise DataError(f"The arena {name!r} has no round {round_id!r}.", "Get new answers and vote on those.")
    return data


def vote(name: str, round_id: str, choice: str, voter: str | None = None) -> dict:
    """Record a vote (a letter, 'tie' or 'bad') on a round; returns the vote with the models revealed."""
    folder = folder_of(name)
    policy.require_owner(folder, "vote in", f"the arena {name}")
    with _lock:
        found = load_round(name, round_id)
        allowed = Round(found["id"], found["prompt"], found["dataset"], tuple(found["models"]),
                        tuple(found["answers"])).choices()
        choice = (choice or "").strip()
        choice = choice.upper() if len(choice) == 1 else choice.lower()
        if choice not in allowed:
            raise ConfigError(f"{choice!r} is not a vote for this round.",
                              f"Vote one of {', '.join(allowed)} (a letter: that answer is the best).")
        if found.get("vote"):
            raise ConfigError(f"This round was already voted ({found['vote']}).", "Get new answers for the next vote.")
        winner = found["models"][LETTERS.index(choice)] if len(choice) == 1 else None
        record = {"round": found["id"], "time": time.strftime("%Y-%m-%d %H:%M:%S"), "dataset": found["dataset"],
                  "prompt": found["prompt"], "models": found["models"], "vote": choice, "winner": winner,
                  "voter": voter or policy.actor().user}
        write_json_atomic(folder / "rounds" / f"{found['id']}.json", {**found, "vote": choice})
        append_line(folder, "votes.jsonl", record)
    return record


def append_line(folder: Path, file: str, record: dict) -> None:
    """Append one record to a JSONL file of the arena (votes.jsonl, judge.jsonl); never rewrites it."""
    with _append_lock, open(folder / file, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_lines(folder: Path, file: str) -> list[dict]:
    """The records of a JSONL file of the arena (a torn last line, from a crash, is skipped)."""
    path = folder / file
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def votes(name: str, dataset: str | None = None) -> list[dict]:
    found = read_lines(folder_of(name), "votes.jsonl")
    return [v for v in found if dataset in (None, "", "all") or v.get("dataset") == dataset]


def voted_rounds(name: str) -> list[dict]:
    """Every round of the arena with its answers (for the judge), oldest first."""
    folder = folder_of(name)
    rounds = [read_json(p) for p in (folder / "rounds").glob("*.json")]
    return sorted([r for r in rounds if isinstance(r, dict)], key=lambda r: str(r.get("created")))


# ---------------------------------------------------------------- answers from one engine


def answers(engine, prompt: str, models: list[str], settings, system: str = "") -> dict[str, str]:
    """Every model's answer to `prompt`, decoded together in the engine's batch (adapters hot-swapped)."""
    from studio.inference import check_messages, encode_chat, sampling_of, with_adapter_system

    settings.validate()
    messages = ([{"role": "system", "content": system}] if system and system.strip() else []) + [
        {"role": "user", "content": prompt or ""}]
    check_messages(messages)
    names = check_models(models)
    adapters = [None if m == BASE else m for m in names]
    prompts = [(encode_chat(engine.tokenizer, with_adapter_system(messages, a))[0].tolist(), a) for a in adapters]
    requests = engine.submit_many(prompts, sampling_of(settings))
    return {m: "".join(r.stream()).strip() for m, r in zip(names, requests, strict=True)}


def draw_prompt(dataset: str, rng: random.Random | None = None) -> str:
    """A user question from the eval split of a prepared dataset (its first user turn)."""
    from studio.evaluation import messages_of, split_rows

    rows = split_rows(dataset, "eval")
    order = list(range(len(rows)))
    (rng or random.Random()).shuffle(order)
    for index in order:
        users = [m["content"] for m in messages_of(rows[index]) if m.get("role") == "user"]
        if users and str(users[0]).strip():
            return str(users[0])
    raise DataError(f"The eval split of {dataset!r} has no user question to ask.",
                    "Pick a chat dataset (with user turns), or type a prompt.")


# ---------------------------------------------------------------- scores


def games_of(records: list[dict]) -> list[tuple[str, str, float]]:
    """Pairwise games (i, j, score of i: 1 win, 0.5 tie, 0 loss) from votes."""
    games = []
    for record in records:
        winner = record.get("winner")
        for a, b in itertools.combinations(record["models"], 2):
            score = 0.5 if winner is None else (1.0 if winner == a else 0.0 if winner == b else None)
            if score is not None:
                games.append((a, b, score))
    return games


def bradley_terry(games: list[tuple[str, str, float]], models: list[str] | None = None,
                  prior: float = PRIOR_TIES, iterations: int = 500) -> dict[str, float]:
    """Bradley-Terry strengths (geometric mean 1) by Hunter's MM algorithm; ties count half a win each.

    `prior` adds that many tied games between every pair, so a model that won every game stays finite."""
    names = sorted(set(models or []) | {m for g in games for m in g[:2]})
    wins = dict.fromkeys(names, 0.0)
    pairs: dict[tuple[str, str], float] = {}
    for a, b, score in games:
        wins[a] += score
        wins[b] += 1.0 - score
        pairs[(a, b)] = pairs.get((a, b), 0.0) + 1.0
    for a, b in itertools.combinations(names, 2):
        wins[a] += prior / 2
        wins[b] += prior / 2
        pairs[(a, b)] = pairs.get((a, b), 0.0) + prior
    return _mm(names, wins, pairs, iterations)


def _mm(names: list[str], wins: dict[str, float], pairs: dict[tuple[str, str], float],
        iterations: int) -> dict[str, float]:
    strength = dict.fromkeys(names, 1.0)
    for _ in range(iterations):
        fresh = {}
        for name in names:
            denominator = sum(n / (strength[a] + strength[b]) for (a, b), n in pairs.items() if name in (a, b))
            fresh[name] = wins[name] / denominator if denominator and wins[name] > 0 else 1e-9
        scale = math.exp(sum(math.log(v) for v in fresh.values()) / len(fresh))
        fresh = {k: v / scale for k, v in fresh.items()}
        done = max(abs(fresh[k] - strength[k]) for k in names) < 1e-10
        strength = fresh
        if done:
            break
    return strength


def elo(strength: float) -> float:
    """A strength on the Elo scale: 1000 + 400 log10(strength) (so 400 points = 10:1 odds)."""
    return 1000.0 + 400.0 * math.log10(strength)


def bootstrap(records: list[dict], models: list[str], resamples: int = BOOTSTRAP,
              seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% intervals of each model's Elo-scale score: the fit on votes resampled with replacement."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(resamples if records else 0):
        drawn = [records[rng.randrange(len(records))] for _ in records]
        fitted = bradley_terry(games_of(drawn), models, iterations=200)
        for m in models:
            samples[m].append(elo(fitted[m]))
    return {m: (_percentile(v, 0.025), _percentile(v, 0.975)) if v else (math.nan, math.nan)
            for m, v in samples.items()}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def win_rates(games: list[tuple[str, str, float]]) -> dict[str, dict]:
    """Per model: games, wins, ties, losses and the win rate (ties count half)."""
    table: dict[str, dict] = {}
    for a, b, score in games:
        for name, mine in ((a, score), (b, 1.0 - score)):
            row = table.setdefault(name, {"games": 0, "wins": 0, "ties": 0, "losses": 0, "points": 0.0})
            row["games"] += 1
            row["points"] += mine
            row["wins" if mine == 1.0 else "ties" if mine == 0.5 else "losses"] += 1
    for row in table.values():
        row["win_rate"] = row.pop("points") / row["games"]
    return table


# ---------------------------------------------------------------- the leaderboard


def judge_records(name: str, dataset: str | None = None, mode: str = "pairwise") -> list[dict]:
    """The judge's verdicts on this arena's rounds (written by studio.judge)."""
    found = read_lines(folder_of(name), "judge.jsonl")
    return [r for r in found if r.get("mode") == mode and (dataset in (None, "", "all") or r.get("dataset") == dataset)]


def judge_games(records: list[dict]) -> list[tuple[str, str, float]]:
    """Pairwise games from the judge's verdicts (an answer it could not read is no game)."""
    scores = {"a": 1.0, "b": 0.0, TIE: 0.5}
    return [(r["a"], r["b"], scores[r["verdict"]]) for r in records if r.get("verdict") in scores]


def _human_pairs(records: list[dict]) -> dict[tuple[str, str, str], float]:
    """(round, a, b) -> the human's score of a against b, both orders."""
    pairs = {}
    for record in records:
        for a, b, score in games_of([record]):
            pairs[(record["round"], a, b)] = score
            pairs[(record["round"], b, a)] = 1.0 - score
    return pairs


def agreement(human: list[dict], judged: list[dict]) -> dict:
    """How often the judge's two orders agreed, and how often the judge agreed with the human votes."""
    readable = [r for r in judged if r.get("verdict") is not None]
    orders = [r["orders_agree"] for r in judged if r.get("orders_agree") is not None]
    pairs = _human_pairs(human)
    scores = {"a": 1.0, "b": 0.0, TIE: 0.5}
    shared = [(pairs[(r["round"], r["a"], r["b"])], scores[r["verdict"]]) for r in readable
              if (r["round"], r["a"], r["b"]) in pairs]
    return {"verdicts": len(judged), "readable": len(readable), "both_orders": len(orders),
            "orders_agree": sum(orders) / len(orders) if orders else None,
            "with_humans": len(shared),
            "agree_with_humans": sum(h == j for h, j in shared) / len(shared) if shared else None}


def leaderboard(name: str, dataset: str | None = None) -> dict:
    """Rows (best first) of human Bradley-Terry scores with 95% intervals and win rates, the judge's beside
    them, and a summary of the votes and of the judge's consistency."""
    human = votes(name, dataset)
    judged = judge_records(name, dataset)
    games, machine = games_of(human), judge_games(judged)
    models = sorted({m for g in games + machine for m in g[:2]})
    strength = bradley_terry(games, models) if games else {}
    intervals = bootstrap(human, models)
    rates, judge_rates = win_rates(games), win_rates(machine)
    judge_strength = bradley_terry(machine, models) if machine else {}
    rows = []
    for m in models:
        low, high = intervals[m]
        rows.append({"model": m, "score": _round(elo(strength[m])) if m in strength else None,
                     "ci_low": _round(low), "ci_high": _round(high),
                     "win_rate": _round(rates.get(m, {}).get("win_rate"), 3),
                     "games": rates.get(m, {}).get("games", 0), "wins": rates.get(m, {}).get("wins", 0),
                     "ties": rates.get(m, {}).get("ties", 0),
                     "judge_score": _round(elo(judge_strength[m])) if m in judge_strength else None,
                     "judge_win_rate": _round(judge_rates.get(m, {}).get("win_rate"), 3)})
    rows.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0), -(r["judge_score"] or 0)))
    summary = {"arena": name, "dataset": dataset or "all", "votes": len(human),
               "all_bad": sum(v["vote"] == BAD for v in human), "ties": sum(v["vote"] == TIE for v in human),
               "datasets": sorted({v.get("dataset", TYPED) for v in votes(name)}), **agreement(human, judged)}
    return {"rows": rows, "summary": summary}


def _round(value, digits: int = 1):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, digits)


def leaderboard_text(board: dict) -> str:
    """The leaderboard as a fixed-width table plus a line or two of summary (the CLI, the docs)."""
    s = board["summary"]
    head = f"{'model':28} {'score':>7} {'95% CI':>15} {'win rate':>8} {'games':>5} {'judge':>7} {'judge win':>9}"
    lines = [head]
    for r in board["rows"]:
        ci = "-" if r["ci_low"] is None else f"{r['ci_low']:.0f}..{r['ci_high']:.0f}"
        lines.append(f"{r['model'][:28]:28} {_cell(r['score'], 0):>7} {ci:>15} {_cell(r['win_rate'], 2):>8} "
                     f"{r['games']:>5} {_cell(r['judge_score'], 0):>7} {_cell(r['judge_win_rate'], 2):>9}")
    lines.append(summary_line(s))
    return "\n".join(lines)


def _cell(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summary_line(s: dict) -> str:
    words = [f"{_count(s['votes'], 'vote')} in arena {s['arena']} ({s['dataset']}): {_count(s['ties'], 'tie')}, "
             f"{s['all_bad']} all bad"]
    if s["verdicts"]:
        orders = "-" if s["orders_agree"] is None else f"{s['orders_agree']:.0%}"
        humans = "-" if s["agree_with_humans"] is None else f"{s['agree_with_humans']:.0%} of {s['with_humans']}"
        words.append(f"judge: {s['verdicts']} pairwise verdicts ({s['readable']} readable); both orders agree "
                     f"{orders} of {s['both_orders']}; agrees with the votes {humans}")
    return "; ".join(words) + "."
