"""The Evaluate and Export tabs through gradio_client, as a user drives them: perplexity of the base on an
eval split, and the refusals a user should see (no eval split, sparsity out of range, an existing export)."""

from __future__ import annotations

import shutil
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
