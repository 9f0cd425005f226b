"""The arena's scores on votes whose answer is known, and its votes on disk (hidden until the vote, kept,
owner-aware when hosted)."""

from __future__ import annotations

import json
import math

import pytest

from studio import arena, policy
from studio.errors import ConfigError, DataError


def _votes(*pairs: tuple[list[str], str | None]) -> list[dict]:
    return [{"round": str(i), "models": models, "winner": winner, "vote": "x"} for i, (models, winner) in
            enumerate(pairs)]


def test_two_models_three_to_one_gives_three_to_one_odds():
    games = arena.games_of(_votes(*([(["a", "b"], "a")] * 3), (["b", "a"], "b")))
    strength = arena.bradley_terry(games, prior=0)
    assert strength["a"] / (strength["a"] + strength["b"]) == pytest.approx(0.75, abs=1e-6)
    assert arena.elo(strength["a"]) - arena.elo(strength["b"]) == pytest.approx(400 * math.log10(3), abs=1e-3)


def test_bradley_terry_fit_matches_each_models_wins():
    """The maximum-likelihood fit gives every model as many expected wins as it won (ties half)."""
    games = [("a", "b", 1.0), ("a", "b", 1.0), ("a", "b", 0.0), ("b", "c", 1.0), ("b", "c", 0.5),
             ("c", "a", 1.0), ("a", "c", 1.0), ("a", "c", 1.0), ("b", "c", 0.0), ("b", "c", 1.0)]
    p = arena.bradley_terry(games, prior=0)
    for name in "abc":
        won = sum(s if x == name else 1 - s for x, y, s in games if name in (x, y))
        expected = sum(p[x] / (p[x] + p[y]) if x == name else p[y] / (p[x] + p[y])
                       for x, y, _ in games if name in (x, y))
        assert expected == pytest.approx(won, abs=1e-6)
    assert p["a"] > p["b"] > p["c"]
    assert math.prod(p.values()) == pytest.approx(1.0)


def test_a_best_pick_beats_every_other_answer_and_a_tie_ties_every_pair():
    games = arena.games_of(_votes((["x", "y", "z"], "z"), (["x", "y", "z"], None)))
    assert ("x", "z", 0.0) in games and ("y", "z", 0.0) in games  # z beat both
    assert [g for g in games if g[2] == 0.5] == [("x", "y", 0.5), ("x", "z", 0.5), ("y", "z", 0.5)]
    assert len(games) == 5  # the pick gives no game between the two it beat
    rates = arena.win_rates(games)
    assert rates["z"] == {"games": 4, "wins": 2, "ties": 2, "losses": 0, "win_rate": 0.75}


def test_a_model_that_won_everything_stays_finite_and_the_interval_holds_the_score():
    records = _votes(*([(["a", "b"], "a")] * 6))
    strength = arena.bradley_terry(arena.games_of(records), ["a", "b"])
    assert math.isfinite(arena.elo(strength["a"])) and strength["a"] > strength["b"]
    low, high = arena.bootstrap(records, ["a", "b"], resamples=50)["a"]
    assert low <= arena.elo(strength["a"]) <= high
    assert arena.bootstrap(records, ["a", "b"], resamples=50) == arena.bootstrap(records, ["a", "b"], resamples=50)


def _round(name: str = "mine", prompt: str = "Why is the sky blue?", dataset: str = "typed"):
    answers = {arena.BASE: "(base) says", "med": "med says", "hing": "hing says"}
    return arena.new_round(name, prompt, dataset, answers, seed=1)


def test_answers_are_shuffled_and_hidden_until_the_vote(workspace):
    found = _round()
    stored = json.loads((workspace / "arenas" / "mine" / "rounds" / f"{found.id}.json").read_text())
    assert stored["vote"] is None and stored["models"] == list(found.models)  # the mapping stays on disk
    assert found.hidden() == [(letter, f"{found.models[i]} says") for i, letter in enumerate("ABC")]
    orders = {arena.new_round("mine", "q", "typed", {"m1": "1", "m2": "2", "m3": "3"}, seed=s).models
              for s in range(8)}
    assert len(orders) > 1  # shuffled: the first answer is not always the same model
    letter = "ABC"[found.models.index("med")]
    record = arena.vote("mine", found.id, letter.lower())
    assert record["winner"] == "med" and record["models"] == list(found.models)
    with pytest.raises(ConfigError, match="already voted"):
        arena.vote("mine", found.id, "tie")
    with pytest.raises(ConfigError, match="not a vote"):
        arena.vote("mine", _round().id, "D")


def test_votes_are_kept_on_disk_and_scored_per_dataset(workspace):
    for dataset, pick in (("medical", "med"), ("medical", "med"), ("typed", None)):
        found = _round(dataset=dataset)
        arena.vote("mine", found.id, "ABC"[found.models.index(pick)] if pick else "bad")
    with open(workspace / "arenas" / "mine" / "votes.jsonl", "a") as f:
        f.write('{"round": "torn')  # a crash mid-write: the line is skipped, the rest stays
    board = arena.leaderboard("mine")
    assert board["summary"]["votes"] == 3 and board["summary"]["all_bad"] == 1
    assert board["summary"]["datasets"] == ["medical", "typed"]
    assert board["rows"][0]["model"] == "med"
    medical = arena.leaderboard("mine", "medical")
    assert medical["summary"]["votes"] == 2 and medical["rows"][0]["win_rate"] == 1.0
    assert "med" in arena.leaderboard_text(board) and arena.list_arenas() == ["mine"]


def test_a_missing_arena_and_a_bad_name_say_what_to_do():
    with pytest.raises(DataError, match="no arena named 'nope'"):
        arena.leaderboard("nope")
    with pytest.raises(ConfigError, match="not allowed"):
        arena.open_arena("../escape")
    with pytest.raises(ConfigError, match="two or more models"):
        arena.check_models(["base", "(base)"])


def test_hosted_arenas_belong_to_their_maker(workspace, monkeypatch):
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    monkeypatch.setenv("STUDIO_USERS", "alice:a,bob:b")
    with policy.acting_as(policy.for_user("alice")):
        found = _round("alices")
    assert json.loads((workspace / "arenas" / "alices" / ".owner.json").read_text())["owner"] == "alice"
    with policy.acting_as(policy.for_user("bob")):
        assert arena.list_arenas() == []
        with pytest.raises(DataError):
            arena.vote("alices", found.id, "A")
    with policy.acting_as(policy.for_user("alice")):
        assert arena.vote("alices", found.id, "A")["voter"] == "alice"


def test_the_cli_prints_the_stored_leaderboard(capsys):
    from studio.cli import main

    for pick in ("med", "med", "hing"):
        found = _round()
        arena.vote("mine", found.id, "ABC"[found.models.index(pick)])
    assert main(["eval", "arena", "--name", "mine", "--leaderboard"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("med") and "3 votes in arena mine (all): 0 ties, 0 all bad." in out
    assert main(["eval", "arena", "--name", "mine", "--leaderboard", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["votes"] == 3
    assert main(["eval", "arena", "--name", "nope", "--leaderboard"]) == 2  # the error and its fix, no traceback


def test_the_judge_is_compared_with_the_votes_on_the_same_rounds():
    human = [{"round": "r1", "models": ["x", "y"], "winner": "x", "vote": "A"},
             {"round": "r2", "models": ["x", "y"], "winner": None, "vote": "tie"}]
    judged = [{"round": "r1", "a": "y", "b": "x", "verdict": "b", "orders_agree": True},  # x wins: agrees
              {"round": "r2", "a": "x", "b": "y", "verdict": "a", "orders_agree": True},  # the vote was a tie
              {"round": "r3", "a": "x", "b": "y", "verdict": "tie", "orders_agree": False},  # no vote on r3
              {"round": "r3", "a": "x", "b": "y", "verdict": None, "orders_agree": None}]  # unreadable
    found = arena.agreement(human, judged)
    assert found == {"verdicts": 4, "readable": 3, "both_orders": 3, "orders_agree": 2 / 3, "with_humans": 2,
                     "agree_with_humans": 0.5}
    assert arena.judge_games(judged) == [("y", "x", 0.0), ("x", "y", 1.0), ("x", "y", 0.5)]
