"""The adapter registry: runs and imports listed with their cards, import from a folder / zip / two files,
export, delete, card updates, and every refusal (pickles, traversal, oversize, missing files, wrong base)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from studio import adapters
from studio.errors import AdapterError, ConfigError


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """An untrained (but real) PEFT LoRA adapter for the tiny model, saved as PEFT saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("lora") / "tiny-lora"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    return out


def _run_adapter(workspace: Path, lora_dir: Path, run_id: str = "20250101-000000-med") -> Path:
    out = workspace / "runs" / run_id / "adapter"
    shutil.copytree(lora_dir, out)
    card = {"run_id": run_id, "base_model": "bundled", "dataset": "medical", "dataset_sha256": "ab" * 32,
            "lora": {"r": 4, "alpha": 8}, "metrics": {"train_loss": 1.25, "eval_loss": 1.5}, "created": "now"}
    (out / "card.json").write_text(json.dumps(card))
    (out / "README.md").write_text("# card\n\n| metric | value |\n|---|---|\n| train_loss | 1.25 |\n\nLoad it.\n")
    return out


def test_lists_run_and_imported_adapters_with_their_cards(workspace, lora_dir):
    _run_adapter(workspace, lora_dir)
    adapters.import_adapter(lora_dir, "my-lora")
    found = {a.name: a for a in adapters.list_adapters()}
    assert set(found) == {"run:20250101-000000-med", "my-lora"}
    run = found["run:20250101-000000-med"].summary()
    assert run["base_model"] == "bundled" and run["r"] == 4 and run["metrics.eval_loss"] == 1.5
    imported = adapters.get_adapter("my-lora")
    assert imported.source == "imported" and imported.card["lora"]["r"] == 4  # card made from adapter_config
    assert (imported.path / "README.md").is_file()


def test_import_from_zip_and_from_the_two_uploaded_files(workspace, lora_dir, tmp_path):
    zipped = Path(shutil.make_archive(str(tmp_path / "upload"), "zip", lora_dir.parent, lora_dir.name))
    assert adapters.import_adapter(zipped, "from-zip").path == workspace / "adapters" / "from-zip"
    # Gradio hands uploads over under temporary names: recognised by their extension.
    cfg = shutil.copy(lora_dir / "adapter_config.json", tmp_path / "tmp123.json")
    weights = shutil.copy(lora_dir / "adapter_model.safetensors", tmp_path / "tmp456.safetensors")
    info = adapters.import_adapter([cfg, weights], "from-files")
    weights_file = "adapter_model.safetensors"
    assert (info.path / weights_file).read_bytes() == (lora_dir / weights_file).read_bytes()


def test_export_zip_round_trips(workspace, lora_dir):
    _run_adapter(workspace, lora_dir)
    out = adapters.export_zip("run:20250101-000000-med")
    assert out.parent == workspace / "exports" and out.name == "run-20250101-000000-med.zip"
    again = adapters.import_adapter(out, "reimported")
    assert again.card["metrics"]["train_loss"] == 1.25  # the card travels with the zip
    weights_file = "adapter_model.safetensors"
    assert (again.path / weights_file).read_bytes() == (lora_dir / weights_file).read_bytes()


def test_adapters_export_refuses_to_overwrite_an_existing_zip(workspace, lora_dir):
    from studio.cli import main

    _run_adapter(workspace, lora_dir)
    out = workspace / "exports" / "run-20250101-000000-med.zip"
    assert main(["adapters", "export", "run:20250101-000000-med"]) == 0
    out.write_bytes(b"the user's own file")
    assert main(["adapters", "export", "run:20250101-000000-med"]) != 0  # refused, with a clear message
    assert out.read_bytes() == b"the user's own file"
    assert main(["adapters", "export", "run:20250101-000000-med", "--overwrite"]) == 0
    assert zipfile.is_zipfile(out)


def test_delete_imported_but_not_run_adapters(workspace, lora_dir):
    _run_adapter(workspace, lora_dir)
    adapters.import_adapter(lora_dir, "gone-soon")
    adapters.delete_adapter("gone-soon")
    assert [a.name for a in adapters.list_adapters()] == ["run:20250101-000000-med"]
    with pytest.raises(AdapterError, match="deleted with that run"):
        adapters.delete_adapter("run:20250101-000000-med")
    with pytest.raises(AdapterError, match="no adapter named 'gone-soon'"):
        adapters.get_adapter("gone-soon")


def test_update_card_adds_metrics_to_card_and_readme(workspace, lora_dir):
    path = _run_adapter(workspace, lora_dir)
    card = adapters.update_card(path, {"rouge_l": 0.42, "perplexity": 9.5})
    assert card["metrics"] == {"train_loss": 1.25, "eval_loss": 1.5, "rouge_l": 0.42, "perplexity": 9.5}
    assert json.loads((path / "card.json").read_text())["metrics"]["rouge_l"] == 0.42
    readme = (path / "README.md").read_text()
    assert "| rouge_l | 0.42 |" in readme and readme.count("| metric | value |") == 1  # rewritten, not duplicated
    assert "Load it." in readme


def test_pickled_bin_adapters_are_refused(workspace, lora_dir, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(lora_dir, folder)
    (folder / "adapter_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(AdapterError, match="pickled weights.*adapter_model.bin"):
        adapters.import_adapter(folder, "pickled")
    with pytest.raises(AdapterError, match="is a pickle"):
        adapters.import_adapter([folder / "adapter_config.json", folder / "adapter_model.bin"], "pickled")
    assert adapters.list_adapters() == []


def test_zip_with_parent_entries_is_refused_before_extraction(workspace, lora_dir, tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.write(lora_dir / "adapter_config.json", "adapter_config.json")
        zf.write(lora_dir / "adapter_model.safetensors", "adapter_model.safetensors")
        zf.writestr("../../escaped.txt", "gotcha")
    with pytest.raises(AdapterError, match=r"unsafe entry '\.\./\.\./escaped.txt'"):
        adapters.import_adapter(evil, "evil")
    assert not list(workspace.rglob("escaped.txt")) and not list(tmp_path.rglob("escaped.txt"))
    assert list((workspace / "adapters").iterdir()) == []  # no half-imported folder left behind


def test_oversize_zip_is_refused(workspace, lora_dir, tmp_path, monkeypatch):
    zipped = Path(shutil.make_archive(str(tmp_path / "big"), "zip", lora_dir))
    monkeypatch.setattr(adapters, "MAX_ADAPTER_BYTES", 1000)  # the real limit is 4 GiB
    with pytest.raises(AdapterError, match="over the .* limit"):
        adapters.import_adapter(zipped, "big")


def test_missing_weights_file_is_refused(workspace, lora_dir, tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    shutil.copy(lora_dir / "adapter_config.json", folder)
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"):
        adapters.import_adapter(folder, "half")


def test_adapter_for_another_base_is_refused_naming_both(lora_dir, tiny_model_dir, other_tiny_model_dir):
    adapters.validate_adapter(lora_dir, str(tiny_model_dir))  # fits its own base
    with pytest.raises(AdapterError) as exc:
        adapters.validate_adapter(lora_dir, str(other_tiny_model_dir))
    message = str(exc.value)
    assert str(tiny_model_dir) in message and str(other_tiny_model_dir) in message
    assert "shape" in message


def test_bad_adapter_names_are_refused(lora_dir):
    with pytest.raises(ConfigError, match="not allowed"):
        adapters.import_adapter(lora_dir, "../outside")
    adapters.import_adapter(lora_dir, "twice")
    with pytest.raises(AdapterError, match="already exists"):
        adapters.import_adapter(lora_dir, "twice")
