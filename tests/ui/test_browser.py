"""The whole studio in a real browser: Debian's Chromium driven by Playwright, against the app launched
as `make run` launches it, on the bundled model. One user's afternoon, step by step, in order:

data (Hinglish sample detected, saved) -> presets (CPU preset, estimate) -> train (a short run: loss
plot and progress move; stop; resume; completes) -> chat (base and tuned side by side, streamed)
-> evaluate (perplexity base vs tuned) -> export (merged model; the adapter as a zip) -> reload.
Each step saves a screenshot in test-artifacts/browser/.

The steps share one page and run in file order; a failed step makes the later ones fail too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}
MAX_STEPS = 40  # enough steps that Stop lands mid-run even when training is fast (seq 64: ~1 s a step)
SEQ_LEN = 64  # tokens per packed row: the cpu preset's 512 x 4 take ~30 s a step (docs/images used 128; at 64 a step
# whose packed row holds only prompt tokens logs loss 0, see docs/reliability.md)
RUN = "e2e-run"
DATASET = "hinglish-e2e"
STEP_TIMEOUT_MS = 600_000  # one phase (model load + a few steps + save) on a 2-core machine shared with other jobs
LOSS_LINE = "#train-loss path[aria-roledescription='line mark']"  # vega's line, present once points exist
PROMPT = "Chai banane ka sahi tarika kya hai?"  # a question of the Hinglish sample

# Outside CI a developer without chromium may skip it; in CI (.ci/run installs chromium) it must run.
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason="chromium is not installed (.ci/run installs it)")


def _launcher():
    """start_app / stop_app from this folder's conftest (it is not importable as a package module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ui_launcher", Path(__file__).resolve().parent / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.start_app, module.stop_app


@pytest.fixture(scope="module")
def app(tmp_path_factory, bundled_dir):
    start_app, stop_app = _launcher()
    ws = tmp_path_factory.mktemp("browser-ws")
    proc, url = start_app(ws)
    yield url, ws
    stop_app(proc)


@pytest.fixture(scope="module")
def page(app):
    from playwright.sync_api import sync_playwright

    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(60_000)
        page.goto(app[0])
        page.wait_for_selector("#header")
        yield page
        browser.close()


def shot(page, name: str, selector: str | None = None) -> Path:
    """Screenshot of the page (scrolled to `selector` first, when given)."""
    if selector:
        page.locator(selector).first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)  # let plots redraw after the scroll
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def tab(page, title: str) -> None:
    page.get_by_role("tab", name=title).click()


def pick(page, combobox, value: str) -> None:
    """Choose `value` in a Gradio dropdown."""
    combobox.click()
    page.get_by_role("option", name=value, exact=True).click()


def fill(page, elem_id: str, value: str) -> None:
    """Type into a Gradio Textbox (a textarea) or Number (an input) by its elem_id."""
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(value)


def progress_state(page) -> dict:
    return page.evaluate("""() => { const el = document.querySelector('#train-progress');
        return el ? {state: el.dataset.state, step: Number(el.dataset.step)} : {}; }""")


def wait_progress(page, condition: str, timeout_ms: int = STEP_TIMEOUT_MS) -> dict:
    """Wait until the Train tab's progress element satisfies `condition` (JS over `s` = {state, step})."""
    page.wait_for_function(f"""() => {{ const el = document.querySelector('#train-progress'); if (!el) return false;
        const s = {{state: el.dataset.state, step: Number(el.dataset.step)}}; return {condition}; }}""",
                           timeout=timeout_ms)
    return progress_state(page)


def test_1_model_tab_shows_the_bundled_model(page):
    tab(page, "Model")
    assert page.get_by_label("Model", exact=True).first.input_value() == "bundled"
    pick(page, page.get_by_role("combobox", name="Quantization").first, "fp32")  # chat on CPU: fp32 is fastest
    shot(page, "01-model")


def test_2_data_tab_detects_and_prepares_the_hinglish_sample(page):
    tab(page, "Data")
    page.click("#data-sample-hinglish")
    page.wait_for_selector("#data-detected:has-text('Detected format: openai')")
    assert "106 rows read: 106 ok" in page.inner_text("#data-counts")
    assert "Chai banane ka sahi tarika" in page.inner_text("#data-preview")
    shot(page, "02-data-detected", "#data-detected")
    shot(page, "03-data-template", "#data-template")
    fill(page, "data-name", DATASET)
    page.click("#data-save")
    page.wait_for_selector("#data-save-result:has-text('Saved')", timeout=120_000)
    assert DATASET in page.inner_text("#data-save-result")
    assert page.locator("#data-dataset input").input_value() == DATASET
    shot(page, "04-data-saved", "#data-save-result")


def test_3_presets_tab_cpu_preset_and_estimate(page):
    tab(page, "Presets")
    assert page.locator("#preset-name input").input_value() == "cpu"
    page.wait_for_selector("#preset-verdict:has-text('Fits')")
    verdict = page.inner_text("#preset-verdict")
    assert "GB" in verdict and "cpu" in verdict
    page.wait_for_selector("#preset-bar canvas, #preset-bar svg")
    shot(page, "05-presets-estimate", "#preset-verdict")
    # Short rows and one row per step keep this run to seconds a step on 2 cores; the estimate follows.
    for elem_id, value in (("preset-seq", SEQ_LEN), ("preset-batch", 1)):
        before = page.inner_text("#preset-verdict")
        fill(page, elem_id, str(value))  # one at a time: an edit made while the estimate runs is not queued
        page.wait_for_function("v => document.querySelector('#preset-verdict').innerText !== v", arg=before)
    assert "Fits" in page.inner_text("#preset-verdict")


def test_4_train_start_shows_progress_and_loss_plot(page, app):
    tab(page, "Train")
    fill(page, "train-name", RUN)
    fill(page, "train-max-steps", str(MAX_STEPS))
    page.click("#train-start")
    status = wait_progress(page, "s.state === 'running' && s.step >= 2")
    assert status["step"] < MAX_STEPS, "the run finished before it could be stopped; raise MAX_STEPS"
    page.wait_for_selector(LOSS_LINE)  # a drawn line, not only the axes
    page.wait_for_selector("#train-stats:has-text('tokens/s')")
    first = progress_state(page)["step"]
    wait_progress(page, f"s.step > {first}")  # the progress updates by itself (the tab polls the run folder)
    shot(page, "06-train-running", "#train-progress")


def test_5_train_stop_and_resume_completes(page, app):
    page.click("#train-stop")
    stopped = wait_progress(page, "s.state === 'stopped'")
    assert 0 < stopped["step"] < MAX_STEPS
    assert "stopped" in page.inner_text("#train-runs")
    shot(page, "07-train-stopped", "#train-progress")
    page.click("#train-resume")
    wait_progress(page, "s.state === 'completed'")
    assert progress_state(page)["step"] == MAX_STEPS
    _, ws = app
    assert (ws / "runs" / RUN / "adapter" / "adapter_model.safetensors").is_file()
    shot(page, "08-train-completed", "#train-progress")


def test_6_chat_base_and_tuned_side_by_side(page):
    tab(page, "Chat")
    page.get_by_text("Adapters: cards, import, export, delete").click()
    page.click("#chat-refresh")
    adapter = f"run:{RUN}"
    page.wait_for_selector(f"#chat-adapters:has-text('{adapter}')")
    pick(page, page.locator("#chat-right-adapter input"), adapter)
    fill(page, "chat-prompt", PROMPT)
    page.click("#chat-send")
    # streamed: the right pane shows part of an answer while the app still says it is generating
    page.wait_for_selector("#chat-swap-ms:has-text('Generating')", timeout=STEP_TIMEOUT_MS)
    page.wait_for_selector("#chat-swap-ms:has-text('set_adapter')", timeout=STEP_TIMEOUT_MS)
    left = page.locator("#chat-left .bot").last.inner_text()
    right = page.locator("#chat-right .bot").last.inner_text()
    assert left.strip() and right.strip()
    assert PROMPT in page.inner_text("#chat-left") and PROMPT in page.inner_text("#chat-right")
    shot(page, "09-chat-compare", "#chat-left")


def test_7_evaluate_perplexity_base_vs_tuned(page, app):
    tab(page, "Evaluate")
    page.locator("button:visible", has_text="Refresh lists").click()
    pick(page, page.locator("#eval-adapters input"), f"run:{RUN}")
    page.keyboard.press("Escape")
    page.click("#eval-ppl-btn")
    page.wait_for_selector("#eval-saved:has-text('Saved')", timeout=STEP_TIMEOUT_MS)
    table = page.inner_text("#eval-ppl")
    assert "base" in table and f"run:{RUN}" in table
    _, ws = app
    saved = json.loads(sorted((ws / "runs" / RUN / "eval").glob("perplexity-*.json"))[-1].read_text())
    results = saved["results"]  # what the table shows, as saved with the run
    assert str(results["base"]["perplexity"]) in table
    assert results[f"run:{RUN}"]["perplexity"] < results["base"]["perplexity"]  # tuned fits held-out rows better
    shot(page, "10-evaluate-perplexity", "#eval-ppl")


def test_8_export_merge_into_the_base(page, app):
    tab(page, "Export")
    page.locator("button:visible", has_text="Refresh").last.click()
    pick(page, page.locator("#export-adapter input"), f"run:{RUN}")
    fill(page, "export-name", "e2e-merged")
    page.click("#export-merge-btn")
    page.wait_for_selector("#export-result:has-text('Merged model')", timeout=STEP_TIMEOUT_MS)
    _, ws = app
    assert (ws / "exports" / "e2e-merged" / "config.json").is_file()
    assert list((ws / "exports" / "e2e-merged").glob("*.safetensors"))
    shot(page, "11-export-merged", "#export-result")


def test_9_export_the_adapter_as_zip_from_the_chat_tab(page, app):
    tab(page, "Chat")
    adapter = f"run:{RUN}"
    pick(page, page.locator("#chat-picked input"), adapter)
    page.click("#chat-export")
    page.wait_for_selector("#chat-export-file :text('.zip')", timeout=120_000)
    _, ws = app
    zips = list((ws / "exports").glob("*.zip"))
    assert zips and zips[0].stat().st_size > 10_000
    shot(page, "12-chat-export-zip", "#chat-export-file")


def test_10_reload_keeps_everything(page, app):
    """A closed and reopened page loses nothing: the run, its curve and the dataset are read from disk."""
    page.reload()
    page.wait_for_selector("#header")
    tab(page, "Train")
    page.wait_for_selector(f"#train-runs:has-text('{RUN}')")  # the runs table, read from disk
    run = page.locator("#train-run input")  # the dropdown was built before the run existed: type its name
    run.fill(RUN)
    run.press("Enter")
    deadline = time.time() + 30
    while progress_state(page).get("state") != "completed" and time.time() < deadline:
        time.sleep(0.5)
    assert progress_state(page) == {"state": "completed", "step": MAX_STEPS}
    page.wait_for_selector(LOSS_LINE)
