"""The Train tab through gradio_client: start a run, see its events arrive, stop it."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.integration.training_helpers import prepare


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def _status(client, run):
    table, progress, stats, plot, log, raw = client.predict(run, api_name="/run_status")
    assert "'learning_rate'" not in log  # the log in words; the worker's own lines sit behind a toggle
    return table, progress, stats, plot, log


def test_start_see_events_and_stop(client, app_workspace, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(app_workspace))  # prepare the data where the app looks
    data = prepare(tmp_path, str(tiny_model_dir), name="ui-train-data")
    run = client.predict("ui-run", data, str(tiny_model_dir), 400, 1, api_name="/start_training")
    assert run == "ui-run"
    deadline = time.time() + 300
    while time.time() < deadline:
        table, progress, stats, plot, log = _status(client, "ui-run")
        if plot and "data-step='0'" not in progress:
            break
        time.sleep(2)
    assert "running" in progress and "step " in progress and "left" in progress
    assert "tokens/s" in stats and "loss" in stats and "dataset **ui-train-data**" in stats
    chart = json.loads(plot["plot"])  # an altair chart: integer steps on the axis, points drawn
    points = next(iter(chart["datasets"].values()))
    assert points and {"step", "loss", "series"} <= set(points[0])
    axis = chart["encoding"]["x"]["axis"]  # whole steps: a tick at each step while the run is short
    steps = sorted({int(p["step"]) for p in points})
    assert axis["format"] == "d" and chart["mark"]["point"]
    if steps[-1] <= 20:  # a fast machine may log more steps before the first look: then ticks at whole steps only
        assert axis["values"] == list(range(1, steps[-1] + 1))
    else:
        assert axis["tickMinStep"] == 1
    assert "Warning" not in log and "kernels" not in log  # library noise stays in worker.log
    words = r"step \d+ of 400 · loss [\d.]+ · lr [^·]+ · [\d,]+ tokens/s · epoch [\d.]+ of [\d.]+"
    assert re.search(words, log), log
    assert chart["$schema"].endswith("/vega-lite/v5.json")  # the version Gradio's vega-embed draws: no warning
    assert "ui-run" in str(table["data"])
    with pytest.raises(Exception, match="already exists"):
        client.predict("ui-run", data, str(tiny_model_dir), 4, 1, api_name="/start_training")
    client.predict("ui-run", api_name="/stop_training")
    deadline = time.time() + 120
    while time.time() < deadline:
        progress = _status(client, "ui-run")[1]
        if "data-state='stopped'" in progress:
            break
        time.sleep(1)
    assert "data-state='stopped'" in progress and "Resume" in progress
