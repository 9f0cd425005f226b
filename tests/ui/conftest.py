"""Launch the app as `make run` does (python app.py), on a free port, in a temporary workspace."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(workspace: Path, extra_env: dict | None = None, timeout: float = 120):
    port = _free_port()
    env = dict(os.environ, STUDIO_WORKSPACE=str(workspace), STUDIO_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", **(extra_env or {}))
    log = open(workspace / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited early:\n{(workspace / 'app.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"app did not start in {timeout} s:\n{(workspace / 'app.log').read_text()[-3000:]}")


def stop_app(proc) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def kill_workers(ws: Path) -> None:
    """Kill every worker and task process (and its group) whose pid a run or task folder of `ws` names:
    stopping the app leaves them running by design (runs survive an app restart), but not after a test."""
    for status in [*ws.glob("runs/*/status.json"), *ws.glob("tasks/*/status.json")]:
        pid = json.loads(status.read_text()).get("pid")
        if not pid:
            continue
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="session")
def app_workspace(tmp_path_factory, bundled_dir) -> Path:
    return tmp_path_factory.mktemp("app-ws")


@pytest.fixture(scope="session")
def app_url(app_workspace):
    """One app for the UI tests of a session (the workspace is shared between them)."""
    proc, url = start_app(app_workspace)
    yield url
    stop_app(proc)
    kill_workers(app_workspace)
