"""Conversations through the chat template: text, loss masks, token counts, split."""

from __future__ import annotations

# ChatML, used where a tokenizer has no chat template of its own (with a visible warning).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def apply_template(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as the model sees it, through its chat template (ChatML when it has none)."""
    template = tokenizer.chat_template or CHATML_TEMPLATE
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(clean, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
