"""studio.policy: who may do what on a hosted studio, owners on disk, names not paths, and the API's keys
and rate limit (a burst from one key gets 429, another key is unaffected, keys never in error text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio import policy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hosted(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    for name in ("STUDIO_USERS", "STUDIO_ADMINS", "STUDIO_API_KEYS", "STUDIO_RATE_LIMIT", "STUDIO_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    policy._windows.clear()


def as_caller(actor: policy.Actor):
    return policy.set_api_caller(actor)


def test_locally_everything_is_allowed_as_before(monkeypatch, workspace):
    monkeypatch.setenv("STUDIO_HOSTED", "0")
    monkeypatch.delenv("SPACE_ID", raising=False)
    for action in ("delete_adapter", "start_training", "not-in-the-table"):
        policy.check(action)
    assert policy.actor().role == "local"
    assert policy.cap_tokens(5000) == 5000


def test_a_visitor_reads_and_chats_and_is_told_why_the_rest_is_off(hosted):
    as_caller(policy.for_user(None, "visitor:1.2.3.4"))
    assert policy.check("refresh_adapters") == policy.READ
    assert policy.check("chat_1") == policy.CHAT
    for action in ("delete_adapter", "import_adapter", "start_training", "prune", "merge", "prepare_data"):
        with pytest.raises(policy.AccessError, match="off on this hosted studio") as refused:
            policy.check(action)
        assert "STUDIO_USERS" in refused.value.fix
    with pytest.raises(policy.AccessError, match="not in this studio's permission table"):
        policy.check("something_new")  # fail closed: an endpoint nobody classed is off
    assert policy.cap_tokens(5000) == policy.max_tokens() == 512


def test_owners_see_their_own_and_published_things_and_change_only_their_own(hosted, workspace, monkeypatch):
    from studio import adapters, paths

    published = paths.adapters_dir() / "shared"
    mine = paths.adapters_dir() / "alices"
    for folder in (published, mine):
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
    as_caller(policy.for_user("alice"))
    policy.stamp(mine)
    assert json.loads((mine / policy.OWNER_FILE).read_text())["owner"] == "alice"
    assert adapters.adapter_names() == ["alices", "shared"]
    as_caller(policy.for_user("bob"))
    assert adapters.adapter_names() == ["shared"]  # alice's is not even listed
    with pytest.raises(Exception, match="no adapter named 'alices'"):
        adapters.delete_adapter("alices")
    with pytest.raises(policy.AccessError, match="studio owner's"):
        adapters.delete_adapter("shared")
    assert published.is_dir() and mine.is_dir()
    monkeypatch.setenv("STUDIO_ADMINS", "carol")
    as_caller(policy.for_user("carol"))
    assert adapters.adapter_names() == ["alices", "shared"]
    adapters.delete_adapter("alices")  # an admin may
    assert not mine.exists()


def local_engine(monkeypatch, model_dir: Path):
    """The tiny model lies outside the workspace, which a hosted studio would refuse: load it locally first."""
    from studio.inference import Engine

    monkeypatch.setenv("STUDIO_HOSTED", "0")
    engine = Engine(str(model_dir), "fp32")
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    return engine


def test_hosted_engine_takes_adapter_names_never_folders(hosted, workspace, tiny_model_dir, tmp_path, monkeypatch):
    engine = local_engine(monkeypatch, tiny_model_dir)
    as_caller(policy.for_user(None))
    with pytest.raises(policy.AccessError, match="by name, not by path"):
        engine.load_adapter(str(tmp_path))
    with pytest.raises(Exception, match="no adapter named"):
        engine._locate("elsewhere")


def test_hub_downloads_only_for_allowed_ids(hosted, monkeypatch):
    as_caller(policy.for_user("alice"))
    with pytest.raises(policy.AccessError, match="STUDIO_ALLOWED_MODELS"):
        policy.check_download("someone/huge-model")
    monkeypatch.setenv("STUDIO_ALLOWED_MODELS", "someone/huge-model, other/x")
    policy.check_download("someone/huge-model")


def test_runs_per_user_quota(hosted, monkeypatch):
    monkeypatch.setenv("STUDIO_MAX_RUNS", "1")
    as_caller(policy.for_user("alice"))
    policy.check_run_quota(["bob", None])
    with pytest.raises(policy.AccessError, match="allows 1 per user"):
        policy.check_run_quota(["alice"])


# ---------------------------------------------------------------- the API


@pytest.fixture
def api(hosted, monkeypatch, tiny_model_dir, workspace):
    from starlette.testclient import TestClient

    from studio.serving.api import Backend
    from studio.serving.server import create_app

    monkeypatch.setenv("STUDIO_API_KEYS", "alice=key-alice-123,bob=key-bob-456,plain-key-789")
    engine = local_engine(monkeypatch, tiny_model_dir)
    from studio import paths

    for name, owner in (("published", None), ("alices", "alice")):
        folder = paths.adapters_dir() / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
        if owner:
            (folder / policy.OWNER_FILE).write_text(json.dumps({"owner": owner}))
    return TestClient(create_app(Backend(lambda: engine)))


def _models(client, key: str) -> list[str]:
    return [m["id"] for m in client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]]


def test_each_key_lists_what_its_user_may_use(api):
    assert "alices" in _models(api, "key-alice-123") and "published" in _models(api, "key-alice-123")
    assert "alices" not in _models(api, "key-bob-456") and "published" in _models(api, "key-bob-456")
    assert "alices" not in _models(api, "plain-key-789")


def test_a_burst_from_one_key_gets_429_and_another_key_is_unaffected(api):
    import time

    started = time.monotonic()
    codes = [api.get("/v1/models", headers={"Authorization": "Bearer key-alice-123"}).status_code for _ in range(50)]
    elapsed = time.monotonic() - started
    assert codes.count(200) == policy.requests_per_minute() == 20
    assert codes.count(429) == 30, codes
    refused = api.get("/v1/models", headers={"Authorization": "Bearer key-alice-123"})
    assert refused.status_code == 429 and "per minute" in refused.json()["error"]["message"]
    assert "key-alice-123" not in refused.text and "alice=" not in refused.text
    assert api.get("/v1/models", headers={"Authorization": "Bearer key-bob-456"}).status_code == 200
    print(f"50 requests in {elapsed:.2f} s: {codes.count(200)} answered, {codes.count(429)} got 429")


def test_a_local_server_with_keys_is_not_rate_limited(api, monkeypatch):
    """Keys on a local `studio serve` only guard access: the per-minute quota is a hosted setting."""
    monkeypatch.setenv("STUDIO_HOSTED", "0")
    codes = [api.get("/v1/models", headers={"Authorization": "Bearer key-alice-123"}).status_code for _ in range(30)]
    assert codes == [200] * 30
    monkeypatch.setenv("STUDIO_RATE_LIMIT", "5")  # unless the owner asks for it
    codes = [api.get("/v1/models", headers={"Authorization": "Bearer key-bob-456"}).status_code for _ in range(8)]
    assert codes.count(429) == 3


def test_a_wrong_key_is_refused_without_echoing_it(api):
    answer = api.get("/v1/models", headers={"Authorization": "Bearer key-alice-12"})
    assert answer.status_code == 401 and "key-alice" not in answer.text


def test_the_ui_guard_keeps_generators_and_signatures_and_refuses_before_running(hosted):
    import inspect

    import gradio as gr

    from studio.ui.guard import checked

    ran = []

    def stream(prompt: str, request: gr.Request = None):
        ran.append(prompt)
        yield prompt

    wrapped = checked(stream, "delete_adapter")
    assert inspect.isgeneratorfunction(wrapped)  # Gradio streams it
    assert list(inspect.signature(wrapped).parameters) == ["prompt", "request"]  # gr.Request still injected
    as_caller(policy.for_user(None))
    with pytest.raises(gr.Error, match="Deleting adapters is off"):
        list(wrapped("x"))
    assert ran == []  # refused before the handler ran
    assert list(checked(stream, "chat")("hi")) == ["hi"]


def test_api_keys_name_their_users_and_plain_keys_still_work(monkeypatch):
    from studio.serving.api import key_users

    monkeypatch.setenv("STUDIO_API_KEYS", "alice=key1, bob=key2,plain,c2VjcmV0==")
    assert key_users() == {"key1": "alice", "key2": "bob", "plain": None, "c2VjcmV0==": None}
