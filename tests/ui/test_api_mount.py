"""The OpenAI-compatible API mounted under /v1 of the running app: same process, and the engine the Model
tab loaded (shown in its info table), which the Chat tab shares; another model the Chat tab loads does
not change what /v1 serves."""

from __future__ import annotations

import openai
import pytest


def test_the_app_serves_the_model_tabs_engine_under_v1(app_url, tiny_model_dir, other_tiny_model_dir):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    info = client.predict(str(tiny_model_dir), "fp32", api_name="/load_model")
    assert f"serves this model as '{tiny_model_dir.name}'" in info  # the page says what /v1 serves
    loaded = client.predict(str(other_tiny_model_dir), "fp32", [], api_name="/load_adapters")  # Chat, elsewhere
    assert "loaded in" in loaded
    api = openai.OpenAI(base_url=f"{app_url.rstrip('/')}/v1", api_key="none", max_retries=0)
    ids = [m.id for m in api.models.list().data]
    assert ids[0] == tiny_model_dir.name  # the Model tab's base, not the last one another tab loaded
    reply = api.chat.completions.create(model=ids[0], messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                        temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 4
    streamed = api.chat.completions.create(model=ids[0], messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=4, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == reply.choices[0].message.content
    with pytest.raises(openai.NotFoundError) as unknown:
        api.chat.completions.create(model="no-such", messages=[{"role": "user", "content": "Hi"}])
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as other:
        api.chat.completions.create(model=other_tiny_model_dir.name, messages=[{"role": "user", "content": "Hi"}])
    assert "chosen in the Model tab" in other.value.message
