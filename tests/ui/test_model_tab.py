"""The app as `make run` launches it, driven with gradio_client: load the bundled model in 4-bit, generate."""

from __future__ import annotations


def test_load_bundled_in_4bit_and_generate(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    info = client.predict("bundled", "4bit", api_name="/load_model")
    assert "| quant | 4bit |" in info and "LlamaForCausalLM" in info
    assert "| chat_template | The tokenizer's own chat template" in info  # which template, and why
    assert "end of turn `<\\|im_end\\|>`" in info  # tokens shown as code; their pipes do not split the cell
    answer = client.predict("bundled", "4bit", "What are the symptoms of type 2 diabetes?", 48, api_name="/generate")
    assert len(answer.split()) >= 10
    assert any(word in answer.lower() for word in ("thirst", "urination", "blood sugar", "fatigue", "glucose",
                                                   "diabetes", "weight"))
