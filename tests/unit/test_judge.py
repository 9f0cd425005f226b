"""The LLM judge: its rubric, how it reads verdicts, the position swap, and a real judge run against the
studio's own OpenAI-compatible server (a tiny model under uvicorn, asked through the `openai` client)."""

from __future__ import annotations

import pytest

from studio import arena, judge
from studio.errors import ConfigError


def test_the_default_rubric_has_the_three_criteria_and_a_bad_line_says_how_to_write_one():
    names = [c.name for c in judge.parse_rubric(judge.DEFAULT_RUBRIC)]
    assert names == ["helpfulness", "correctness", "system prompt"]
    with pytest.raises(ConfigError, match="line 2") as err:
        judge.parse_rubric("tone: friendly\njust words")
    assert "one criterion a line" in err.value.fix
    with pytest.raises(ConfigError, match="no criteria"):
        judge.parse_rubric("# only a comment\n")


@pytest.mark.parametrize(("reply", "verdict"), [
    ("[[A]] A explains the cause.", "A"), ("The better one is [[B]].", "B"), ("[[C]] both fine", "tie"),
    ("[[tie]]", "tie"), ("B. It is shorter", "B"), ("Answer A is better", "A"), ("Verdict: b", "B"),
    ("Both answers are poor and I cannot choose.", None), ("", None), ("Assistant", None),
    ("A fever is a rise in body temperature.", None), ("B vitamins help.", None),
])
def test_verdicts_are_read_from_the_judges_reply(reply, verdict):
    assert judge.parse_pairwise(reply) == verdict


def test_scores_are_read_per_criterion_and_out_of_range_is_missing():
    rubric = judge.parse_rubric(judge.DEFAULT_RUBRIC)
    reply = "helpfulness: [[8]]\ncorrectness: 11\nsystem prompt = 6/10"
    assert judge.parse_scores(reply, rubric) == {"helpfulness": 8, "correctness": None, "system prompt": 6}


def test_the_swapped_order_is_mapped_back_and_disagreeing_orders_tie():
    assert judge._mapped("A", swapped=True) == "b" and judge._mapped("B", swapped=True) == "a"
    assert judge.combine("a", "a") == ("a", True)
    assert judge.combine("a", "b") == (arena.TIE, False)  # position bias: the first answer won both times
    assert judge.combine(None, "b") == ("b", None) and judge.combine(None, None) == (None, None)


@pytest.fixture
def served(tiny_model_dir, workspace):
    """The tiny model and a random adapter served by the studio's own /v1 routes; two rounds in an arena."""
    from integration.serving_helpers import ThreadServer, random_lora

    from studio.inference import GenerationSettings, get_engine

    random_lora(tiny_model_dir, workspace / "adapters" / "lora-one", seed=1)
    engine = get_engine(str(tiny_model_dir), "fp32")
    for prompt in ("Why is the sky blue?", "Name a prime number."):
        answers = arena.answers(engine, prompt, ["base", "lora-one"], GenerationSettings(max_new_tokens=4))
        arena.new_round("judged", prompt, arena.TYPED, answers, seed=0)
    server = ThreadServer(engine, {})
    yield server, engine
    server.stop()


def test_the_studios_own_api_judges_both_orders_of_every_pair(served):
    server, engine = served
    chosen = judge.make_judge(server.url, max_tokens=6)  # the verdict comes first
    assert chosen.label.endswith(f"({engine.ref.rsplit('/', 1)[-1]})")  # the endpoint's first model: the base
    records = judge.judge_arena("judged", chosen, judge.DEFAULT_RUBRIC, "pairwise")
    assert len(records) == 2  # one pair (base, lora-one) per round
    for record in records:
        assert {record["a"], record["b"]} == {arena.BASE, "lora-one"} and len(record["raw"]) == 2
        assert all(isinstance(text, str) for text in record["raw"])  # the model's own replies, kept
        expected = judge.combine(judge._mapped(judge.parse_pairwise(record["raw"][0]), False),
                                 judge._mapped(judge.parse_pairwise(record["raw"][1]), True))
        assert (record["verdict"], record["orders_agree"]) == expected
    assert judge.judge_arena("judged", chosen) == []  # judged rounds are not judged again
    summary = arena.leaderboard("judged")["summary"]
    assert summary["verdicts"] == 2 and summary["votes"] == 0


def test_the_loaded_base_grades_single_answers(served):
    _, engine = served
    chosen = judge.make_judge("base", engine_of=lambda: engine, max_tokens=6)
    records = judge.judge_arena("judged", chosen, "clarity: easy to read", mode="single", limit=1)
    assert [r["model"] for r in records] and len(records) == 2  # both answers of the first round
    assert all(set(r["scores"]) == {"clarity"} for r in records)


def test_a_judge_url_that_answers_nothing_says_what_to_check():
    with pytest.raises(ConfigError, match="did not list a model") as err:
        judge.make_judge("http://127.0.0.1:9/v1")
    assert "/v1" in err.value.fix
    with pytest.raises(ConfigError, match="neither 'base' nor"):
        judge.make_judge("my-judge")


def test_playing_in_a_terminal_reads_votes_and_reveals_names(served, monkeypatch, capsys):
    import io

    from studio.cli import main

    _, engine = served
    monkeypatch.setattr("sys.stdin", io.StringIO("Z\nB\ntie\n"))  # a wrong key first: asked again
    code = main(["eval", "arena", "--name", "cli", "--model", engine.ref, "--models", "base", "lora-one",
                 "--prompt", "Hi", "--prompt", "Bye", "--rounds", "2", "--max-new-tokens", "3", "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "--- answer A ---" in out and "--- answer B ---" in out
    assert out.count("revealed: A = ") == 2 and "2 votes in arena cli (all): 1 tie, 0 all bad." in out
    assert [v["vote"] for v in arena.votes("cli")] == ["B", "tie"]
