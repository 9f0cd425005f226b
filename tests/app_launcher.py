"""Launch the app as `make run` does (python app.py), on a free port, in a given workspace; stop it; kill the
workers it started. One module for every test that needs a real app (tests/ is on sys.path through
tests/conftest.py, so `from app_launcher import start_app` works from any test folder)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from studio.jobs import process

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port nothing listens on now (the OS picks it): parallel test workers never share a fixed one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(workspace: Path, extra_env: dict | None = None, timeout: float = 180):
    """Start `python app.py` on `workspace`; returns (process, url) once the page answers."""
    port = free_port()
    env = dict(os.environ, STUDIO_WORKSPACE=str(workspace), STUDIO_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", **(extra_env or {}))
    log_path = workspace / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited early:\n{log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    proc.wait(10)
    raise RuntimeError(f"app did not start in {timeout} s:\n{log_path.read_text()[-3000:]}")


def stop_app(proc) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def kill_workers(ws: Path) -> None:
    """Kill every worker and task process (and its group) a run or task folder of `ws` records: stopping the
    app leaves them running by design (runs survive an app restart), but not after a test. The product's own
    check (studio.jobs.process) decides: the pid must still name the process started then (same start time
    and boot), so a pid reused by another process, maybe another test worker's, is never killed."""
    for status in [*ws.glob("runs/*/status.json"), *ws.glob("tasks/*/status.json")]:
        try:
            process.kill_group(json.loads(status.read_text()))
        except (OSError, ValueError):
            continue  # a status being rewritten or gone: nothing recorded to kill
