"""The Evaluate and Export tabs through gradio_client, as a user drives them: perplexity of the base on an
eval split, and the refusals a user should see (no eval split, sparsity out of range, an existing export).
Evaluation and pruning run as tasks in their own process (tasks/<id>/), never in the app's: Stop ends one
as stopped, and a page opened later shows the latest task's results."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client(app_url, app_workspace, tiny_model_dir):
    """The app, with two datasets prepared for the tiny model in its workspace (one without an eval split)."""
    import os

    from gradio_client import Client

    from studio.data.store import prepare

    previous = os.environ.get("STUDIO_WORKSPACE")
    os.environ["STUDIO_WORKSPACE"] = str(app_workspace)
    try:
        for name, split in (("ui-eval-med", 0.2), ("ui-eval-none", 0.0)):
            if not (app_workspace / "datasets" / name).exists():
                prepare(ROOT / "assets" / "medical_demo.jsonl", str(tiny_model_dir), name, max_len=128,
                        eval_split=split)
    finally:
        os.environ["STUDIO_WORKSPACE"] = previous or ""
    return Client(app_url, verbose=False)


def test_perplexity_of_the_base_on_the_eval_split(client, tiny_model_dir, app_workspace):
    table, saved = client.predict(str(tiny_model_dir), "fp32", "ui-eval-med", [], 0, api_name="/eval_perplexity")
    rows = table["data"]
    headers = table["headers"]
    assert rows[0][headers.index("model")] == "base"
    assert float(rows[0][headers.index("perplexity")]) > 1
    assert "evals" in saved  # no adapter chosen: the report goes to exports/evals
    assert list((app_workspace / "exports" / "evals").glob("perplexity-*.json"))
    task = _latest_task(app_workspace)
    assert (task / "result.json").is_file() and "perplexity: " in (task / "task.log").read_text()
    _ended_while_the_app_lives(task, client)


def _latest_task(app_workspace: Path) -> Path:
    import json

    return max((app_workspace / "tasks").glob("*/task.json"), key=lambda p: json.loads(p.read_text())["created"]).parent


def _ended_while_the_app_lives(task: Path, client) -> None:
    """The task's own process has exited, and the app still answers: it did not run in the app's process."""
    import json

    import psutil

    pid = json.loads((task / "status.json").read_text())["pid"]
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the task process {pid} is still running")
    assert client.predict(api_name="/eval_task")[0].startswith(f"Latest task `{task.name}`")


def test_a_magnitude_prune_runs_as_a_task_and_a_later_page_shows_it(client, tiny_model_dir, app_workspace, app_url):
    from gradio_client import Client

    info = client.predict(str(tiny_model_dir), "", "magnitude", "0.5", "ui-mag-50", True, api_name="/prune")
    assert "sparsity 50" in info and "ui-mag-50" in info
    task = _latest_task(app_workspace)
    assert "-prune-" in task.name
    assert "magnitude: block 2/2" in (task / "task.log").read_text()  # the progress it reported
    _ended_while_the_app_lives(task, client)
    shown = Client(app_url, verbose=False).predict(api_name="/eval_task")  # a fresh page: read from disk
    assert "**completed**" in shown[0] and any("ui-mag-50" in str(value) for value in shown[1:])


def test_stop_ends_a_running_task_as_stopped(client, tiny_model_dir, app_workspace):
    (app_workspace / "tasks").mkdir(exist_ok=True)
    before = set((app_workspace / "tasks").iterdir())
    job = client.submit(str(tiny_model_dir), "", "0.25 0.5 0.6 0.7", 4, 4, api_name="/prune_sweep")
    deadline = time.time() + 60
    while not set((app_workspace / "tasks").iterdir()) - before and time.time() < deadline:
        time.sleep(0.2)
    client.predict(api_name="/eval_stop")
    with pytest.raises(Exception, match="cancelled"):
        job.result(timeout=300)
    assert '"stopped"' in (_latest_task(app_workspace) / "status.json").read_text()


def test_a_dataset_that_does_not_exist_shows_the_fix(client, tiny_model_dir):
    with pytest.raises(Exception, match="no prepared dataset named 'ui-no-such'"):
        client.predict(str(tiny_model_dir), "fp32", "ui-no-such", [], 4, 16, api_name="/eval_battery")


def test_eval_without_an_eval_split_shows_the_fix(client, tiny_model_dir):
    with pytest.raises(Exception, match="no eval split"):
        client.predict(str(tiny_model_dir), "fp32", "ui-eval-none", [], 0, api_name="/eval_perplexity")


def test_sparsity_outside_zero_to_one_is_refused(client, tiny_model_dir):
    with pytest.raises(Exception, match="outside 0 to 1"):
        client.predict(str(tiny_model_dir), "", "sparsegpt", "1.5", "ui-pruned", False, api_name="/prune")


def test_merge_never_overwrites_an_existing_export(client, tiny_model_dir, app_workspace):
    target = app_workspace / "exports" / "ui-existing"
    target.mkdir(parents=True, exist_ok=True)
    (target / "keep.txt").write_text("mine")
    adapters = app_workspace / "adapters"
    if not (adapters / "ui-eval-rand").exists():
        import sys

        sys.path.insert(0, str(ROOT / "tests" / "unit"))
        from test_export import random_adapter

        random_adapter(tiny_model_dir, adapters / "ui-eval-rand")
    with pytest.raises(Exception, match="already exists"):
        client.predict(str(tiny_model_dir), "fp32", "ui-eval-rand", "ui-existing", [], False, api_name="/merge")
    assert (target / "keep.txt").read_text() == "mine"
    shutil.rmtree(target)


def test_adapter_exports_as_a_gguf_lora_from_the_export_tab(client, tiny_model_dir, app_workspace):
    """The 'Adapter as GGUF LoRA' button: adapter.gguf and a Modelfile (FROM the base GGUF, ADAPTER the LoRA)."""
    from studio.errors import ModelError
    from studio.export import lora_converter_script

    try:
        lora_converter_script()
    except ModelError:
        pytest.skip("llama.cpp's convert_lora_to_gguf.py is not installed; `make gguf-tools` installs it")
    adapters = app_workspace / "adapters"
    if not (adapters / "ui-eval-rand").exists():
        import sys

        sys.path.insert(0, str(ROOT / "tests" / "unit"))
        from test_export import random_adapter

        random_adapter(tiny_model_dir, adapters / "ui-eval-rand")
    text = client.predict(str(tiny_model_dir), "ui-eval-rand", "ui-lora", False, api_name="/lora_gguf")
    out = app_workspace / "exports" / "ui-lora"
    assert "llama-server -m" in text and "ollama create ui-lora" in text
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./base.f16.gguf\nADAPTER ./adapter.gguf\n" in modelfile and (out / "adapter.gguf").is_file()
    with pytest.raises(Exception, match="already exists"):
        client.predict(str(tiny_model_dir), "ui-eval-rand", "ui-lora", False, api_name="/lora_gguf")
