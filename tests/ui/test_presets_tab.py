"""The Presets tab through gradio_client, as a user drives it: pick a preset and a memory budget for an
8B model and read a verdict that agrees with the estimator; recommend; edit a field; save a preset."""

from __future__ import annotations

import pytest

from studio.config import LoraSpec, TrainSpec
from studio.presets import estimate_memory, load_preset, model_shape

N_FIELDS = 21  # quant + 4 LoRA fields + 16 training fields


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def _estimate(client, model: str, device: str, memory: float, values):
    return client.predict(model, "bundled", device, memory, *values, api_name="/estimate")


def _expected_total(model: str, preset: str, **train_changes) -> float:
    p = load_preset(preset)
    train = TrainSpec(**{**p.train.__dict__, **train_changes})
    return estimate_memory(model_shape(model), p.quant, LoraSpec(**p.lora.__dict__), train, p.device).total


def _bar_total(bar) -> float:
    columns = bar["columns"]
    assert "available" not in [row[columns.index("part")] for row in bar["data"]]  # the parts, not the machine
    return sum(row[columns.index("GB")] for row in bar["data"])


def test_8gb_for_an_8b_model_shows_a_verdict_that_matches_the_estimate(client):
    values = client.predict("8gb", api_name="/load_preset")
    assert len(values) == N_FIELDS and values[0] == "4bit"
    bar, verdict, table = _estimate(client, "llama-3-8b", "cuda", 8, values)[:3]
    total = _expected_total("llama-3-8b", "8gb")
    assert total > 8
    assert "Does not fit" in verdict and f"about {total:.1f} GB of 8 GB" in verdict
    assert "smaller model" in verdict
    assert f"| total | {total:.2f} |" in table
    assert _bar_total(bar) == pytest.approx(total, abs=0.02)

    bar, verdict, _ = _estimate(client, "llama-3-8b", "cuda", 16, client.predict("16gb", api_name="/load_preset"))[:3]
    total16 = _expected_total("llama-3-8b", "16gb")
    assert "Fits" in verdict and f"about {total16:.1f} GB of 16 GB" in verdict


def test_editing_a_field_changes_the_estimate(client):
    values = list(client.predict("16gb", api_name="/load_preset"))
    short = _estimate(client, "tinyllama-1.1b", "cuda", 16, values)[2]
    values[5] = 4096  # max_seq_len
    long = _estimate(client, "tinyllama-1.1b", "cuda", 16, values)[2]
    total = _expected_total("tinyllama-1.1b", "16gb", max_seq_len=4096)
    assert f"| total | {total:.2f} |" in long and long != short


def test_recommend_picks_the_largest_fitting_preset(client):
    assert client.predict("llama-3-8b", "bundled", "cuda", 24, api_name="/recommend_preset") == "24gb"
    assert client.predict("llama-3-8b", "bundled", "cuda", 16, api_name="/recommend_preset") == "16gb"


def test_bad_field_value_names_the_key(client):
    values = list(client.predict("8gb", api_name="/load_preset"))
    values[1] = 4096  # LoRA rank above the bundled model's hidden size (576)
    verdict = _estimate(client, "smollm2-135m", "cuda", 8, values)[1]
    assert "Cannot estimate" in verdict and "'lora.r'" in verdict and "576" in verdict
    values = list(client.predict("8gb", api_name="/load_preset"))
    values[6] = -2  # micro_batch
    assert "'train.micro_batch'" in _estimate(client, "smollm2-135m", "cuda", 8, values)[1]


def test_saved_preset_appears_in_the_list_and_shipped_ones_are_protected(client, app_workspace):
    values = client.predict("cpu", api_name="/load_preset")
    client.predict("cpu-long", "cpu", 8, *values, api_name="/save_preset")
    assert (app_workspace / "presets" / "cpu-long.yaml").is_file()
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="shipped preset"):
        client.predict("cpu", "cpu", 8, *values, api_name="/save_preset")


def test_chosen_settings_are_what_the_train_tab_starts_a_run_from():
    from studio.jobs.manager import make_spec
    from studio.ui.tabs import presets as tab

    values = tab.preset_values("cpu")
    values[5] = 384  # max_seq_len edited in the tab
    settings = tab.estimate(tab.FROM_MODEL_TAB, "bundled", "cpu", 8, *values)[3]
    spec = make_spec("from-presets", "demo", "bundled", settings)
    assert spec.model.quant == "fp32" and spec.train.max_seq_len == 384
    assert spec.lora == load_preset("cpu").lora
