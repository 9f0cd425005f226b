"""Conversations through the chat template: text, loss masks, token counts, split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np


def apply_template(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as the model sees it, through the template studio.templates chose."""
    from studio import templates

    return templates.apply(tokenizer, messages, add_generation_prompt)


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
                       "chat_template": _template(tokenizer)}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]  # 64 bits: collisions are not a concern


def _template(tokenizer) -> str:
    from studio import templates

    return templates.current(tokenizer).template


# ---------------------------------------------------------------- rendering with trained spans


def _marked(messages: list[dict], train_on_all: bool) -> list[dict]:
    out = []
    for m in messages:
        trained = m["role"] == "assistant" and m.get("weight", 1) != 0 and not train_on_all
        out.append({"role": m["role"], "content": f"{_START}{m['content']}{_END}" if trained else m["content"]})
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


def _spans_by_prefix(tokenizer, messages: list[dict]) -> list[list[int]] | None:
    """Fallback: the text each trained turn adds to the rendering of the turns before it."""
    full = apply_template(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        before = apply_template(tokenizer, messages[:i], add_generation_prompt=True)
        upto = apply_template(tokenizer, messages[: i + 1])
        content = m["content"].strip()  # templates often trim; the turn's own text is what is trained
        start = upto.find(content, len(before))
        if not (full.startswith(upto) and upto.startswith(before)) or start < 0:
            return None
        spans.append([start, start + len(content)])
    return spans


def _spans_by_search(text: str, messages: list[dict]) -> list[list[int]]:
    """Last resort: find each turn's text in order (templates that rewrite earlier turns)."""
    spans, cursor = [], 0
    for m in messages:
        content = m["content"].strip()
        found = text.find(content, cursor)
        if found < 0:
            continue
        cursor = found + len(content)
        if m["role"] == "assistant" and m.get("weight", 1) != 0:
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
    (each trained assistant turn's content plus its end-of-turn token). Exact: the text is what
    apply_template gives; the spans come from marks that ride through the template, checked
    against a plain rendering, else from prefix rendering, else from an ordered search."""
    plain = apply_template(tokenizer, messages)
    if train_on_all:
        return plain, [[0, len(plain)]]
    text, spans = None, None
    if not any(_START in m["content"] or _END in m["content"] for m in messages):
        text, spans = _strip_marks(apply_template(tokenizer, _marked(messages, False)))
    if text != plain:
        spans = _spans_by_prefix(tokenizer, messages) or _spans_by_search(plain, messages)
    return plain, _with_end_of_turn(plain, spans, _end_tokens(tokenizer))


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
    length: int  # tokens before truncation
    text: str  # the rendered text (before truncation)


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
        out.append(Rendered(list(ids[:max_len]), mask[:max_len], len(ids), text))
    return out


def render_conversation(tokenizer, messages: list[dict], max_len: int,
                        train_on_all: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, assistant_masks) for one conversation, truncated to max_len; mask 1 = trained."""
    rendered = render_batch(tokenizer, [messages], max_len, train_on_all)[0]
    return rendered.input_ids, rendered.assistant_masks


def render_plain_batch(tokenizer, texts: list[str], max_len: int) -> list[Rendered]:
    """Raw text for continued pre-training: the tokenizer's own special tokens plus an end-of-text
    token, every token trained."""
    enc = tokenizer(list(texts), add_special_tokens=True)
    out = []
    for ids, text in zip(enc["input_ids"], texts, strict=True):
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = [*ids, tokenizer.eos_token_id]
        out.append(Rendered(ids[:max_len], [1] * min(len(ids), max_len), len(ids), text))
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
