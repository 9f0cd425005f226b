"""The DPO path through the app's API (gradio_client): preference sample -> Data tab's preference section ->
saved preference dataset -> a DPO run from the Train tab -> live reward margin / accuracy -> finished adapter."""

from __future__ import annotations

import time

import pytest

from studio.ui.tabs.train import NO_CONFIG


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def _wait_for_state(client, run: str, states: tuple[str, ...], timeout: float = 420) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        progress = client.predict(run, api_name="/run_status")[1]
        if any(f"data-state='{s}'" in progress for s in states):
            return progress
        time.sleep(2)
    raise AssertionError(f"{run} did not reach {states}: {progress}")


def _labels(side) -> set:
    """(label, has text) of each run of a HighlightedText value (a list of {token, class_or_confidence})."""
    items = side["value"] if isinstance(side, dict) else side
    return {(item.get("class_or_confidence"), bool(item.get("token", "").strip())) for item in items}


def test_dpo_run_from_the_data_and_train_tabs(client, tiny_model_dir):
    model = str(tiny_model_dir)
    path = client.predict(api_name="/load_preference_sample")
    shown = client.predict(path, "auto", "", "", "", model, 128, api_name="/inspect_preference")
    summary, chosen_side, rejected_side = shown[1], shown[5], shown[6]
    assert "Preference pairs (trl)" in summary and "chosen == rejected" in summary
    assert ("chosen", True) in _labels(chosen_side) and ("rejected", True) in _labels(rejected_side)
    saved, _ = client.predict(path, "auto", "", "", "", model, "ui-prefs", 128, 0.1, 42, False,
                              api_name="/prepare_preference")
    assert "ui-prefs" in saved and "dpo" in saved

    with pytest.raises(Exception, match="preference data"):  # the SFT method on pairs is refused at Start
        client.predict("ui-sft-on-pairs", "ui-prefs", model, 2, 1, NO_CONFIG, "sft", 0.1, 0.1, "",
                       api_name="/start_training")
    run = client.predict("ui-dpo", "ui-prefs", model, 3, 1, NO_CONFIG, "dpo", 0.2, 0.1, "", api_name="/start_training")
    assert run == "ui-dpo"
    progress = _wait_for_state(client, "ui-dpo", ("completed", "failed"))
    assert "data-state='completed'" in progress, client.predict("ui-dpo", api_name="/run_status")[4]
    plot = client.predict("ui-dpo", api_name="/preference_status")
    series = {row[plot["columns"].index("series")] for row in plot["data"]}
    assert {"train margin", "train accuracy"} <= series  # plotted live from events.jsonl
    stats = client.predict("ui-dpo", api_name="/run_status")[2]
    assert "reward margin" in stats
