"""Ollama Modelfiles that keep the model's own chat template: its turns, its default system prompt, its
tool blocks (the tool list, the assistant's tool calls, the tool results) and the studio's stop tokens.

Nothing parses Jinja here: the chat template is rendered on probe conversations (with and without a
system message, with one and two tools, one and two tool calls, a tool result) and the text around each
probe is the template's own text, which becomes the literal text of an Ollama Go template
(https://github.com/ollama/ollama/blob/main/docs/template.md). A part whose probes do not line up (a
template that folds the system prompt into the first user turn, or has no tool blocks) is written the
simpler way, and the Modelfile carries a comment saying what was left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from studio.errors import ModelError

# Probe texts: characters no template writes itself, so each is found exactly where the template put it.
SYS, U1, A1, U2, A2, RESULT = ("\u24c8SYS", "\u2460U1", "\u2461A1", "\u2462U2", "\u2463A2", "\u24c7RES")
PROBE_TOOL = {"type": "function", "function": {"name": "probe_fn", "description": "\u24b9desc",
                                               "parameters": {"type": "object", "properties": {}}}}
PROBE_CALL = {"type": "function", "function": {"name": "probe_fn", "arguments": {"a": 1}}}
# Ollama's own Qwen2.5 template writes a tool this way: its ToolFunction prints as JSON.
GO_WHOLE_TOOL = '{"type": "function", "function": {{ .Function }}}'


@dataclass
class Pieces:
    """The literal text of each part of the template, in the order the template writes it."""
    user_pre: str
    user_suf: str
    assistant_pre: str
    assistant_suf: str
    answer_prompt: str = ""  # what opens the answer the model is asked for (add_generation_prompt)
    lead: str = ""  # before everything (a BOS the template writes itself)
    system_pre: str | None = None  # a system block of its own: system_pre + text + system_suf
    system_suf: str = ""
    default_system: str | None = None  # what the template writes when the conversation has no system message
    fold_sep: str | None = None  # the system text opens the first user turn, then this separator
    tools: str | None = None  # the tool list (a Go template range over .Tools), inside the system block
    call_pre: str = ""  # an assistant turn of tool calls: call_pre + one call_each per call + call_suf
    call_each: str = ""
    call_suf: str = ""
    tool_pre: str = ""  # a tool result: tool_pre + result + tool_suf
    tool_suf: str = ""


class _Renderer:
    def __init__(self, tokenizer, template: str):
        self.tokenizer, self.template = tokenizer, template

    def __call__(self, messages: list[dict], gen: bool = False, tools: list | None = None) -> str | None:
        """The template's text for `messages`, or None where the template refuses them (raise_exception)."""
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=gen, tools=tools)
        except Exception:  # noqa: BLE001 - jinja's TemplateError, or a template's own raise_exception
            return None


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str, calls: list | None = None) -> dict:
    return {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}


def turn_pieces(render: _Renderer) -> Pieces:
    """The text the template puts around each user and assistant turn (from the second turn on), and the
    opening of the answer it asks for (add_generation_prompt), which may differ from a past answer's opening
    (Mistral writes ' ' before a past answer and nothing after the last [/INST])."""
    conv = [_user(U1), _assistant(A1), _user(U2), _assistant(A2)]
    full, gen, upto = render(conv), render(conv[:3], gen=True), render(conv[:3])
    if full is None or gen is None or upto is None:
        raise ModelError("The chat template cannot render a plain user/assistant conversation, so no Ollama "
                         "template can be written from it.", "Check the model's chat_template (Model tab shows it).")
    u_suf = upto[upto.index(U2) + len(U2):]
    after_user = full[full.index(U2) + len(U2):full.index(A2)]
    a_pre = after_user[len(u_suf):] if after_user.startswith(u_suf) else after_user
    u_suf = u_suf if after_user.startswith(u_suf) else ""
    a_suf = full[full.index(A2) + len(A2):]
    between = full[full.index(A1) + len(A1):full.index(U2)]
    u_pre = between[len(a_suf):] if between.startswith(a_suf) else between
    prompt = gen[len(upto):] if gen.startswith(upto) else a_pre
    return Pieces(user_pre=u_pre, user_suf=u_suf, assistant_pre=a_pre, assistant_suf=a_suf, answer_prompt=prompt)


def _head(text: str | None, p: Pieces, first_user: str = U1) -> str | None:
    """Everything before the first user turn's opening text, or None when the turn does not open as usual."""
    if text is None or first_user not in text:
        return None
    start = text.index(first_user) - len(p.user_pre)
    return text[:start] if start >= 0 and text[start:].startswith(p.user_pre + first_user) else None


def find_system(render: _Renderer, p: Pieces) -> None:
    """A system block of its own (with its default text, if any), or the system text folded into the first
    user turn; neither when the template refuses a system message."""
    plain = _head(render([_user(U1), _assistant(A1)]), p)
    with_sys = render([{"role": "system", "content": SYS}, _user(U1), _assistant(A1)])
    head = _head(with_sys, p)
    if plain is None or with_sys is None:
        return
    if head is not None and SYS in head:
        block_pre, block_suf = head[:head.index(SYS)], head[head.index(SYS) + len(SYS):]
        if plain.startswith(block_pre) and plain.endswith(block_suf) and len(plain) >= len(block_pre + block_suf):
            p.system_pre, p.system_suf = block_pre, block_suf
            p.default_system = plain[len(block_pre):len(plain) - len(block_suf)]
        elif block_pre.startswith(plain):
            p.lead, p.system_pre, p.system_suf = plain, block_pre[len(plain):], block_suf
        return
    opening = plain + p.user_pre + SYS
    if with_sys.startswith(opening) and U1 in with_sys[len(opening):]:
        p.lead = plain
        p.fold_sep = with_sys[len(opening):with_sys.index(U1)]


def _repeated(one: str, two: str) -> tuple[str, str, str] | None:
    """(before, unit, after) with one == before+unit+after and two == before+unit+unit+after, else None."""
    size = len(two) - len(one)
    if size <= 0:
        return None
    same = next((i for i, (a, b) in enumerate(zip(one, two, strict=False)) if a != b), len(one))
    if same < size:
        return None
    before, unit, after = one[:same - size], two[same:same + size], one[same:]
    if before + unit + after == one and before + unit + unit + after == two:
        return before, unit, after
    return None


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # what the template's `tojson` writes


def _tool_list(render: _Renderer, p: Pieces) -> str | None:
    """The tool list as a Go range over .Tools, written inside the system block after the system text."""
    def middle(tools):
        head = _head(render([{"role": "system", "content": SYS}, _user(U1)], tools=tools), p)
        opening = p.lead + (p.system_pre or "") + SYS
        if head is None or not head.startswith(opening) or not head.endswith(p.system_suf):
            return None
        return head[len(opening):len(head) - len(p.system_suf)]

    one, two = middle([PROBE_TOOL]), middle([PROBE_TOOL, PROBE_TOOL])
    parts = _repeated(one, two) if one is not None and two is not None else None
    if parts is None:
        return None
    before, unit, after = parts
    for written, go in ((_json(PROBE_TOOL), GO_WHOLE_TOOL), (_json(PROBE_TOOL["function"]), "{{ .Function }}")):
        if unit.count(written) == 1:
            return go_text(before) + "{{ range .Tools }}" + go_text(unit).replace(go_text(written), go) + \
                "{{ end }}" + go_text(after)
    return None


def _tool_calls(render: _Renderer, p: Pieces) -> bool:
    """call_pre/call_each/call_suf of an assistant turn that calls tools; False where the template has none."""
    base = render([_user(U1)])
    one = render([_user(U1), _assistant("", [PROBE_CALL])])
    two = render([_user(U1), _assistant("", [PROBE_CALL, PROBE_CALL])])
    if base is None or one is None or two is None or not one.startswith(base) or not two.startswith(base):
        return False
    parts = _repeated(one[len(base):], two[len(base):])
    name, args = PROBE_CALL["function"]["name"], _json(PROBE_CALL["function"]["arguments"])
    if parts is None or parts[1].count(name) != 1 or parts[1].count(args) != 1:
        return False
    each = go_text(parts[1]).replace(name, "{{ .Function.Name }}").replace(go_text(args), "{{ .Function.Arguments }}")
    p.call_pre, p.call_each, p.call_suf = go_text(parts[0]), each, go_text(parts[2])
    return True


def _tool_result(render: _Renderer, p: Pieces) -> bool:
    """tool_pre/tool_suf around a tool result; False where the template writes none."""
    conv = [_user(U1), _assistant("", [PROBE_CALL])]
    base = render(conv)
    full = render(conv + [{"role": "tool", "name": "probe_fn", "content": RESULT}])
    if base is None or full is None or not full.startswith(base) or full.count(RESULT) != 1:
        return False
    rest = full[len(base):]
    p.tool_pre, p.tool_suf = rest[:rest.index(RESULT)], rest[rest.index(RESULT) + len(RESULT):]
    return True


def find_tools(render: _Renderer, p: Pieces) -> None:
    """Tool support needs all three parts and a system block to hold the list; else none is written."""
    if p.system_pre is None or render([_user(U1)], tools=[PROBE_TOOL]) == render([_user(U1)]):
        return
    tools = _tool_list(render, p)
    if tools is None or not _tool_calls(render, p) or not _tool_result(render, p):
        return
    # Without a system message the template must write the same list after its default text (or none).
    plain = _head(render([_user(U1)], tools=[PROBE_TOOL]), p)
    one = _tool_list_text(tools)
    if plain == p.lead + p.system_pre + (p.default_system or "") + one + p.system_suf:
        p.tools = tools


def _tool_list_text(go_tools: str) -> str:
    """The probe tool list as the template wrote it (to check the no-system case against)."""
    before, rest = go_tools.split("{{ range .Tools }}", 1)
    unit, after = rest.rsplit("{{ end }}", 1)
    written = unit.replace(GO_WHOLE_TOOL, _json(PROBE_TOOL)).replace("{{ .Function }}", _json(PROBE_TOOL["function"]))
    return from_go_text(before + written + after)


def go_text(text: str) -> str:
    """Literal text for a Go template: a '{{' in it would open an action, so it is written as an action."""
    return text.replace("{{", '{{ "{{" }}')


def from_go_text(text: str) -> str:
    return text.replace('{{ "{{" }}', "{{")


def pieces(tokenizer, template: str, tool_template: str | None = None) -> Pieces:
    """The pieces of `template`; the tool blocks from `tool_template` where the tokenizer has a separate
    `tool_use` template (kept only where its turns and system block are the default template's)."""
    render = _Renderer(tokenizer, template)
    p = turn_pieces(render)
    find_system(render, p)
    find_tools(_Renderer(tokenizer, tool_template) if tool_template else render, p)
    return p


def go_template(p: Pieces) -> str:
    """The Ollama Go template: the system block (with the tool list), then every turn, then the answer's opening.

    No whitespace-trimming markers ({{- -}}) are used: every newline the chat template writes is kept."""
    g = go_text
    head = g(p.lead)
    if p.system_pre is not None and p.tools:
        head += ("{{ if or .System .Tools }}" + g(p.system_pre) + "{{ if .System }}{{ .System }}{{ end }}"
                 "{{ if .Tools }}" + p.tools + "{{ end }}" + g(p.system_suf) + "{{ end }}")
    elif p.system_pre is not None:
        head += "{{ if .System }}" + g(p.system_pre) + "{{ .System }}" + g(p.system_suf) + "{{ end }}"
    user = g(p.user_pre) + "{{ .Content }}" + g(p.user_suf)
    if p.fold_sep is not None:  # the system text opens the first user turn, once
        head += "{{ $system := .System }}"
        user = (g(p.user_pre) + "{{ if $system }}{{ $system }}" + g(p.fold_sep) + '{{ $system = "" }}{{ end }}'
                "{{ .Content }}" + g(p.user_suf))
    answer = g(p.assistant_pre) + "{{ .Content }}" + g(p.assistant_suf)
    turns = '{{ range .Messages }}{{ if eq .Role "user" }}' + user + '{{ else if eq .Role "assistant" }}'
    if p.tools:
        turns += ("{{ if .ToolCalls }}" + p.call_pre + "{{ range .ToolCalls }}" + p.call_each + "{{ end }}"
                  + p.call_suf + "{{ else }}" + answer + "{{ end }}"
                  + '{{ else if eq .Role "tool" }}' + g(p.tool_pre) + "{{ .Content }}" + g(p.tool_suf))
    else:
        turns += answer
    return head + turns + "{{ end }}{{ end }}" + g(p.answer_prompt)


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ModelError(f"The {what} holds three double quotes in a row, which an Ollama Modelfile cannot quote.",
                         "Write the Modelfile by hand, or export the GGUF alone (its metadata has the template).")
    return f'"""{text}"""'


def modelfile_text(source: str, tokenizer, adapter: str | None = None) -> str:
    """FROM `source` (a GGUF), ADAPTER `adapter` (a GGUF LoRA) where given, the chat template as a Go template,
    the default system prompt, and one stop per stop token of the studio's template choice."""
    from studio import templates

    choice = templates.current(tokenizer)
    p = pieces(tokenizer, choice.template, choice.tool_template)
    lines = [f"FROM {source}"] + ([f"ADAPTER {adapter}"] if adapter else [])
    lines.append("TEMPLATE " + _quoted(go_template(p), "chat template"))
    if p.default_system:
        lines.append("SYSTEM " + _quoted(p.default_system, "default system prompt"))
    stops = [tokenizer.convert_ids_to_tokens(i) for i in choice.stop_ids]
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops if s]
    notes = []
    if p.system_pre is None and p.fold_sep is None:
        notes.append("# The chat template has no system prompt, so system messages are left out.")
    if not p.tools:
        notes.append("# No tool blocks: the chat template writes no tool list, tool calls and tool results.")
    return "\n".join(lines + notes) + "\n"
