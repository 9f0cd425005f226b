"""Detect a dataset's format and convert every row to one conversation schema.

The schema: a `Conversation`, a list of {"role": "system"|"user"|"assistant"|"tool", "content": str}
with an optional "weight": 0 on an assistant turn that must not be trained (OpenAI fine-tuning files,
or `loss_weight`), "tool_calls" on an assistant turn that calls tools ([{"type": "function",
"function": {"name", "arguments"}}], as transformers' chat templates expect) and "name" on a tool
result; the conversation's tool definitions ride on it as `.tools` (the `tools` argument of
`apply_chat_template`). A system turn comes first if at all, then a user turn; an assistant answer
follows each user turn, an assistant tool call is followed by one or more tool results and then
the assistant again; the last turn is the assistant's.

Formats (names are what `detect` returns and what the user may force):
- alpaca: instruction / input / output, optional system and history ([[question, answer], ...]).
- sharegpt: a list of turns under `conversations` (or another key) with from/value (human, gpt,
  system, function_call, observation) or role/content; optional top-level `system` and `tools`.
  function_call turns become assistant tool calls, observation turns tool results.
- openai: `messages` with role/content, content a string or a list of text parts ({"type": "text"}
  or "input_text"/"output_text", the text under "text" or "value"); tool_calls and tool turns.
- prompt_completion: TRL's prompt/completion, as strings or as lists of messages.
- reasoning: question / chain of thought / response (e.g. medical-o1-reasoning-SFT's
  Question / Complex_CoT / Response); the chain of thought goes into the answer per `cot_style`.
- text: raw text (a `text` column or a .txt file) for continued pre-training.
- mapped: anything else, through a mapping {"prompt": col, "response": col, "system": col}.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

from studio.errors import DataError

FORMATS = ("alpaca", "sharegpt", "openai", "prompt_completion", "reasoning", "text", "mapped")
COT_STYLES = ("think", "answer")  # <think>CoT</think> then the answer; or the answer alone
SAMPLE_ROWS = 200  # rows looked at by detect(): enough to vote, quick even on huge files
ROLES = ("system", "user", "assistant", "tool")
TEXT_PARTS = ("text", "input_text", "output_text")  # OpenAI's content part types that hold text

# ShareGPT speakers -> our roles. A function_call turn is the assistant calling a tool (its value is
# the call as JSON); an observation is the tool's result, in the tool role.
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
            "model": "assistant", "chatgpt": "assistant", "system": "system", "function_call": "tool_call",
            "tool_call": "tool_call", "observation": "tool", "tool": "tool", "function": "tool"}
TURN_LIST_KEYS = ("conversations", "conversation", "messages", "dialog", "dialogue", "chat", "turns")

# Column names (lower case) that identify each part, most specific first.
REASONING_KEYS = {"question": ("question", "problem", "query"),
                  "cot": ("complex_cot", "cot", "chain_of_thought", "reasoning", "thinking", "thought", "rationale"),
                  "response": ("response", "answer", "solution", "output")}
MAP_GUESSES = {"prompt": ("prompt", "question", "query", "input", "instruction", "user", "q", "source"),
               "response": ("response", "answer", "output", "completion", "reply", "target", "assistant", "a"),
               "system": ("system", "system_prompt")}


class Conversation(list):
    """A list of messages that also carries the conversation's tool definitions (`tools`)."""

    def __init__(self, messages=(), tools: list | None = None):
        super().__init__(messages)
        self.tools = list(tools or [])


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


def column_keys(record: dict) -> dict[str, str]:
    """lower-case name -> actual name."""
    return {str(k).lower(): k for k in record}


def _find(keys: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((keys[n] for n in names if n in keys), None)


def _turn_key(record: dict) -> tuple[str, str] | None:
    """(key, 'openai' | 'sharegpt') for a list of turns in the record."""
    keys = column_keys(record)
    for name in TURN_LIST_KEYS:
        value = record.get(keys.get(name, ""))
        if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
            first = column_keys(value[0])
            if "from" in first and "value" in first:
                return keys[name], "sharegpt"
            if "role" in first and "content" in first:
                return keys[name], "openai" if name == "messages" else "sharegpt"
    return None


def shape_of(record: dict) -> tuple[str, dict] | None:
    """The format one record looks like, with the columns that say so; None when none fits."""
    keys = column_keys(record)
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


def readable_sample(records: list, rows: int) -> list[dict]:
    """The records among the first `rows` that are objects; DataError when there is none."""
    sample = [r for r in records[:rows] if isinstance(r, dict)]
    if not sample:
        raise DataError("There are no readable rows to detect a format from.",
                        "Check the file: every row failed to read (see the problems list).")
    return sample


@dataclass(frozen=True)
class Vote:
    fmt: str  # the format most sampled records fit
    count: int  # how many fit it
    mapping: dict  # its column mapping (the first one seen)
    fitting: int  # how many records fit any format

    @property
    def columns_used(self) -> str:
        return ", ".join(f"'{c}'" for c in self.mapping.values())


def vote(sample: list[dict], shape_of) -> Vote | None:
    """The format most sampled records fit (`shape_of(record)` -> (format, mapping) or None); None if none fits."""
    votes: Counter = Counter()
    mappings: dict[str, dict] = {}
    for record in sample:
        shape = shape_of(record)
        if shape:
            votes[shape[0]] += 1
            mappings.setdefault(shape[0], shape[1])
    if not votes:
        return None
    fmt, count = votes.most_common(1)[0]
    return Vote(fmt, count, mappings[fmt], sum(votes.values()))


def detect(records: list[dict]) -> Detection:
    """Vote over up to SAMPLE_ROWS records; the evidence says how many rows had the winning shape."""
    from studio.data.io import columns_of

    sample = readable_sample(records, SAMPLE_ROWS)
    columns = columns_of(sample)
    won = vote(sample, shape_of)
    if won:
        text = f"{won.count} of {len(sample)} sampled rows have the {won.fmt} columns ({won.columns_used})."
        return Detection(won.fmt, text, columns, won.mapping, matched=won.count, sampled=len(sample))
    guess = guess_mapping(columns)
    if "prompt" in guess and "response" in guess:
        return Detection("mapped", f"No known format; guessed prompt='{guess['prompt']}' and "
                         f"response='{guess['response']}' from the column names. Check the mapping.",
                         columns, guess, sampled=len(sample))
    return Detection("mapped", f"No known format and no obvious prompt/response columns among: "
                     f"{', '.join(map(str, columns))}. Choose which column is the prompt and which the response.",
                     columns, guess, needs_mapping=True, sampled=len(sample))


# ---------------------------------------------------------------- conversion


def speaker_role(turn, where: str, speakers: dict[str, str], advice: str, first: str = "from") -> str:
    """The role a message object names under "from" or "role" (`first` looked up first), through `speakers`;
    RowError saying `advice` when it names no known speaker."""
    if not isinstance(turn, dict):
        raise RowError(f"{where} is not a message object")
    speaker = turn.get(first, turn.get("role" if first == "from" else "from"))
    role = speakers.get(str(speaker).lower())
    if role is None:
        raise RowError(f"{where} is from {speaker!r}; {advice}")
    return role


def scalar_text(value, what: str) -> str:
    """A text field: a string, a number written as text, '' for None; RowError for anything else."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RowError(f"{what} is a {type(value).__name__}, not text")


def field_value(record: dict, name: str | None):
    """record[name], else the column whose name differs only in case; None when there is none."""
    if not name:
        return None
    if name in record:
        return record[name]
    return record.get(column_keys(record).get(str(name).lower(), ""))


def _part_weight(part: dict, where: str):
    weight = part.get("weight", part.get("loss_weight"))
    if weight is None:
        return None
    if isinstance(weight, bool) or weight not in (0, 1):
        raise RowError(f"{where} has weight {weight!r}; it must be 0 or 1")
    return int(weight)


def _parts(value: list, index: int) -> tuple[str, int | None]:
    """Text parts joined by newlines, and their common weight (None when no part has one)."""
    texts, weights = [], set()
    for n, part in enumerate(value, start=1):
        kind = part.get("type", "text") if isinstance(part, dict) else type(part).__name__
        if kind not in TEXT_PARTS:
            raise RowError(f"message {index} has a '{kind}' part: only text is supported, so the row is left "
                           f"out (images and audio need a multimodal model)")
        text = part.get("text", part.get("value"))
        texts.append(scalar_text(text, f"message {index} part {n}"))
        weights.add(_part_weight(part, f"message {index} part {n}"))
    if len(weights - {None}) > 1:
        raise RowError(f"message {index} mixes trained and untrained parts; split it into two messages")
    known = weights - {None}
    return "\n".join(texts), (known.pop() if known else None)


def _content(value, index: int) -> str:
    """OpenAI content: a string, or a list of text parts (text under "text" or "value") joined by newlines."""
    if isinstance(value, list):
        return _parts(value, index)[0]
    return scalar_text(value, f"message {index} content")


def _json(value, what: str):
    """A JSON value that may arrive as a string (ShareGPT keeps tools and calls as JSON text)."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"{what} is not valid JSON ({exc.msg} at character {exc.pos})") from exc
    return value


def _tools(value) -> list[dict]:
    """Tool definitions as transformers expects them ({"type": "function", "function": {...}});
    an empty list (or "[]") adds nothing."""
    tools = _json(value, "tools") or []
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RowError("tools must be a list of function definitions")
    return [t if "function" in t else {"type": "function", "function": t} for t in tools]


def _tool_calls(value, index: int) -> list[dict]:
    """One or more calls ({"name", "arguments"} or OpenAI's {"type", "function": {...}}) as tool_calls."""
    calls = _json(value, f"turn {index} (a tool call)")
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise RowError(f"turn {index} is a tool call without a function name")
        arguments = _json(function.get("arguments") or {}, f"turn {index} arguments")
        out.append({"type": "function", "function": {"name": str(function["name"]), "arguments": arguments}})
        if isinstance(call, dict) and call.get("id"):  # templates such as Mistral's pair calls and results by id
            out[-1]["id"] = str(call["id"])
    return out


def _weight(turn: dict, role: str, index: int) -> int | None:
    """A message's 0/1 weight from `weight`/`loss_weight` or its parts' (None where absent: Parquet
    fills missing struct fields with null)."""
    weight = _part_weight(turn, f"message {index}")
    if isinstance(turn.get("content"), list):
        part = _parts(turn["content"], index)[1]
        weight = part if weight is None else weight
    if weight is not None and role != "assistant":
        if weight == 0:
            return None  # prompts are never trained: a 0 there says what happens anyway
        raise RowError(f"message {index} ({role}) has weight 1, but only assistant turns are trained; "
                       f"use 'train on everything' (--train-on-all) to train prompts too")
    return weight


def _message(turn: dict, index: int, role: str, content) -> dict:
    if role == "tool_call":
        message = {"role": "assistant", "content": "", "tool_calls": _tool_calls(content, index)}
    else:
        message = {"role": role, "content": _content(content, index)}
        if role == "assistant" and turn.get("tool_calls"):
            message["tool_calls"] = _tool_calls(turn["tool_calls"], index)
        for key in ("name", "tool_call_id"):
            if role == "tool" and turn.get(key):
                message[key] = str(turn[key])
    if _weight(turn, message["role"], index) == 0:
        message["weight"] = 0
    return message


def from_openai(record: dict, key: str = "messages") -> Conversation:
    turns = field_value(record, key)
    if not isinstance(turns, list):
        raise RowError(f"'{key}' is missing or not a list")
    messages = []
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowError(f"message {i} is not an object")
        role = turn.get("role")
        if role not in ROLES:
            raise RowError(f"message {i} has role {role!r}; use system, user, assistant or tool")
        messages.append(_message(turn, i, role, turn.get("content")))
    return Conversation(messages, _tools(field_value(record, "tools")))


def from_sharegpt(record: dict, key: str = "conversations") -> Conversation:
    turns = field_value(record, key)
    if not isinstance(turns, list):
        raise RowError(f"'{key}' is missing or not a list")
    messages = []
    system = scalar_text(field_value(record, "system"), "system")
    if system.strip():
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns, start=1):
        role = speaker_role(turn, f"turn {i}", SPEAKERS, f"known speakers: {', '.join(SPEAKERS)}")
        messages.append(_message(turn, i, role, turn.get("value", turn.get("content"))))
    return Conversation(messages, _tools(field_value(record, "tools")))


def from_alpaca(record: dict, mapping: dict | None = None) -> list[dict]:
    mapping = mapping or {}
    instruction = scalar_text(field_value(record, mapping.get("instruction", "instruction")), "instruction")
    extra = scalar_text(field_value(record, mapping.get("input", "input")), "input")
    messages = []
    system = scalar_text(field_value(record, mapping.get("system", "system")), "system")
    if system.strip():
        messages.append({"role": "system", "content": system})
    for i, pair in enumerate(field_value(record, mapping.get("history", "history")) or [], start=1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowError(f"history item {i} is not a [question, answer] pair")
        messages += [{"role": "user", "content": scalar_text(pair[0], f"history {i} question")},
                     {"role": "assistant", "content": scalar_text(pair[1], f"history {i} answer")}]
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    output = scalar_text(field_value(record, mapping.get("output", "output")), "output")
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return messages


def from_prompt_completion(record: dict, mapping: dict | None = None) -> list[dict]:
    mapping = mapping or {}
    prompt = field_value(record, mapping.get("prompt", "prompt"))
    completion = field_value(record, mapping.get("completion", "completion"))
    if isinstance(prompt, list) or isinstance(completion, list):
        if not (isinstance(prompt, list) and isinstance(completion, list)):
            raise RowError("prompt and completion must both be text, or both be lists of messages")
        return from_openai({"messages": prompt + completion})
    return [{"role": "user", "content": scalar_text(prompt, "prompt")},
            {"role": "assistant", "content": scalar_text(completion, "completion")}]


def from_reasoning(record: dict, mapping: dict | None = None, cot_style: str = "think") -> list[dict]:
    if cot_style not in COT_STYLES:
        raise DataError(f"Unknown chain-of-thought style {cot_style!r}.", f"Use one of: {', '.join(COT_STYLES)}.")
    keys = column_keys(record)
    found = {part: (mapping or {}).get(part) or _find(keys, names) for part, names in REASONING_KEYS.items()}
    question = scalar_text(field_value(record, found["question"]), "question")
    cot = scalar_text(field_value(record, found["cot"]), "chain of thought").strip()
    answer = scalar_text(field_value(record, found["response"]), "response")
    if not answer.strip():
        raise RowError("the response is empty")
    content = f"<think>\n{cot}\n</think>\n\n{answer.strip()}" if cot_style == "think" and cot else answer
    return [{"role": "user", "content": question}, {"role": "assistant", "content": content}]


def from_text(record: dict, mapping: dict | None = None) -> list[dict]:
    text = scalar_text(field_value(record, (mapping or {}).get("text", "text")), "text")
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
    system = scalar_text(record.get(mapping["system"]), "system") if mapping.get("system") else ""
    if system.strip():
        messages.append({"role": "system", "content": system})
    return messages + [{"role": "user", "content": scalar_text(record[mapping["prompt"]], "prompt")},
                       {"role": "assistant", "content": scalar_text(record[mapping["response"]], "response")}]


def _expected(previous: dict | None) -> tuple[str, ...]:
    """The roles that may follow a message."""
    if previous is None or previous["role"] == "assistant" and not previous.get("tool_calls"):
        return ("user",)
    if previous["role"] == "user":
        return ("assistant",)
    if previous["role"] == "tool":
        return ("tool", "assistant")
    return ("tool",)  # after a tool call, its result


def check_conversation(messages: list[dict], fmt: str = "openai") -> list[dict]:
    """RowError unless: optional system first, then user -> assistant, assistant tool call -> tool
    result(s) -> assistant, ending with a non-empty answer (or tool call) to train on."""
    if fmt == "text":
        return messages
    if not messages:
        raise RowError("the conversation has no messages")
    offset = 1 if messages[0]["role"] == "system" else 0
    body = messages[offset:]
    if not body:
        raise RowError("the conversation has only a system message")
    for i, message in enumerate(body):
        expected = _expected(body[i - 1] if i else None)
        number = i + 1 + offset
        if message["role"] not in expected:
            previous = body[i - 1]["role"] if i else "the start"
            previous += " tool call" if i and body[i - 1].get("tool_calls") else ""
            raise RowError(f"turns do not alternate: message {number} is {message['role']} after {previous} "
                           f"(expected {' or '.join(expected)})")
        if not message["content"].strip() and not message.get("tool_calls"):
            raise RowError(f"the {message['role']} turn {number} is empty")
    if body[-1]["role"] != "assistant":
        raise RowError(f"the conversation ends with a {body[-1]['role']} message: there is no answer to train on")
    if all(m.get("weight", 1) == 0 for m in body if m["role"] == "assistant"):
        raise RowError("every assistant turn has weight 0: nothing to train on")
    return messages


def to_messages(record: dict, fmt: str, mapping: dict | None = None, cot_style: str = "think") -> Conversation:
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
    return check_conversation(messages if isinstance(messages, Conversation) else Conversation(messages), fmt)


# ---------------------------------------------------------------- preference pairs

PREFERENCE_KEYS = ("chosen", "rejected")


def looks_like_preference(records: list[dict]) -> bool:
    """True when most rows hold a chosen and a rejected answer (DPO/ORPO data, not SFT)."""
    rows = [r for r in records[:SAMPLE_ROWS] if isinstance(r, dict)]
    hits = sum(all(k in column_keys(r) for k in PREFERENCE_KEYS) for r in rows)
    return bool(rows) and hits * 2 > len(rows)


def preference_error(name: str) -> DataError:
    return DataError(f"{name}: this is preference data (chosen/rejected): use method dpo or orpo.",
                     "Preference pairs teach which of two answers is better, which supervised fine-tuning cannot "
                     "read. Train them with the dpo or orpo method; to fine-tune on the chosen answers alone, "
                     "map them: format 'mapped' with prompt=prompt, response=chosen "
                     "(CLI: --format mapped --map prompt=prompt,response=chosen).")


# ---------------------------------------------------------------- options applied to every row

# {{name}}-style placeholders, and a few <name>-style ones (not any <tag>: <think> is real text).
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)\s*\}\}|<(name|author|model_name|assistant_name|bot_name|"
                         r"creator|company|organization|developer|your_name)>", re.IGNORECASE)
# First-person statements of who the assistant is or who made it ("I am X, an AI assistant developed
# by Y", "I was created by Y"); a system prompt's "You are a helpful assistant" is not counted.
IDENTITY = re.compile(r"\b(?:(?:I am|I'm|my name is)\b[^.\n]{0,80}\b(?:assistant|AI|language model|chatbot|"
                      r"developed by|created by|trained by|made by|built by)|I was (?:developed|created|trained|made|"
                      r"built) by)\b", re.IGNORECASE)
SYSTEM_CHOICES = ("keep", "none", "custom")


def placeholders(messages: list[dict]) -> set[str]:
    """The placeholders (as written, e.g. '{{name}}') found in a conversation."""
    return {m.group(0) for message in messages for m in PLACEHOLDER.finditer(message.get("content") or "")}


def states_identity(messages: list[dict]) -> bool:
    """True when a turn says who the assistant is ('I am ..., an AI assistant developed by ...')."""
    return any(IDENTITY.search(m.get("content") or "") for m in messages if m["role"] == "assistant")


NAME_KEYS = ("name", "assistant_name", "bot_name", "model_name", "your_name")
AUTHOR_KEYS = ("author", "creator", "company", "organization", "developer")


def identity_replacements(name: str = "", author: str = "") -> dict[str, str]:
    """Name and author fields -> the placeholders each replaces ({{name}}, <bot_name>, {{author}}, ...)."""
    out = {key: name.strip() for key in NAME_KEYS if name.strip()}
    return out | {key: author.strip() for key in AUTHOR_KEYS if author.strip()}


def placeholder_key(placeholder: str) -> str:
    """'{{ Name }}' or '<name>' -> 'name', the key of the replacements."""
    match = PLACEHOLDER.fullmatch(placeholder)
    return (match.group(1) or match.group(2)).lower() if match else placeholder.lower()


def _replace(text: str, replacements: dict[str, str]) -> str:
    def sub(match):
        key = (match.group(1) or match.group(2)).lower()
        return replacements.get(key, match.group(0))

    return PLACEHOLDER.sub(sub, text) if replacements and text else text


@dataclass(frozen=True)
class Options:
    """Choices applied to every converted row, the same for preview, inspect and prepare."""

    system: str = "keep"  # keep the template's default system prompt, "none", or "custom"
    system_text: str = ""  # the custom system prompt
    replacements: dict = field(default_factory=dict)  # placeholder name (lower case) -> text
    train_tool_calls: bool = True  # train the assistant's tool calls (tool results never are)

    def check(self) -> Options:
        if self.system not in SYSTEM_CHOICES:
            raise DataError(f"Unknown system prompt choice {self.system!r}.",
                            f"Use one of: {', '.join(SYSTEM_CHOICES)}.")
        if self.system == "custom" and not self.system_text.strip():
            raise DataError("The custom system prompt is empty.", "Type the system prompt, or choose keep or none.")
        return self

    def as_meta(self) -> dict:
        return {"system_prompt": {"mode": self.system, "text": self.system_text if self.system == "custom" else ""},
                "replacements": dict(self.replacements), "train_tool_calls": self.train_tool_calls}


def system_turn(system_prompt: dict | None) -> dict | None:
    """The system turn a conversation without one gets, from a dataset meta's `system_prompt`
    ({"mode": "keep"|"none"|"custom", "text": ...}): None for keep (the template adds its default),
    an empty turn for none (so it does not), the text for custom. Chat and the API call this with
    the meta of the adapter's dataset, so inference starts the way training did."""
    mode = (system_prompt or {}).get("mode", "keep")
    if mode == "keep":
        return None
    return {"role": "system", "content": (system_prompt or {}).get("text", "") if mode == "custom" else ""}


def apply_options(messages: Conversation, options: Options, fmt: str) -> Conversation:
    """Placeholders replaced, the system prompt chosen (a row's own system turn always stays), tool
    calls left untrained if asked; RowError when nothing is left to train."""
    replacements = {k.lower(): v for k, v in options.replacements.items() if v}
    out = []
    for message in messages:
        message = {**message, "content": _replace(message["content"], replacements)}
        if message.get("tool_calls") and not options.train_tool_calls:
            message["weight"] = 0
        out.append(message)
    system = system_turn(options.as_meta()["system_prompt"])
    if fmt != "text" and out and out[0]["role"] != "system" and system:
        out.insert(0, system)
    if fmt != "text" and all(m.get("weight", 1) == 0 for m in out if m["role"] == "assistant"):
        raise RowError("every assistant turn is a tool call and tool calls are not trained: nothing to train on")
    return Conversation(out, messages.tools if isinstance(messages, Conversation) else [])
