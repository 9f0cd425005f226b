"""Rendering through the chat template: the text is exactly the template's, the mask trains exactly
the assistant answers plus their end-of-turn token."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.data import io
from studio.data.render import (
    apply_template,
    render_batch,
    render_conversation,
    render_text,
    split_indices,
    token_stats,
    tokenizer_fingerprint,
)
from studio.models import load_tokenizer

ASSETS = Path(__file__).resolve().parents[2] / "assets"

CONVO = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Namaste!"},
         {"role": "assistant", "content": "Namaste, kaise ho?"}, {"role": "user", "content": "Theek."},
         {"role": "assistant", "content": "Badhiya."}]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def runs(tok, ids, mask):
    out, cur = [], []
    for i, k in zip(ids, mask, strict=True):
        if k:
            cur.append(i)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    return out + ([tok.decode(cur)] if cur else [])


def test_ids_are_the_template_text_and_mask_covers_answers_and_end_of_turn(tok):
    ids, mask = render_conversation(tok, CONVO, max_len=512)
    assert tok.decode(ids) == apply_template(tok, CONVO)
    assert runs(tok, ids, mask) == ["Namaste, kaise ho?<|im_end|>", "Badhiya.<|im_end|>"]


def test_weight_zero_turn_is_not_trained(tok):
    convo = [dict(m) for m in CONVO]
    convo[2]["weight"] = 0
    ids, mask = render_conversation(tok, convo, max_len=512)
    assert runs(tok, ids, mask) == ["Badhiya.<|im_end|>"]


def test_train_on_all_and_truncation(tok):
    ids, mask = render_conversation(tok, CONVO, max_len=512, train_on_all=True)
    assert set(mask) == {1}
    short_ids, short_mask = render_conversation(tok, CONVO, max_len=10)
    assert (len(short_ids), len(short_mask)) == (10, 10) and short_ids == ids[:10]


def test_rendered_text_matches_template_on_every_sample_row(tok):
    """The marks used to find answers never change the text: checked over both shipped samples."""
    from studio.data import formats

    for name, fmt in (("hinglish_demo.jsonl", "openai"), ("medical_demo.jsonl", "reasoning")):
        for record in io.read_records(ASSETS / name):
            messages = formats.to_messages(record, fmt)
            text, spans = render_text(tok, messages)
            assert text == apply_template(tok, messages)
            answers = [m["content"] for m in messages if m["role"] == "assistant"]
            assert [text[a:b] for a, b in spans] == [a + "<|im_end|>" for a in answers]


def test_family_chatml_when_tokenizer_has_no_template(tiny_model_dir):
    from studio.data.render import template_warning

    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = None
    assert "no chat template" in template_warning(tok)
    ids, mask = render_conversation(tok, CONVO[1:3], max_len=256)
    assert tok.decode(ids).startswith("<|im_start|>user\nNamaste!<|im_end|>")
    assert runs(tok, ids, mask) == ["Namaste, kaise ho?<|im_end|>"]


def test_template_that_trims_content_falls_back_exactly(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
                         "{% endfor %}")
    convo = [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "  trimmed answer  "}]
    ids, mask = render_conversation(tok, convo, max_len=256)
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\ntrimmed answer<|im_end|>\n"
    assert runs(tok, ids, mask) == ["trimmed answer<|im_end|>"]


def test_batch_reports_untruncated_length(tok):
    long = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 300}]
    rendered = render_batch(tok, [long, CONVO], max_len=64)
    assert rendered[0].length > 300 and len(rendered[0].input_ids) == 64
    assert rendered[1].length == len(rendered[1].input_ids)


def test_fingerprint_is_stable_and_sensitive_to_the_template(tiny_model_dir):
    a, b = load_tokenizer(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    b.chat_template = "{{ messages }}"
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)


def test_split_is_seeded_and_disjoint():
    train, evl = split_indices(100, 0.1, seed=42)
    assert len(evl) == 10 and not set(train) & set(evl) and len(train) + len(evl) == 100
    assert split_indices(100, 0.1, seed=42) == (train, evl)
    assert split_indices(100, 0.1, seed=7) != (train, evl)
    assert split_indices(5, 0.0, seed=1) == ([0, 1, 2, 3, 4], [])


def test_token_stats_share_over_max_len():
    stats = token_stats([10, 20, 30, 40], max_len=25)
    assert (stats["over_max_len"], stats["over_max_len_share"], stats["max"]) == (2, 0.5, 40)
    assert sum(stats["histogram"]["counts"]) == 4
