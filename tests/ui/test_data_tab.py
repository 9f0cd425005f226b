"""The Data tab through gradio_client, as a user drives it: upload the Hinglish sample, see the format
and the chat-template preview, save it, and find it in the dataset list."""

from __future__ import annotations

from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[2] / "assets"
SETTINGS = ["auto", "(none)", "(none)", "(none)", "think", "bundled", 1024, False]


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_upload_hinglish_sample_shows_format_preview_and_template(client):
    from gradio_client import handle_file

    out = client.predict(handle_file(str(ASSETS / "hinglish_demo.jsonl")), *SETTINGS, api_name="/upload_data")
    (path, evidence, _p, _r, _s, preview, counts, _problems, _file, _plot, stats, row, template, _notes) = out
    assert path.endswith("hinglish_demo.jsonl")
    assert "Detected format: openai" in evidence and "106 of 106" in evidence
    assert preview["data"][0][:2] == [1, 3] and preview["data"][0][3] == "Chai banane ka sahi tarika kya hai?"
    assert "106 rows read: 106 ok, 0 invalid" in counts
    assert "0 rows (0.0%) are over the max length" in stats
    assert row == 1
    trained = [piece["token"] for piece in template if piece["class_or_confidence"] == "trained"]
    assert trained == ["Ek cup paani ubaalo, usme adrak aur elaichi daalo, phir ek chammach chai patti daal ke "
                       "2 minute pakao. Doodh aur cheeni daalo, ek ubaal aane do aur chhaan lo.<|im_end|>"]
    untrained = "".join(piece["token"] for piece in template if piece["class_or_confidence"] != "trained")
    assert "<|im_start|>user\nChai banane ka sahi tarika kya hai?<|im_end|>" in untrained


def test_medical_sample_button_save_and_dataset_list(client):
    path = client.predict(api_name="/load_medical_sample")
    out = client.predict(path, *SETTINGS, api_name="/inspect_data")
    assert "Detected format: reasoning" in out[1]
    saved, dropdown = client.predict(path, "auto", "(none)", "(none)", "(none)", "answer", "bundled", "medical-ui",
                                     512, 0.1, 42, False, False, api_name="/prepare_data")
    assert "Saved **medical-ui**" in saved and "100 train and 11 eval" in saved
    assert dropdown == "medical-ui" and "**Next:**" in saved  # handed to the shared state; Train picks it
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="already exists"):
        client.predict(path, "auto", "(none)", "(none)", "(none)", "answer", "bundled", "medical-ui",
                       512, 0.1, 42, False, False, api_name="/prepare_data")


def test_unknown_columns_need_a_mapping(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    data = tmp_path / "odd.csv"
    data.write_text("frage,antwort\nWie spät?,Drei Uhr.\n", encoding="utf-8")
    with pytest.raises(AppError, match="needs a column mapping"):
        client.predict(handle_file(str(data)), *SETTINGS, api_name="/upload_data")
    out = client.predict(handle_file(str(data)), "mapped", "frage", "antwort", "(none)", "think", "bundled", 1024,
                         False, api_name="/upload_data")
    assert "1 rows read: 1 ok" in out[6]


SHAPES = Path(__file__).resolve().parents[1] / "data" / "shapes"


def test_tool_data_placeholders_and_system_choice_through_the_tab(client):
    """ShareGPT tool calls keep their roles (the bundled template's text fallback is named); Alpaca
    placeholders are found, replaced by the name/author fields, and the system choice is saved."""
    from gradio_client import handle_file

    out = client.predict(handle_file(str(SHAPES / "sharegpt_tools.jsonl")), *SETTINGS, api_name="/upload_data")
    counts, template, notes = out[6], out[12], out[13]
    assert "2 rows use tools" in counts and "tool calls are trained, tool results never" in counts
    assert "no tool support" in notes
    trained = [p["token"] for p in template if p["class_or_confidence"] == "trained"]
    assert trained[0].startswith('<tool_call>\n{"name": "get_weather"')

    choices = ["none", "", "Asha", "Pune Labs", True, "chunk"]
    out = client.predict(handle_file(str(SHAPES / "identity_alpaca.jsonl")), *SETTINGS, *choices,
                         api_name="/upload_data")
    assert "`{{name}}` (2 rows, replaced by 'Asha')" in out[6]
    text = "".join(p["token"] for p in out[12])
    assert "I am Asha, an AI assistant developed by Pune Labs." in text and "SmolLM" not in text
    saved, _ = client.predict(str(SHAPES / "identity_alpaca.jsonl"), "auto", "(none)", "(none)", "(none)", "think",
                              "bundled", "identity-ui", 256, 0.0, 42, False, False, *choices,
                              api_name="/prepare_data")
    assert "System prompt: none" in saved and "0 rows cut at max_len (0 tokens dropped)" in saved
