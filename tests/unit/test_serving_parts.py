"""The serving parts that need no server: the vLLM command and its adapter list, --adapters parsing,
tool-call parsing, stop-string hold-back, and the Chat tab's copyable snippet."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from studio.errors import ConfigError
from studio.serving.api import parse_tool_calls
from studio.serving.scheduler import _safe_length
from studio.serving.server import parse_adapters
from studio.serving.snippets import api_snippet
from studio.serving.vllm import launch, served_adapters, vllm_command


def _adapter(folder, r: int = 16):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 32, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def test_vllm_command_enables_lora_with_every_adapter_and_a_rank_vllm_accepts(tmp_path):
    adapters = {"medical": _adapter(tmp_path / "med", r=16), "hinglish": _adapter(tmp_path / "hi", r=48)}
    cmd = vllm_command("/models/smollm2", "bundled", adapters, "0.0.0.0", 8001, "bf16")
    assert cmd[:4] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    assert cmd[cmd.index("--served-model-name") + 1] == "bundled" and cmd[cmd.index("--port") + 1] == "8001"
    assert "--enable-lora" in cmd and cmd[cmd.index("--max-lora-rank") + 1] == "64"  # 48 rounds up to 64
    modules = cmd[cmd.index("--lora-modules") + 1:]
    assert modules == [f"medical={tmp_path / 'med'}", f"hinglish={tmp_path / 'hi'}"]
    assert "--enable-lora" not in vllm_command("/m", "m", {}, "127.0.0.1", 8000)  # no adapters: base only


def test_vllm_serves_the_registry_adapters_of_this_base_and_skips_others(tmp_path, workspace):
    from studio import paths

    for name, base in (("mine", "bundled"), ("theirs", "meta-llama/Llama-3-8B")):  # as training writes them
        folder = _adapter(paths.adapters_dir() / name)
        (folder / "card.json").write_text(json.dumps({"base_model": base}))
    chosen, skipped = served_adapters("bundled", "/cache/smollm2", {"extra": tmp_path / "a"})
    assert set(chosen) == {"mine", "extra"} and skipped == ["theirs (trained on meta-llama/Llama-3-8B, not bundled)"]


def test_vllm_dry_run_prints_the_command_and_a_cpu_run_says_what_to_do(tmp_path, workspace, capsys, bundled_dir):
    from studio.errors import StudioError

    assert launch("bundled", {"a": _adapter(tmp_path / "a")}, "127.0.0.1", 8000, "fp32", dry_run=True) == 0
    printed = shlex.split(capsys.readouterr().out.strip())
    assert printed[printed.index("--lora-modules") + 1] == f"a={tmp_path / 'a'}"
    assert printed[printed.index("--dtype") + 1] == "bfloat16"
    with pytest.raises(StudioError, match="studio serve"):  # no vllm (or no CUDA) here
        launch("bundled", {}, "127.0.0.1", 8000, "fp32")


def test_adapters_argument_takes_registry_names_and_name_equals_folder(tmp_path):
    assert parse_adapters(["run:1", f"med={tmp_path}"]) == {"run:1": None, "med": tmp_path}
    with pytest.raises(ConfigError, match="NAME=FOLDER"):
        parse_adapters(["med="])


def test_tool_calls_are_parsed_out_of_the_answer():
    text = 'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Let me check." and len(calls) == 1
    assert calls[0]["type"] == "function" and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert parse_tool_calls("no tools here") == ("no tools here", [])
    assert parse_tool_calls("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", [])


def test_streaming_holds_back_what_may_start_a_stop_string():
    assert _safe_length("Hello wor", ("world",)) == len("Hello ")  # "wor" may become "world"
    assert _safe_length("Hello there", ("world",)) == len("Hello there")
    assert _safe_length("caf\ufffd", ()) == 3  # half a character waits for the rest


def test_chat_tab_snippet_names_the_adapter_and_the_key_only_when_keys_are_set(monkeypatch):
    monkeypatch.delenv("STUDIO_API_KEYS", raising=False)
    open_api = api_snippet("run:abc", "bundled", "http://host:7860/v1")
    assert '"model": "run:abc"' in open_api and "curl http://host:7860/v1/chat/completions" in open_api
    assert 'base_url="http://host:7860/v1"' in open_api and "Authorization" not in open_api
    assert '"model": "bundled"' in api_snippet("(base)", "bundled")
    monkeypatch.setenv("STUDIO_API_KEYS", "secret-1")
    keyed = api_snippet("run:abc", "bundled")
    assert "Bearer $STUDIO_API_KEY" in keyed and "secret-1" not in keyed  # never prints the key itself


def test_tools_for_a_template_without_tool_support_use_the_fallback_training_used(tiny_model_dir):
    from transformers import AutoTokenizer

    from studio.data.render import supports_tools
    from studio.inference import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # SmolLM2's template: no tool support
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {}}}]
    text = render_prompt(tokenizer, [{"role": "user", "content": "Weather in Paris?"}], tools)
    assert not supports_tools(tokenizer) and "<tools>" in text and "get_weather" in text
    assert text.rstrip().endswith("assistant")  # ready for the answer


@pytest.mark.parametrize(("choice", "turn"), [
    ({"mode": "custom", "text": "You are a careful nurse."}, {"role": "system", "content": "You are a careful nurse."}),
    ({"mode": "none", "text": ""}, {"role": "system", "content": ""}),
    ({"mode": "keep", "text": ""}, None)])
def test_an_adapter_starts_conversations_the_way_its_dataset_did(workspace, choice, turn):
    from studio import paths
    from studio.inference import adapter_system_turn, with_adapter_system

    folder = _adapter(paths.adapters_dir() / "nurse")
    card = {"base_model": "bundled", "dataset": "triage", "system_prompt": choice}
    (folder / "card.json").write_text(json.dumps(card))
    assert adapter_system_turn("nurse") == turn
    assert adapter_system_turn("no-such-adapter") is None and adapter_system_turn(None) is None
    # Chat, the CLI and the API all start the conversation with it, unless it brings its own system turn
    asked = [{"role": "user", "content": "Hi"}]
    assert with_adapter_system(asked, "nurse") == ([turn, *asked] if turn else asked)
    own = [{"role": "system", "content": "Be brief."}, *asked]
    assert with_adapter_system(own, "nurse") == own and with_adapter_system(asked, None) == asked


def test_an_adapters_system_prompt_comes_from_its_card_whatever_the_dataset_folder_says(workspace):
    """Re-preparing or deleting the dataset, or importing an adapter whose dataset name exists here, never
    changes how the adapter is prompted: training stored the choice in the card."""
    from studio import paths
    from studio.inference import adapter_system_turn

    nurse = {"mode": "custom", "text": "You are a careful nurse."}
    folder = _adapter(paths.adapters_dir() / "nurse")
    (folder / "card.json").write_text(json.dumps({"base_model": "bundled", "dataset": "triage", "system_prompt": nurse,
                                                  "dataset_sha256": "trained-on"}))
    (paths.datasets_dir() / "triage").mkdir(parents=True)
    (paths.datasets_dir() / "triage" / "meta.json").write_text(json.dumps(
        {"system_prompt": {"mode": "custom", "text": "You are a pirate."}, "source_sha256": "another-file"}))
    assert adapter_system_turn("nurse") == {"role": "system", "content": "You are a careful nurse."}
    # a card written before training stored the choice: its dataset's meta only while it is the trained one
    (folder / "card.json").write_text(json.dumps({"base_model": "bundled", "dataset": "triage",
                                                  "dataset_sha256": "trained-on"}))
    assert adapter_system_turn("nurse") is None
    (paths.datasets_dir() / "triage" / "meta.json").write_text(json.dumps(
        {"system_prompt": nurse, "source_sha256": "trained-on"}))
    assert adapter_system_turn("nurse") == {"role": "system", "content": "You are a careful nurse."}


def test_an_answer_sent_whole_wakes_the_server_loop_once_not_at_every_token():
    import asyncio

    from studio.serving.api import AsyncSink

    async def deliver(pieces: bool) -> list:
        sink = AsyncSink(asyncio.get_running_loop(), pieces)
        for item in [("r", "text", "Hel"), ("r", "text", "lo"), ("r", "done", "stop")]:
            sink.put(item)  # as the scheduler thread does
        await asyncio.sleep(0)
        return [sink.queue.get_nowait() for _ in range(sink.queue.qsize())]

    assert [kind for _, kind, _ in asyncio.run(deliver(pieces=True))] == ["text", "text", "done"]  # streamed
    assert asyncio.run(deliver(pieces=False)) == [("r", "done", "stop")]  # whole: the request keeps its text
