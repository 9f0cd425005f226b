"""One app for the UI tests of a session (tests/app_launcher.py launches it as `make run` does, on a free port,
in a temporary workspace). Under pytest-xdist each worker process has its own session, so its own app."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_launcher import kill_workers, start_app, stop_app


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
