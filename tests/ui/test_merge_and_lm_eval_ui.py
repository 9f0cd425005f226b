"""Issue 27 through gradio_client, as a user drives the app: two adapters combined into a new one from the Export
tab (a task in its own process), then the tiny lm-eval task for the base and the merged adapter from the
Evaluate tab, side by side; the merged adapter is refused a second time under the same name."""

from __future__ import annotations

from pathlib import Path

import pytest


def _adapters(app_workspace: Path, model_dir: Path, tmp_path: Path) -> None:
    """Two tiny random (B not zero) adapters imported into the app's workspace."""
    import os

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from studio.adapters import import_adapter

    previous = os.environ.get("STUDIO_WORKSPACE")
    os.environ["STUDIO_WORKSPACE"] = str(app_workspace)
    try:
        for seed, name in ((1, "ui-merge-a"), (2, "ui-merge-b")):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_pretrained(model_dir)
            config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
            get_peft_model(model, config).save_pretrained(tmp_path / name)
            import_adapter(tmp_path / name, name)
    finally:
        os.environ["STUDIO_WORKSPACE"] = previous or ""


def test_merge_in_export_then_lm_eval_base_and_merged_in_evaluate(app_url, app_workspace, tiny_model_dir, tmp_path):
    from gradio_client import Client

    _adapters(app_workspace, tiny_model_dir, tmp_path)
    client = Client(app_url, verbose=False)
    said = client.predict(str(tiny_model_dir), ["ui-merge-a", "ui-merge-b"], "ties", "1 1", 0.5, "ui-merged",
                          api_name="/merge_adapters")
    assert "ui-merged" in said and "ui-merge-a" in said and "ties" in said
    card = (app_workspace / "adapters" / "ui-merged" / "README.md").read_text()
    assert "ui-merge-a" in card and "ui-merge-b" in card
    with pytest.raises(Exception, match="already exists"):
        client.predict(str(tiny_model_dir), ["ui-merge-a", "ui-merge-b"], "linear", "", 0.5, "ui-merged",
                       api_name="/merge_adapters")

    table, info = client.predict(str(tiny_model_dir), "fp32", ["ui-merged"], ["studio_tiny_mc"], 4, False,
                                 api_name="/lm_eval")
    headers, rows = table["headers"], table["data"]
    assert headers[:2] == ["task", "metric"] and "base" in headers and "ui-merged" in headers
    assert {row[1] for row in rows} == {"acc", "acc_norm"}
    assert "studio_tiny_mc: 4 items" in info
