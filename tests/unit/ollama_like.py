"""What Ollama does with a Modelfile, in a few lines of Python, for tests on machines without Ollama:

- `parse_modelfile`: Ollama's Modelfile grammar (a command per line; \"\"\"-quoted, "-quoted or bare
  arguments; # comments), raising ValueError where Ollama's parser would refuse the file;
- `render`: Go's text/template for the subset a template uses (text, {{ .Field }}, $variables with := and =,
  if / else if / else, range, eq ne and or not len, string literals, {{- -}} trimming), raising ValueError
  on anything else, so a template the studio writes outside that subset fails the test;
- `chat_values`: the values Ollama's chat handler gives a template: a SYSTEM default where the conversation
  has no system message, .System (every system text joined), .Messages (consecutive same-role messages
  joined), .Tools. A tool and a call's arguments print as JSON; Ollama prints it compact (Go's
  json.Marshal), here with Python's separators so the text can equal what a Jinja `tojson` wrote.
"""

from __future__ import annotations

import json
import re

COMMANDS = {"from", "adapter", "template", "system", "parameter", "license", "message", "requires"}


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """[(command, argument)] in file order."""
    out, pos = [], 0
    while pos < len(text):
        line_end = text.find("\n", pos)
        line = text[pos:] if line_end < 0 else text[pos:line_end]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            pos = len(text) if line_end < 0 else line_end + 1
            continue
        command, _, rest = stripped.partition(" ")
        if command.lower() not in COMMANDS:
            raise ValueError(f"unknown Modelfile command {command!r}")
        start = pos + line.index(command) + len(command) + 1
        rest = text[start:].lstrip(" ")
        start = len(text) - len(rest)
        if rest.startswith('"""'):
            close = text.find('"""', start + 3)
            if close < 0:
                raise ValueError(f"unterminated \"\"\" after {command}")
            arg, pos = text[start + 3:close], close + 3
        else:
            end = text.find("\n", start)
            arg = text[start:] if end < 0 else text[start:end]
            pos = len(text) if end < 0 else end
        out.append((command.lower(), arg))
    return out


class GoValue:
    """A Go struct with fields that prints as JSON (Ollama's ToolFunction, ToolCallFunctionArguments)."""

    def __init__(self, text: str, **fields):
        self.text, self.fields = text, fields

    def __str__(self) -> str:
        return self.text


def chat_values(messages: list[dict], tools: list[dict] | None = None, default_system: str | None = None) -> dict:
    if default_system and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default_system}, *messages]
    collated: list[dict] = []
    for m in messages:
        calls = [{"Function": GoValue(json.dumps(c["function"], ensure_ascii=False), Name=c["function"]["name"],
                                      Arguments=GoValue(json.dumps(c["function"]["arguments"], ensure_ascii=False)))}
                 for c in m.get("tool_calls") or []]
        if collated and collated[-1]["Role"] == m["role"]:
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"], "ToolCalls": calls})
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    go_tools = [{"Type": "function", "Function": GoValue(json.dumps(t["function"], ensure_ascii=False),
                                                         Name=t["function"]["name"])} for t in tools or []]
    return {"System": system, "Messages": collated, "Tools": go_tools}


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\(|\)|[^\s()]+')


def _lex(template: str) -> list[tuple[str, str]]:
    """[("text", ...) | ("action", ...)] with {{- and -}} applied to the neighbouring text."""
    parts, pos, trim_next = [], 0, False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        text = text.lstrip() if trim_next else text
        parts.append(("text", text.rstrip() if m.group(1) else text))
        parts.append(("action", m.group(2)))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    parts.append(("text", tail.lstrip() if trim_next else tail))
    return parts


def _parse(parts: list, i: int, stops: tuple) -> tuple[list, int]:
    """Nodes up to one of `stops` (an action word); returns (nodes, index of the stop)."""
    nodes = []
    while i < len(parts):
        kind, body = parts[i]
        word = body.split(" ", 1)[0] if kind == "action" else ""
        if kind == "action" and (word in stops or body in stops):
            return nodes, i
        if kind == "text":
            nodes.append(("text", body))
        elif word in ("if", "range"):
            node, i = _parse_block(parts, i, word)
            nodes.append(node)
        elif word in ("end", "else"):
            raise ValueError(f"unexpected {{{{ {body} }}}}")
        else:
            nodes.append(("print", body))
        i += 1
    if stops:
        raise ValueError(f"missing {{{{ end }}}} (looked for {stops})")
    return nodes, i


def _parse_block(parts: list, i: int, word: str):
    branches, cond = [], parts[i][1][len(word):].strip()
    while True:
        body, i = _parse(parts, i + 1, ("end", "else"))
        branches.append((cond, body))
        stop = parts[i][1]
        if stop == "end":
            return (word, branches), i
        if word == "range" or stop not in ("else",) and not stop.startswith("else if "):
            raise ValueError(f"unsupported {{{{ {stop} }}}}")
        cond = stop[len("else if "):] if stop.startswith("else if ") else None


def _truthy(value) -> bool:
    return bool(value) if not isinstance(value, GoValue) else True


class _Run:
    def __init__(self, root: dict):
        self.root, self.vars, self.out = root, {"$": root}, []

    def term(self, tokens: list, dot):
        tok = tokens.pop(0)
        if tok == "(":
            value = self.call(tokens, dot)
            tokens.pop(0)
            return value
        if tok.startswith('"'):
            return json.loads(tok)
        head, *fields = tok.split(".") if not tok.startswith(".") else ["."] + tok[1:].split(".")
        value = dot if head == "." else self.vars[head]
        for f in [f for f in fields if f]:
            value = value.fields[f] if isinstance(value, GoValue) else value[f]
        return value

    def call(self, tokens: list, dot):
        funcs = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not _truthy(a),
                 "len": len, "and": lambda *a: all(map(_truthy, a)), "or": lambda *a: any(map(_truthy, a))}
        if tokens[0] in funcs:
            name, args = tokens.pop(0), []
            while tokens and tokens[0] != ")":
                args.append(self.term(tokens, dot))
            return funcs[name](*args)
        return self.term(tokens, dot)

    def expr(self, text: str, dot):
        tokens = _TOKEN.findall(text)
        value = self.call(tokens, dot)
        if tokens:
            raise ValueError(f"cannot evaluate {text!r}")
        return value

    def nodes(self, nodes: list, dot) -> None:
        for kind, body in nodes:
            if kind == "text":
                self.out.append(body)
            elif kind == "print":
                self.print(body, dot)
            elif kind == "if":
                branch = next((b for c, b in body if c is None or _truthy(self.expr(c, dot))), [])
                self.nodes(branch, dot)
            else:
                for item in self.expr(body[0][0], dot):
                    self.nodes(body[0][1], item)

    def print(self, body: str, dot) -> None:
        assign = re.fullmatch(r"(\$\w+)\s*:?=\s*(.+)", body)
        if assign:
            self.vars[assign.group(1)] = self.expr(assign.group(2), dot)
        else:
            self.out.append(str(self.expr(body, dot)))


def render(template: str, values: dict) -> str:
    nodes, _ = _parse(_lex(template), 0, ())
    run = _Run(values)
    run.nodes(nodes, values)
    return "".join(run.out)
