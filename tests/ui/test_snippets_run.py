"""The Chat tab's copyable API snippets, executed as a user would paste them: the Python one with the official
`openai` client and the curl one with `curl`, against a running app, with API keys on the server and without."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from app_launcher import kill_workers, start_app, stop_app


def _blocks(markdown: str) -> dict[str, str]:
    return dict(re.findall(r"```(\w+)\n(.*?)\n```", markdown, re.S))


def _served(workspace: Path, model: Path, keys: str | None):
    """An app on `workspace` whose /v1 serves `model` (the Model tab's Load button, through gradio_client)."""
    from gradio_client import Client

    proc, url = start_app(workspace, {"STUDIO_API_KEYS": keys} if keys else None)
    Client(url, verbose=False).predict(str(model), "fp32", api_name="/load_model")
    return proc, url


def _run_snippets(markdown: str, env: dict) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    code = _blocks(markdown)
    python = subprocess.run([sys.executable, "-c", code["python"]], env=env, capture_output=True, text=True,
                            timeout=300)
    curl = subprocess.run(["bash", "-c", code["bash"]], env=env, capture_output=True, text=True, timeout=300)
    return python, curl


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
@pytest.mark.parametrize("keys", [None, "secret-one,secret-two"])
def test_every_snippet_runs_as_pasted(keys, tiny_model_dir, tmp_path, monkeypatch):
    from studio.serving.snippets import api_snippet

    if keys:
        monkeypatch.setenv("STUDIO_API_KEYS", keys)
    else:
        monkeypatch.delenv("STUDIO_API_KEYS", raising=False)
    proc, url = _served(tmp_path, tiny_model_dir, keys)
    try:
        snippet = api_snippet(None, str(tiny_model_dir), f"{url.rstrip('/')}/v1")
        env = {k: v for k, v in os.environ.items() if k not in ("STUDIO_API_KEYS", "STUDIO_API_KEY")}
        if keys:
            env["STUDIO_API_KEY"] = "secret-two"  # what the user exports before pasting
        python, curl = _run_snippets(snippet, env)
        assert python.returncode == 0, python.stderr[-2000:]
        assert python.stdout.strip(), "the Python snippet printed no answer"
        assert curl.returncode == 0, curl.stderr[-2000:]
        reply = json.loads(curl.stdout)
        assert reply["choices"][0]["message"]["content"].strip() and reply["model"] == tiny_model_dir.name
        if keys:  # the key matters: without it both snippets are refused
            env.pop("STUDIO_API_KEY")
            env["STUDIO_API_KEY"] = "wrong"
            python, curl = _run_snippets(snippet, env)
            assert python.returncode != 0 and "401" in python.stderr + python.stdout
            assert "error" in json.loads(curl.stdout)
    finally:
        stop_app(proc)
        kill_workers(tmp_path)
