"""Conversations through the chat template: text, loss masks, token counts, split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np


def apply_template(tokenizer, messages: list[dict], add_generation_prompt: bool = False,
                   tools: list[dict] | None = None) -> str:
    """The conversation as the model sees it, through its chat template (ChatML when it has none);
    tool definitions go to the template's `tools` argument, tool calls and names stay on their turns."""
    clean = [{k: m[k] for k in ("role", "content", "tool_calls", "name", "tool_call_id") if k in m} for m in messages]
    return tokenizer.apply_chat_template(clean, chat_template=_chat_template(tokenizer, bool(tools)), tokenize=False,
                                         tools=tools or None, add_generation_prompt=add_generation_prompt)


def _chat_template(tokenizer, tools: bool = False) -> str:
    """The template text used for this tokenizer (the single place that asks which one): its own `tool_use`
    template when tools are given and it has one."""
    from studio import templates

    return templates.current(tokenizer).for_tools(tools)  # own, the family's, or the generic fallback


# ---------------------------------------------------------------- tools: native or the fallback

_PROBE_TOOLS = [{"type": "function", "function": {"name": "probe_tool_def", "description": "A probe.",
                                                  "parameters": {"type": "object", "properties": {}}}}]
_PROBE = [{"role": "user", "content": "hi"},
          {"role": "assistant", "content": "",
           "tool_calls": [{"type": "function", "function": {"name": "probe_call_fn", "arguments": {"x": 1}}}]},
          {"role": "tool", "content": "probe_tool_result"}, {"role": "assistant", "content": "ok"}]
_TOOL_SUPPORT: dict[str, bool] = {}
TOOL_FALLBACK_NOTE = ("This model's chat template has no tool support, so tool calling is written as text "
                      "(the Hermes/Qwen convention): the tool definitions go into the system turn inside "
                      "`<tools>...</tools>`, each tool call into the assistant's text as `<tool_call>{\"name\": ..., "
                      "\"arguments\": ...}</tool_call>`, and tool results into a user turn inside "
                      "`<tool_response>...</tool_response>` (see docs/data.md).")


def supports_tools(tokenizer) -> bool:
    """True when the chat template renders tool definitions, tool calls and tool results itself."""
    template = _chat_template(tokenizer, tools=True)
    if template not in _TOOL_SUPPORT:
        try:
            text = tokenizer.apply_chat_template(_PROBE, tools=_PROBE_TOOLS, chat_template=template, tokenize=False)
            _TOOL_SUPPORT[template] = all(p in text for p in ("probe_tool_def", "probe_call_fn", "probe_tool_result"))
        except Exception:  # a template that raises on tool turns (jinja raise_exception) has no support
            _TOOL_SUPPORT[template] = False
    return _TOOL_SUPPORT[template]


def uses_tools(messages: list[dict]) -> bool:
    return bool(getattr(messages, "tools", None)) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def _call_text(call: dict) -> str:
    function = call.get("function", call)
    body = {"name": function["name"], "arguments": function.get("arguments") or {}}
    return f"<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"


def tool_fallback(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Tool turns as plain system/user/assistant text, for templates without tool support
    (TOOL_FALLBACK_NOTE says how)."""
    out: list[dict] = []
    for m in messages:
        if m["role"] == "tool":
            text = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("_results"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "_results": True})
        elif m.get("tool_calls"):
            pieces = ([m["content"]] if m["content"].strip() else []) + [_call_text(c) for c in m["tool_calls"]]
            out.append({**{k: v for k, v in m.items() if k != "tool_calls"}, "content": "\n".join(pieces)})
        else:
            out.append(dict(m))
    out = [{k: v for k, v in m.items() if k != "_results"} for m in out]
    if tools:
        block = ("# Tools\n\nYou may call these functions. Write each call as <tool_call>{\"name\": ..., "
                 "\"arguments\": ...}</tool_call>.\n<tools>\n"
                 + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools) + "\n</tools>")
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}".strip()}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def for_template(tokenizer, messages: list[dict]) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) as this tokenizer's template takes them: native tool turns where it
    supports them, else the documented text fallback."""
    tools = getattr(messages, "tools", None) or None
    if not uses_tools(messages) or supports_tools(tokenizer):
        return list(messages), tools
    return tool_fallback(messages, tools), None


def default_system_prompt(tokenizer) -> str:
    """The system prompt the template adds when a conversation has none ('' when it adds none)."""
    user = [{"role": "user", "content": "\ue002"}]
    try:
        alone = apply_template(tokenizer, user)
        marked = apply_template(tokenizer, [{"role": "system", "content": "\ue003"}, *user])
        empty = apply_template(tokenizer, [{"role": "system", "content": ""}, *user])
    except Exception:  # a template that refuses a system turn has no default to show
        return ""
    before, _, after = marked.partition("\ue003")
    if alone == empty or not (alone.startswith(before) and alone.endswith(after)):
        return ""
    return alone[len(before):len(alone) - len(after)].strip()


# ---------------------------------------------------------------- warnings and fingerprints

# Private-use characters that mark where trained text starts and ends while the template renders.
_START, _END = "\ue000", "\ue001"


def template_warning(tokenizer) -> str:
    """Which template is used and why (studio.templates), shown wherever a user meets the template."""
    from studio import templates

    return templates.describe(tokenizer)


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of vocab size, special tokens and chat template: a dataset prepared with one
    tokenizer must not be trained with another."""
    specials = sorted((str(t), int(tokenizer.convert_tokens_to_ids(t))) for t in tokenizer.all_special_tokens)
    blob = json.dumps({"vocab_size": len(tokenizer), "special_tokens": specials,
                       "chat_template": _chat_template(tokenizer)}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]  # 64 bits: collisions are not a concern


# ---------------------------------------------------------------- rendering with trained spans


def _trained(m: dict, calls: bool) -> bool:
    return m["role"] == "assistant" and m.get("weight", 1) != 0 and bool(m.get("tool_calls")) == calls


def _marked(messages: list[dict], train_on_all: bool) -> list[dict]:
    out = []
    for m in messages:
        trained = _trained(m, calls=False) and not train_on_all
        out.append({**m, "content": f"{_START}{m['content']}{_END}" if trained else m["content"]})
    return out


def _strip_marks(marked_text: str) -> tuple[str, list[list[int]]]:
    """Remove the marks; return the clean text and the [start, end) of each marked piece."""
    clean, spans, pos = [], [], 0
    for i, piece in enumerate(marked_text.split(_START)):
        if i:
            inside, _, after = piece.partition(_END)
            spans.append([pos, pos + len(inside)])
            clean += [inside, after]
            pos += len(inside) + len(after)
        else:
            clean.append(piece)
            pos += len(piece)
    return "".join(clean), spans


def _spans_by_prefix(tokenizer, messages: list[dict], tools, full: str, calls: bool = False
                     ) -> list[list[int]] | None:
    """The text each trained turn adds to the rendering of the turns before it: the turn's own
    content for answers (the fallback for templates that rewrite marks), everything the turn
    adds (calls and end-of-turn token) for tool calls, whose text the template writes itself."""
    spans = []
    for i, m in enumerate(messages):
        if not _trained(m, calls):
            continue
        before = apply_template(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        upto = apply_template(tokenizer, messages[: i + 1], tools=tools)
        consistent = full.startswith(upto) and upto.startswith(before)
        if calls:  # a call the template renders differently in a prefix stays untrained; the others count
            spans += [[len(before), len(upto.rstrip())]] if consistent else []
            continue
        if not consistent:
            return None
        content = m["content"].strip()  # templates often trim; the turn's own text is what is trained
        start = upto.find(content, len(before))
        if start < 0:
            return None
        spans.append([start, start + len(content)])
    return spans


def _spans_by_search(text: str, messages: list[dict]) -> list[list[int]]:
    """Last resort: find each turn's text in order (templates that rewrite earlier turns)."""
    spans, cursor = [], 0
    for m in messages:
        content = m["content"].strip()
        found = text.find(content, cursor) if content else -1
        if found < 0:
            continue
        cursor = found + len(content)
        if _trained(m, calls=False):
            spans.append([found, cursor])
    return spans


def _with_end_of_turn(text: str, spans: list[list[int]], specials: list[str]) -> list[list[int]]:
    """Extend each span over the end-of-turn token that follows it (after optional spaces)."""
    for span in spans:
        after = span[1]
        while after < len(text) and text[after] in " \t":
            after += 1
        token = next((s for s in specials if text.startswith(s, after)), None)
        if token:
            span[1] = after + len(token)
    return spans


def render_text(tokenizer, messages: list[dict], train_on_all: bool = False) -> tuple[str, list[list[int]]]:
    """The conversation through the chat template, and the character spans that are trained
    (each trained assistant turn's content plus its end-of-turn token; a trained tool call whole).
    Exact: the text is what apply_template gives; answer spans come from marks that ride through
    the template, checked against a plain rendering, else from prefix rendering, else from an
    ordered search; tool-call spans from prefix rendering. Tool turns go through `for_template`."""
    messages, tools = for_template(tokenizer, messages)
    plain = apply_template(tokenizer, messages, tools=tools)
    if train_on_all:
        return plain, [[0, len(plain)]]
    spans = None
    if not any(_START in m["content"] or _END in m["content"] for m in messages):
        text, spans = _strip_marks(apply_template(tokenizer, _marked(messages, False), tools=tools))
        spans = spans if text == plain else None
    if spans is None:
        spans = _spans_by_prefix(tokenizer, messages, tools, plain) or _spans_by_search(plain, messages)
    calls = _spans_by_prefix(tokenizer, messages, tools, plain, calls=True) or []
    return plain, _with_end_of_turn(plain, sorted(spans + calls), _end_tokens(tokenizer))


def _end_tokens(tokenizer) -> list[str]:
    """Tokens that may end a trained turn: the template's end of turn, EOS and the other specials."""
    from studio import templates

    end = templates.current(tokenizer).end_of_turn
    specials = {str(t) for t in tokenizer.all_special_tokens} | ({end} if end else set())
    return sorted(specials, key=len, reverse=True)


@dataclass
class Rendered:
    input_ids: list[int]  # truncated to max_len
    assistant_masks: list[int]  # 1 = trained token
    length: int  # tokens before truncation (of the whole document, for a chunk)
    text: str  # the rendered text (before truncation)
    dropped: int = 0  # tokens cut off at max_len (0 for chunks: they keep every token)


def _mask_from_offsets(offsets, spans: list[list[int]]) -> list[int]:
    """1 for every token whose characters overlap a trained span (as TRL's char_to_token masks do)."""
    if not len(offsets):
        return []
    arr = np.asarray(offsets, dtype=np.int64)
    starts, ends = arr[:, 0], arr[:, 1]
    mask = np.zeros(len(arr), dtype=bool)
    for lo, hi in spans:
        mask |= (starts < hi) & (ends > lo) & (ends > starts)
    return mask.astype(np.int8).tolist()


def _mask_by_pieces(tokenizer, text: str, spans: list[list[int]]) -> tuple[list[int], list[int]]:
    """For tokenizers without offsets (slow ones): tokenize the pieces between span edges."""
    ids, mask, pos = [], [], 0
    for start, end in [*spans, [len(text), len(text)]]:
        for piece, flag in ((text[pos:start], 0), (text[start:end], 1)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                mask += [flag] * len(piece_ids)
        pos = end
    return ids, mask


def render_batch(tokenizer, conversations: list[list[dict]], max_len: int,
                 train_on_all: bool = False) -> list[Rendered]:
    """Render, tokenize (one batched call) and mask many conversations."""
    rendered = [render_text(tokenizer, c, train_on_all) for c in conversations]
    texts, spans = [r[0] for r in rendered], [r[1] for r in rendered]
    out = []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        pairs = [(ids, _mask_from_offsets(off, s)) for ids, off, s in
                 zip(enc["input_ids"], enc["offset_mapping"], spans, strict=True)]
    else:
        pairs = [_mask_by_pieces(tokenizer, t, s) for t, s in zip(texts, spans, strict=True)]
    from studio import templates

    for (ids, mask), text in zip(pairs, texts, strict=True):
        bos_ids = templates.with_bos(tokenizer, ids)  # BOS exactly once where the tokenizer expects it
        shift = len(bos_ids) - len(ids)  # +1: a BOS was added (not trained); -k: duplicate BOS dropped
        mask = [0] * shift + list(mask) if shift >= 0 else list(mask)[-shift:]
        ids = bos_ids
        out.append(Rendered(list(ids[:max_len]), mask[:max_len], len(ids), text, max(0, len(ids) - max_len)))
    return out


def render_conversation(tokenizer, messages: list[dict], max_len: int,
                        train_on_all: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, assistant_masks) for one conversation, truncated to max_len; mask 1 = trained."""
    rendered = render_batch(tokenizer, [messages], max_len, train_on_all)[0]
    return rendered.input_ids, rendered.assistant_masks


LONG_DOCS = ("chunk", "cut")  # raw text over max_len: split into max_len chunks, or cut at max_len


def render_plain_batch(tokenizer, texts: list[str], max_len: int, long_docs: str = "chunk") -> list[list[Rendered]]:
    """Raw text for continued pre-training: the tokenizer's own special tokens plus an end-of-text
    token, every token trained. A document over max_len becomes consecutive max_len chunks ("chunk";
    a last chunk of one token teaches nothing and is dropped) or is cut ("cut"); each document
    gives a list of rows."""
    if long_docs not in LONG_DOCS:
        raise ValueError(f"long_docs must be one of {LONG_DOCS}")
    enc = tokenizer(list(texts), add_special_tokens=True)
    out = []
    for ids, text in zip(enc["input_ids"], texts, strict=True):
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = [*ids, tokenizer.eos_token_id]
        if len(ids) <= max_len or long_docs == "cut":
            out.append([Rendered(ids[:max_len], [1] * min(len(ids), max_len), len(ids), text,
                                 max(0, len(ids) - max_len))])
            continue
        chunks = [ids[i:i + max_len] for i in range(0, len(ids), max_len)]
        tail = len(chunks[-1]) if len(chunks[-1]) < 2 else 0
        chunks = chunks[:-1] if tail else chunks
        out.append([Rendered(c, [1] * len(c), len(ids), text, tail if n == len(chunks) - 1 else 0)
                    for n, c in enumerate(chunks)])
    return out


def highlight(tokenizer, input_ids: list[int], mask: list[int]) -> list[tuple[str, str | None]]:
    """Runs of decoded text labelled 'trained' or None, for gr.HighlightedText and the CLI."""
    runs: list[tuple[str, str | None]] = []
    start = 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or mask[i] != mask[start]:
            text = tokenizer.decode(input_ids[start:i], skip_special_tokens=False)
            runs.append((text, "trained" if mask[start] else None))
            start = i
    return runs


# ---------------------------------------------------------------- statistics and split


def token_stats(lengths: list[int], max_len: int, bins: int = 20) -> dict:
    """Length summary and a histogram (bins equal-width buckets) of tokens per row."""
    if not len(lengths):
        return {"rows": 0}
    arr = np.asarray(lengths)
    counts, edges = np.histogram(arr, bins=bins)
    over = int((arr > max_len).sum())
    return {"rows": int(arr.size), "total_tokens": int(arr.sum()), "min": int(arr.min()),
            "mean": round(float(arr.mean()), 1), "median": int(np.median(arr)),
            "p95": int(np.percentile(arr, 95)), "max": int(arr.max()), "max_len": max_len,
            "over_max_len": over, "over_max_len_share": round(over / arr.size, 4),
            "histogram": {"edges": [round(float(e), 1) for e in edges], "counts": counts.tolist()}}


def split_indices(n: int, eval_split: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded train/eval split of row indices 0..n-1 (eval keeps at least 1 row when asked for,
    train keeps at least 1 row); each list is in file order."""
    if not 0 <= eval_split < 1:
        raise ValueError("eval_split must be in [0, 1)")
    n_eval = 0 if eval_split == 0 or n < 2 else min(max(1, round(n * eval_split)), n - 1)
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_eval].tolist())
    return [i for i in range(n) if i not in chosen], sorted(chosen)
