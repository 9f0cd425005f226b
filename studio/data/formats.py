"""Detect a dataset's format and convert every row to one conversation schema.

The schema: a list of {"role": "system"|"user"|"assistant", "content": str} with an optional
"weight": 0 on an assistant turn that must not be trained (OpenAI fine-tuning files). A system turn
comes first if at all, then user and assistant alternate, and the last turn is the assistant's.

Formats (names are what `detect` returns and what the user may force):
- alpaca: instruction / input / output, optional system and history ([[question, answer], ...]).
- sharegpt: a list of turns under `conversations` (or another key) with from/value (human, gpt,
  system, function_call, observation) or role/content; optional top-level `system` and `tools`.
- openai: `messages` with role/content, content a string or a list of {"type": "text"} parts.
- prompt_completion: TRL's prompt/completion, as strings or as lists of messages.
- reasoning: question / chain of thought / response (e.g. medical-o1-reasoning-SFT's
  Question / Complex_CoT / Response); the chain of thought goes into the answer per `cot_style`.
- text: raw text (a `text` column or a .txt file) for continued pre-training.
- mapped: anything else, through a mapping {"prompt": col, "response": col, "system": col}.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from studio.errors import DataError

FORMATS = ("alpaca", "sharegpt", "openai", "prompt_completion", "reasoning", "text", "mapped")
COT_STYLES = ("think", "answer")  # <think>CoT</think> then the answer; or the answer alone
SAMPLE_ROWS = 200  # rows looked at by detect(): enough to vote, quick even on huge files
ROLES = ("system", "user", "assistant")

# ShareGPT speakers -> our roles. Tool calls are the assistant speaking; tool results come back
# to it as a user turn (the schema has no tool role), so the alternation still holds.
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
            "model": "assistant", "chatgpt": "assistant", "system": "system", "function_call": "assistant",
            "observation": "user", "tool": "user", "function": "user"}
TURN_LIST_KEYS = ("conversations", "conversation", "messages", "dialog", "dialogue", "chat", "turns")

# Column names (lower case) that identify each part, most specific first.
REASONING_KEYS = {"question": ("question", "problem", "query"),
                  "cot": ("complex_cot", "cot", "chain_of_thought", "reasoning", "thinking", "thought", "rationale"),
                  "response": ("response", "answer", "solution", "output")}
MAP_GUESSES = {"prompt": ("prompt", "question", "query", "input", "instruction", "user", "q", "source"),
               "response": ("response", "answer", "output", "completion", "reply", "target", "assistant", "a"),
               "system": ("system", "system_prompt")}


class RowError(ValueError):
    """One row cannot be converted; `reason` is shown with its row number."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Detection:
    format: str  # one of FORMATS
    evidence: str  # why, in words the user can check
    columns: list[str] = field(default_factory=list)
    mapping: dict = field(default_factory=dict)  # columns used (or suggested, for "mapped")
    needs_mapping: bool = False  # no known shape: the user must say which column is which
    matched: int = 0  # sampled rows that had this shape
    sampled: int = 0


# ---------------------------------------------------------------- detection


def _keys(record: dict) -> dict[str, str]:
    """lower-case name -> actual name."""
    return {str(k).lower(): k for k in record}


def _find(keys: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((keys[n] for n in names if n in keys), None)


def _turn_key(record: dict) -> tuple[str, str] | None:
    """(key, 'openai' | 'sharegpt') for a list of turns in the record."""
    keys = _keys(record)
    for name in TURN_LIST_KEYS:
        value = record.get(keys.get(name, ""))
        if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
            first = _keys(value[0])
            if "from" in first and "value" in first:
                return keys[name], "sharegpt"
            if "role" in first and "content" in first:
                return keys[name], "openai" if name == "messages" else "sharegpt"
    return None


def shape_of(record: dict) -> tuple[str, dict] | None:
    """The format one record looks like, with the columns that say so; None when none fits."""
    keys = _keys(record)
    turns = _turn_key(record)
    if turns:
        return turns[1], {"messages": turns[0]}
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion", {"prompt": keys["prompt"], "completion": keys["completion"]}
    found = {part: _find(keys, names) for part, names in REASONING_KEYS.items()}
    if all(found.values()):
        return "reasoning", found
    if "instruction" in keys and "output" in keys:
        return "alpaca", {k: keys[k] for k in ("instruction", "input", "output", "system", "history") if k in keys}
    if "text" in keys and len(keys) <= 3:  # a text column, perhaps beside an id or a source
        return "text", {"text": keys["text"]}
    return None


def guess_mapping(columns: list[str]) -> dict:
    keys = {str(c).lower(): c for c in columns}
    guess = {part: _find(keys, names) for part, names in MAP_GUESSES.items()}
    return {part: col for part, col in guess.items() if col}


def detect(records: list[dict]) -> Detection:
    """Vote over up to SAMPLE_ROWS records; the evidence says how many rows had the winning shape."""
    from studio.data.io import columns_of

    sample = [r for r in records[:SAMPLE_ROWS] if isinstance(r, dict)]
    if not sample:
        raise DataError("There are no readable rows to detect a format from.",
                        "Check the file: every row failed to read (see the problems list).")
    columns = columns_of(sample)
    votes = Counter()
    mappings: dict[str, dict] = {}
    for record in sample:
        shape = shape_of(record)
        if shape:
            votes[shape[0]] += 1
            mappings.setdefault(shape[0], shape[1])
    if votes:
        fmt, count = votes.most_common(1)[0]
        used = ", ".join(f"'{c}'" for c in mappings[fmt].values())
        return Detection(fmt, f"{count} of {len(sample)} sampled rows have the {fmt} columns ({used}).",
                         columns, mappings[fmt], matched=count, sampled=len(sample))
    guess = guess_mapping(columns)
    if "prompt" in guess and "response" in guess:
        return Detection("mapped", f"No known format; guessed prompt='{guess['prompt']}' and "
                         f"response='{guess['response']}' from the column names. Check the mapping.",
                         columns, guess, sampled=len(sample))
    return Detection("mapped", f"No known format and no obvious prompt/response columns among: "
                     f"{', '.join(map(str, columns))}. Choose which column is the prompt and which the response.",
                     columns, guess, needs_mapping=True, sampled=len(sample))


# ---------------------------------------------------------------- conversion


def _text(value, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RowError(f"{what} is a {type(value).__name__}, not text")


def _get(record: dict, name: str | None):
    if not name:
        return None
    if name in record:
        return record[name]
    return record.get(_keys(record).get(name.lower(), ""))


def _content(value, index: int) -> str:
    """OpenAI content: a string, or a list of {"type": "text", "text": ...} parts joined by newlines."""
    if isinstance(value, list):
        parts = []
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text":
                raise RowError(f"message {index} has a '{kind}' part; only text parts are supported")
            parts.append(_text(part.get("text"), f"message {index} text"))
        return "\n".join(parts)
    return _text(value, f"message {index} content")


def from_openai(record: dict, key: str = "messages") -> list[dict]:
    turns = _get(record, key)
    if not isinstance(turns, list):
        raise RowError(f"'{key}' is missing or not a list")
    messages = []
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowError(f"message {i} is not an object")
        role = turn.get("role")
        if role not in ROLES:
            raise RowError(f"message {i} has role {role!r}; use system, user or assistant")
        message = {"role": role, "content": _content(turn.get("content"), i)}
        weight = turn.get("weight")  # None where absent (Parquet fills missing struct fields with null)
        if weight is not None:
            if weight not in (0, 1) or isinstance(weight, bool):
                raise RowError(f"message {i} has weight {weight!r}; it must be 0 or 1")
            if role != "assistant":
                raise RowError(f"message {i} ({role}) has a weight; only assistant turns may")
            if weight == 0:
                message["weight"] = 0
        messages.append(message)
    return messages


def from_sharegpt(record: dict, key: str = "conversations") -> list[dict]:
    turns = _get(record, key)
    if not isinstance(turns, list):
        raise RowError(f"'{key}' is missing or not a list")
    messages = []
    system = _text(_get(record, "system"), "system")
    tools = _get(record, "tools")
    if tools:
        tools = tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False)
        system = f"{system}\n\nAvailable tools:\n{tools}".strip()
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowError(f"turn {i} is not an object")
        speaker = turn.get("from", turn.get("role"))
        role = SPEAKERS.get(str(speaker).lower())
        if role is None:
            raise RowError(f"turn {i} is from {speaker!r}; known speakers: {', '.join(SPEAKERS)}")
        messages.append({"role": role, "content": _text(turn.get("value", turn.get("content")), f"turn {i}")})
    return messages


def from_alpaca(record: dict, mapping: dict | None = None) -> list[dict]:
    mapping = mapping or {}
    instruction = _text(_get(record, mapping.get("instruction", "instruction")), "instruction")
    extra = _text(_get(record, mapping.get("input", "input")), "input")
    messages = []
    system = _text(_get(record, mapping.get("system", "system")), "system")
    if system.strip():
        messages.append({"role": "system", "content": system})
    for i, pair in enumerate(_get(record, mapping.get("history", "history")) or [], start=1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowError(f"history item {i} is not a [question, answer] pair")
        messages += [{"role": "user", "content": _text(pair[0], f"history {i} question")},
                     {"role": "assistant", "content": _text(pair[1], f"history {i} answer")}]
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": prompt},
                 {"role": "assistant", "content": _text(_get(record, mapping.get("output", "output")), "output")}]
    return messages


def from_prompt_completion(record: dict, mapping: dict | None = None) -> list[dict]:
    mapping = mapping or {}
    prompt = _get(record, mapping.get("prompt", "prompt"))
    completion = _get(record, mapping.get("completion", "completion"))
    if isinstance(prompt, list) or isinstance(completion, list):
        if not (isinstance(prompt, list) and isinstance(completion, list)):
            raise RowError("prompt and completion must both be text, or both be lists of messages")
        return from_openai({"messages": prompt + completion})
    return [{"role": "user", "content": _text(prompt, "prompt")},
            {"role": "assistant", "content": _text(completion, "completion")}]


def from_reasoning(record: dict, mapping: dict | None = None, cot_style: str = "think") -> list[dict]:
    if cot_style not in COT_STYLES:
        raise DataError(f"Unknown chain-of-thought style {cot_style!r}.", f"Use one of: {', '.join(COT_STYLES)}.")
    keys = _keys(record)
    found = {part: (mapping or {}).get(part) or _find(keys, names) for part, names in REASONING_KEYS.items()}
    question = _text(_get(record, found["question"]), "question")
    cot = _text(_get(record, found["cot"]), "chain of thought").strip()
    answer = _text(_get(record, found["response"]), "response")
    if not answer.strip():
        raise RowError("the response is empty")
    content = f"<think>\n{cot}\n</think>\n\n{answer.strip()}" if cot_style == "think" and cot else answer
    return [{"role": "user", "content": question}, {"role": "assistant", "content": content}]


def from_text(record: dict, mapping: dict | None = None) -> list[dict]:
    text = _text(_get(record, (mapping or {}).get("text", "text")), "text")
    if not text.strip():
        raise RowError("the text is empty")
    return [{"role": "assistant", "content": text}]


def from_mapped(record: dict, mapping: dict | None) -> list[dict]:
    if not mapping or not mapping.get("prompt") or not mapping.get("response"):
        raise DataError("This data needs a column mapping: which column is the prompt and which the response.",
                        "Choose them in the column-mapping form, or pass --map prompt=COL,response=COL.")
    missing = [mapping[p] for p in ("prompt", "response", "system") if mapping.get(p) and mapping[p] not in record]
    if missing:
        raise RowError(f"column {missing[0]!r} (from the mapping) is missing")
    messages = []
    system = _text(record.get(mapping["system"]), "system") if mapping.get("system") else ""
    if system.strip():
        messages.append({"role": "system", "content": system})
    return messages + [{"role": "user", "content": _text(record[mapping["prompt"]], "prompt")},
                       {"role": "assistant", "content": _text(record[mapping["response"]], "response")}]


def check_conversation(messages: list[dict], fmt: str = "openai") -> list[dict]:
    """RowError unless: optional system first, user/assistant alternating, ending with a non-empty answer."""
    if fmt == "text":
        return messages
    if not messages:
        raise RowError("the conversation has no messages")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if not body:
        raise RowError("the conversation has only a system message")
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            number = i + 1 + (len(messages) - len(body))
            previous = body[i - 1]["role"] if i else "the start"
            raise RowError(f"turns do not alternate: message {number} is {message['role']} after {previous} "
                           f"(expected {expected})")
        if not message["content"].strip():
            raise RowError(f"the {message['role']} turn {i + 1 + (len(messages) - len(body))} is empty")
    if body[-1]["role"] != "assistant":
        raise RowError("the conversation ends with a user message: there is no answer to train on")
    if all(m.get("weight", 1) == 0 for m in body if m["role"] == "assistant"):
        raise RowError("every assistant turn has weight 0: nothing to train on")
    return messages


def to_messages(record: dict, fmt: str, mapping: dict | None = None, cot_style: str = "think") -> list[dict]:
    """One record in `fmt` -> a checked conversation; RowError (with the reason) when it does not fit."""
    if fmt not in FORMATS:
        raise DataError(f"Unknown format {fmt!r}.", f"Use one of: {', '.join(FORMATS)}.")
    if fmt in ("openai", "sharegpt"):
        key = (mapping or {}).get("messages") or (_turn_key(record) or ("messages" if fmt == "openai"
                                                                       else "conversations",))[0]
        messages = (from_openai if fmt == "openai" else from_sharegpt)(record, key)
    elif fmt == "reasoning":
        messages = from_reasoning(record, mapping, cot_style)
    elif fmt == "mapped":
        messages = from_mapped(record, mapping)
    else:
        converter = {"alpaca": from_alpaca, "prompt_completion": from_prompt_completion, "text": from_text}[fmt]
        messages = converter(record, mapping)
    return check_conversation(messages, fmt)
