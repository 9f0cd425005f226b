"""Screenshot of the Experiments tab on a workspace holding a sweep: the sweep's ranking and its runs' curves
overlaid. Starts the app (python app.py) on a free port in that workspace, drives headless Chromium, stops the app.

    .venv/bin/python scripts/experiments_screenshot.py WORKSPACE SWEEP OUT.png
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _launcher():
    """tests/ui/conftest.py's start_app / stop_app: the app started as `make run` does, on a free port."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ui_launcher", ROOT / "tests" / "ui" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shoot(url: str, sweep: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="load")
        page.wait_for_selector("#current-state", timeout=120_000)
        page.get_by_role("tab", name="Experiments").click()
        page.wait_for_selector("#exp-sweep-compare", timeout=60_000)
        page.wait_for_selector(f"#exp-sweep-note:has-text('{sweep}')", timeout=60_000)
        page.locator("#exp-sweep-compare").click()
        page.wait_for_selector("#exp-plot svg .mark-line path", timeout=120_000)
        page.wait_for_timeout(1500)  # the tables land after the plot
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    workspace, sweep, out = Path(sys.argv[1]).resolve(), sys.argv[2], Path(sys.argv[3]).resolve()
    launcher = _launcher()
    proc, url = launcher.start_app(workspace, timeout=300)
    try:
        shoot(url, sweep, out)
    finally:
        launcher.stop_app(proc)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
