"""The Arena tab in a real browser (Debian's Chromium driven by Playwright), against the app started as
`make run` starts it: the base and two adapters answer six prompts; each time the answers show under
letters with no model name until the vote, the vote reveals the names; the leaderboard counts the six
votes, and it and the votes on disk are still there after the app restarts.

The base is a tiny random-weight model (answers are noise, which is all a blind vote needs); the two
adapters are random LoRAs with names that noise cannot spell. docs/images/arena.png is this test's shot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from app_launcher import start_app, stop_app

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOT = ROOT / "test-artifacts" / "browser" / "arena.png"
ADAPTERS = ("alpha-medical-lora", "beta-hinglish-lora")
NAMES = ("(base)", *ADAPTERS)
PROMPTS = ("What helps a sore throat?", "Chai kaise banate hain?", "Name three prime numbers.",
           "How do I boil an egg?", "Kal mausam kaisa rahega?", "Why is the sky blue?")
VOTES = ("A is best", "B is best", "Tie (equally good)", "A is best", "All bad", "C is best")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason="chromium is not installed (.ci/run installs it)")


def _random_lora(base: Path, out: Path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)


def _open(browser, url: str, tiny: Path):
    """A page on the Arena tab, the Model tab's model set to the tiny base (as a user types it)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_load_state("load")
    page.wait_for_selector("#current-state")
    page.wait_for_timeout(2000)  # the page-load events write the shared state into the boxes: type after them
    page.locator("#model-ref textarea").fill(str(tiny))
    page.locator("#model-ref textarea").press("Tab")
    page.wait_for_function(f"document.querySelector('#current-state').dataset.model === {json.dumps(str(tiny))}")
    page.wait_for_timeout(3000)  # the new model's template line loads its tokenizer: a person reads it first
    page.get_by_role("tab", name="Arena").click()
    page.wait_for_selector("#arena-prompt textarea")
    return page


def _play(page, prompt: str, vote: str, played: int) -> None:
    page.locator("#arena-prompt textarea").fill(prompt)
    page.locator("#arena-ask").click()
    page.wait_for_function(f"document.querySelectorAll('#arena-answers .arena-answer').length === 3 && "
                           f"document.querySelector('#arena-answer-list').dataset.round !== "
                           f"{json.dumps(page.evaluate('window.__lastRound || null'))}")
    page.evaluate("window.__lastRound = document.querySelector('#arena-answer-list').dataset.round")
    shown = page.locator("#arena-answers").inner_text() + page.locator("#arena-reveal").inner_text()
    assert not [n for n in NAMES if n in shown], f"a model name shows before the vote: {shown[:300]}"
    assert page.locator("#arena-revealed").count() == 0
    page.locator("#arena-vote label", has_text=vote).click()
    page.locator("#arena-vote-btn").click()
    page.wait_for_selector("#arena-revealed")
    revealed = page.locator("#arena-revealed").inner_text()
    assert all(n in revealed for n in NAMES), revealed
    page.wait_for_function(f"document.querySelector('#arena-summary').innerText.includes('{played} vote')")


def _board(page) -> str:
    """The leaderboard's text (every row, every column)."""
    return page.locator("#arena-board").inner_text()


def test_vote_through_six_prompts_and_the_board_survives_a_restart(tmp_path, tiny_model_dir):
    from playwright.sync_api import sync_playwright

    tiny = tiny_model_dir
    ws = tmp_path / "ws"
    for seed, name in enumerate(ADAPTERS, 1):
        _random_lora(tiny, ws / "adapters" / name, seed)
    proc, url = start_app(ws)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = _open(browser, url, tiny)
            assert sorted(page.locator("#arena-models input:checked").evaluate_all(
                "els => els.map(e => e.parentElement.innerText.trim())")) == sorted(NAMES)
            page.locator("#arena-max-new input[type=number]").fill("24")
            page.locator("#arena-max-new input[type=number]").press("Tab")
            for played, (prompt, vote) in enumerate(zip(PROMPTS, VOTES, strict=True), 1):
                _play(page, prompt, vote, played)
            before = _board(page)
            assert all(n in before for n in NAMES), before
            SHOT.parent.mkdir(parents=True, exist_ok=True)
            page.locator("#arena-answers").scroll_into_view_if_needed()
            page.screenshot(path=str(SHOT), full_page=True)
            browser.close()
    finally:
        stop_app(proc)
    votes = (ws / "arenas" / "arena" / "votes.jsonl").read_text().splitlines()
    assert len(votes) == 6 and {json.loads(v)["prompt"] for v in votes} == set(PROMPTS)

    proc, url = start_app(ws)  # a restart: the leaderboard comes back from disk
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = _open(browser, url, tiny)
            page.wait_for_function("document.querySelector('#arena-summary').innerText.includes('6 votes')")
            assert _board(page) == before
            browser.close()
    finally:
        stop_app(proc)
    assert (ws / "arenas" / "arena" / "votes.jsonl").read_text().splitlines() == votes
