"""Ollama Modelfiles keep the model's own template: rendered the way Ollama renders it (tests/unit/ollama_like.py),
the Go template writes the very text the Jinja chat template writes, default system prompt and tool blocks
included, for a Qwen2.5 template with tools, the bundled SmolLM2 template and the studio's family formats."""

from __future__ import annotations

from pathlib import Path

import pytest
from ollama_like import chat_values, parse_modelfile, render

from studio import modelfile, templates

QWEN25 = (Path(__file__).resolve().parents[1] / "data" / "qwen2.5-instruct.chat_template.jinja").read_text()
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}}, "required": ["city"]}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
PLAIN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "What is 2+2?"}]
SYSTEM = [{"role": "system", "content": "Answer in French."}, *PLAIN]
TOOL_TURNS = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": "", "tool_calls": [CALL]},
              {"role": "tool", "name": "get_weather", "content": "{\"temp\": 21}"}]


@pytest.fixture
def tokenizer(bundled_dir):
    from studio.models import load_tokenizer

    return load_tokenizer(str(bundled_dir))


def with_template(tokenizer, template: str):
    tokenizer.chat_template = template
    return tokenizer


def jinja(tokenizer, messages, tools=None) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, tools=tools)


def ollama(tokenizer, messages, tools=None) -> str:
    """What Ollama would send the model for this chat request, from the Modelfile the studio writes."""
    parsed = parse_modelfile(modelfile.modelfile_text("./model.gguf", tokenizer))
    commands = dict(parsed)
    return render(commands["template"], chat_values(messages, tools, commands.get("system")))


def test_qwen25_modelfile_keeps_default_system_prompt_and_tool_blocks(tokenizer):
    tok = with_template(tokenizer, QWEN25)
    text = modelfile.modelfile_text("./qwen.gguf", tok, adapter="./adapter.gguf")
    parsed = parse_modelfile(text)
    assert parsed[:2] == [("from", "./qwen.gguf"), ("adapter", "./adapter.gguf")]
    commands = dict(parsed)
    assert commands["system"] == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    for part in (".Tools", ".ToolCalls", '.Role "tool"', "{{ .Function.Arguments }}", "<tool_response>"):
        assert part in commands["template"]
    assert ("parameter", 'stop "<|im_end|>"') in parsed
    assert "{{-" not in commands["template"]  # no trimming: the newline after each turn stays


@pytest.mark.parametrize("messages, tools", [(PLAIN, None), (SYSTEM, None), (PLAIN, [WEATHER]), (SYSTEM, [WEATHER]),
                                             (TOOL_TURNS, [WEATHER]), ([SYSTEM[0], *TOOL_TURNS], [WEATHER])],
                         ids=["plain", "system", "tools", "system+tools", "tool-call+result", "all"])
def test_qwen25_ollama_prompt_equals_the_chat_template(tokenizer, messages, tools):
    tok = with_template(tokenizer, QWEN25)
    assert ollama(tok, messages, tools) == jinja(tok, messages, tools)


@pytest.mark.parametrize("messages", [PLAIN, SYSTEM], ids=["plain", "system"])
def test_bundled_ollama_prompt_equals_the_chat_template(tokenizer, messages):
    assert "You are a helpful AI assistant named SmolLM" in jinja(tokenizer, PLAIN)  # its default system prompt
    assert ollama(tokenizer, messages) == jinja(tokenizer, messages)
    commands = dict(parse_modelfile(modelfile.modelfile_text("./m.gguf", tokenizer)))
    assert commands["system"].startswith("You are a helpful AI assistant named SmolLM")
    assert ".Tools" not in commands["template"]  # its template has no tool blocks


@pytest.mark.parametrize("family", ["llama3", "gemma", "phi3", "mistral", "chatml"])
def test_family_formats_render_alike_in_ollama(tokenizer, family):
    """System block (Llama-3, Phi-3, ChatML) or system text opening the first user turn (Gemma, Mistral)."""
    tok = with_template(tokenizer, templates.FAMILY_TEMPLATES[family])
    for messages in (PLAIN, SYSTEM):
        assert ollama(tok, messages) == jinja(tok, messages)


def test_a_separate_tool_use_template_gives_the_tool_blocks(tokenizer):
    """A tokenizer with named templates (default + tool_use) writes tool turns with its tool_use template."""
    tok = tokenizer
    tok.chat_template = {"default": QWEN25.replace("{%- if tools %}", "{%- if false %}"), "tool_use": QWEN25}
    templates.prepare_tokenizer(tok)  # what load_tokenizer does with a tokenizer's named templates
    assert templates.current(tok).tool_template == QWEN25
    assert ".ToolCalls" in dict(parse_modelfile(modelfile.modelfile_text("./m.gguf", tok)))["template"]
    for messages, tools in ((PLAIN, None), (TOOL_TURNS, [WEATHER])):
        want = tok.apply_chat_template(messages, chat_template=templates.current(tok).for_tools(bool(tools)),
                                       tokenize=False, add_generation_prompt=True, tools=tools)
        assert ollama(tok, messages, tools) == want


def test_a_literal_double_brace_stays_text(tokenizer):
    tok = with_template(tokenizer, "{% for m in messages %}{{ '{{' + m['role'] + '}} ' + m['content'] + '\n' }}"
                                   "{% endfor %}{% if add_generation_prompt %}{{ '{{assistant}} ' }}{% endif %}")
    assert ollama(tok, PLAIN) == jinja(tok, PLAIN)


def test_modelfile_parser_refuses_what_ollama_refuses():
    with pytest.raises(ValueError, match="unknown"):
        parse_modelfile("FROM ./a.gguf\nTEMPLATES x\n")
    with pytest.raises(ValueError, match="unterminated"):
        parse_modelfile('FROM ./a.gguf\nTEMPLATE """{{ .Prompt }}\n')
    with pytest.raises(ValueError, match="end"):
        render("{{ if .System }}x", {"System": "s"})
