"""The Chat tab through gradio_client, as users drive it: compare streams both panes, single-pane chat keeps
the conversation, two users at once get their own adapters, import / export / delete, and bad input."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_adapters_training import PHRASE_A, PHRASE_B, PROMPTS, train_phrase_adapter  # noqa: E402

GEN = [16, 0, 0.95, 50, 1.0, 0]  # max new tokens, temperature (greedy), top-p, top-k, repetition penalty, seed


@pytest.fixture(scope="module")
def setup(app_url, app_workspace, tiny_model_dir, tmp_path_factory):
    """The app, and two phrase adapters for the tiny model in its workspace (as if imported)."""
    from gradio_client import Client

    root = tmp_path_factory.mktemp("ui-adapters")
    for name, phrase, seed in (("ui-phrase-a", PHRASE_A, 1), ("ui-phrase-b", PHRASE_B, 2)):
        trained = train_phrase_adapter(tiny_model_dir, root / name, phrase, seed=seed)
        shutil.copytree(trained, app_workspace / "adapters" / name)
    return Client(app_url, verbose=False), str(tiny_model_dir), root


def _compare_args(ref, left, right, prompt=PROMPTS[0]):
    return [ref, "fp32", left, right, prompt, "", *GEN, [], []]


def _last_text(history: list[dict]) -> str:
    content = history[-1]["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content


def test_compare_streams_both_panes_before_the_final_answer(setup):
    client, ref, _ = setup
    job = client.submit(*_compare_args(ref, "(base)", "ui-phrase-a"), api_name="/compare")
    updates = list(job)  # every streamed update, in order
    left, right, timing, prompt_box = job.result()
    assert _last_text(right).startswith(PHRASE_A) and PHRASE_A not in _last_text(left)
    assert right[-2]["role"] == "user" and _last_text(right[:-1]) == PROMPTS[0]
    partial_rights = [_last_text(u[1]) for u in updates[:-1] if u[1] and u[1][-1]["role"] == "assistant"]
    assert any(0 < len(t) < len(_last_text(right)) for t in partial_rights)  # partial text came first
    assert "Both answers in one pass" in timing and "base in fp32 (your choice)" in timing and prompt_box == ""
    assert "set_adapter" not in timing  # plain words, no internals


def test_chat_mode_keeps_the_conversation_and_shows_swap_ms(setup):
    client, ref, _ = setup
    history, timing, _ = client.predict(ref, "fp32", "ui-phrase-b", PROMPTS[1], "", *GEN, [], api_name="/chat")
    assert _last_text(history).startswith(PHRASE_B) and "Answered by ui-phrase-b" in timing
    assert ("switching to the adapter took" in timing and " ms" in timing) or "already active" in timing
    history, _, _ = client.predict(ref, "fp32", "(base)", PROMPTS[2], "", *GEN, history, api_name="/chat")
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert PHRASE_B not in _last_text(history)  # the base answered the second turn


def test_two_users_at_once_each_get_their_own_adapter(setup):
    from gradio_client import Client

    client, ref, _ = setup
    other = Client(client.src, verbose=False)
    results: dict[str, str] = {}

    def ask(who, c, adapter):
        for _ in range(2):
            history, _, _ = c.predict(ref, "fp32", adapter, PROMPTS[0], "", *GEN, [], api_name="/chat")
            results.setdefault(who, "")
            assert _last_text(history).startswith(PHRASE_A if adapter == "ui-phrase-a" else PHRASE_B), who
            results[who] += "ok"

    threads = [threading.Thread(target=ask, args=("one", client, "ui-phrase-a")),
               threading.Thread(target=ask, args=("two", other, "ui-phrase-b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert results == {"one": "okok", "two": "okok"}


def test_import_export_and_delete_with_confirmation(setup, app_workspace):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, ref, root = setup
    files = [handle_file(str(root / "ui-phrase-a" / f)) for f in ("adapter_config.json", "adapter_model.safetensors")]
    status = client.predict(files, "ui-uploaded", api_name="/import_adapter")
    assert "Imported **ui-uploaded**" in status and (app_workspace / "adapters" / "ui-uploaded").is_dir()
    table, picked, *_ = client.predict(api_name="/refresh_adapters")
    assert "ui-uploaded" in [row[0] for row in table["data"]]
    zipped = client.predict("ui-uploaded", api_name="/export_adapter")
    assert Path(zipped).suffix == ".zip" and (app_workspace / "exports" / "ui-uploaded.zip").is_file()
    with pytest.raises(AppError, match="Tick 'Yes, delete this adapter' first"):
        client.predict("ui-uploaded", False, api_name="/delete_adapter")
    assert (app_workspace / "adapters" / "ui-uploaded").is_dir()  # asked first, nothing deleted
    assert client.predict("ui-uploaded", True, api_name="/delete_adapter") == "Deleted **ui-uploaded**."
    assert "ui-uploaded" not in [row[0] for row in client.predict(api_name="/refresh_adapters")[0]["data"]]
    assert not (app_workspace / "adapters" / "ui-uploaded").exists()


@pytest.mark.parametrize(("args", "message"), [
    ({"prompt": "   "}, "The prompt is empty"),
    ({"max_new": 5000}, "5000 is greater than maximum value 1024"),  # the slider refuses it first
    ({"right": "no-such-adapter"}, "no adapter named 'no-such-adapter'"),
])
def test_bad_input_gets_a_clear_message(setup, args, message):
    from gradio_client.exceptions import AppError

    client, ref, _ = setup
    call = _compare_args(ref, "(base)", args.get("right", "ui-phrase-a"), args.get("prompt", PROMPTS[0]))
    call[6] = args.get("max_new", call[6])
    with pytest.raises(AppError, match=message):
        client.predict(*call, api_name="/compare")
    _, right, *_ = client.predict(*_compare_args(ref, "(base)", "ui-phrase-a"), api_name="/compare")
    assert _last_text(right).startswith(PHRASE_A)  # the loaded model still answers as before


def test_adapter_for_another_base_is_refused_in_the_ui(setup, other_tiny_model_dir):
    from gradio_client.exceptions import AppError

    client, _, _ = setup
    with pytest.raises(AppError, match="does not fit the loaded base"):
        client.predict(str(other_tiny_model_dir), "fp32", "(base)", "ui-phrase-a", PROMPTS[0], "", *GEN, [], [],
                       api_name="/compare")


def test_example_prompts_come_from_the_samples():
    from studio.ui.tabs.chat import example_prompts

    assets = Path(__file__).resolve().parents[2] / "assets"
    prompts = example_prompts()
    if (assets / "medical_demo.jsonl").is_file():
        first = json.loads((assets / "medical_demo.jsonl").read_text().splitlines()[0])
        assert first["Question"] in prompts
    assert all(p.strip() for p in prompts)


def test_the_base_loads_as_the_adapter_was_trained_unless_chosen(workspace):
    from studio.ui.shared import default_quant
    from studio.ui.tabs.chat import AS_TRAINED, precision_for

    folder = workspace / "adapters" / "trained-in-bf16"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "card.json").write_text(json.dumps({"quant": "bf16"}))
    assert precision_for(AS_TRAINED, "trained-in-bf16", "(base)") == ("bf16", "base in bf16, as trained-in-bf16 "
                                                                             "was trained")
    assert precision_for("8bit", "trained-in-bf16")[0] == "8bit"  # the user's choice wins
    assert precision_for(AS_TRAINED, "(base)")[0] == default_quant()  # no card: the machine's default (fp32 on a CPU)
