"""The OpenAI-compatible API mounted under /v1 of the running app: same process and same engine as the
Chat tab (the base the Chat tab loaded is the one the API serves, with the workspace's adapters)."""

from __future__ import annotations

import openai
import pytest


def test_the_app_serves_the_chat_tabs_engine_under_v1(app_url, tiny_model_dir):
    from gradio_client import Client

    loaded = Client(app_url, verbose=False).predict(str(tiny_model_dir), "fp32", [], api_name="/load_adapters")
    assert "loaded in" in loaded
    api = openai.OpenAI(base_url=f"{app_url.rstrip('/')}/v1", api_key="none", max_retries=0)
    ids = [m.id for m in api.models.list().data]
    assert ids[0] == tiny_model_dir.name  # the base the Chat tab loaded, not a second copy of another
    reply = api.chat.completions.create(model=ids[0], messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                        temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 4
    streamed = api.chat.completions.create(model=ids[0], messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=4, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == reply.choices[0].message.content
    with pytest.raises(openai.NotFoundError) as unknown:
        api.chat.completions.create(model="no-such", messages=[{"role": "user", "content": "Hi"}])
    assert unknown.value.code == "model_not_found"
