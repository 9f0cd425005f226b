"""Screenshot of the Experiments tab on a workspace holding a sweep: the sweep's ranking and its runs' curves
overlaid. Starts the app (python app.py) on a free port in that workspace, drives headless Chromium, stops the app.

    .venv/bin/python scripts/experiments_screenshot.py WORKSPACE SWEEP OUT.png
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def start_app(workspace: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, STUDIO_WORKSPACE=str(workspace), STUDIO_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False")
    log = open(workspace / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(480):
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the app did not start: see {workspace / 'app.log'}")


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
    proc, url = start_app(workspace)
    try:
        shoot(url, sweep, out)
    finally:
        proc.terminate()
        proc.wait(20)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
