"""Shipped presets load and validate; user presets sit beside them; bad preset files fail clearly."""

from __future__ import annotations

import pytest

from studio import presets
from studio.config import Preset, load_yaml
from studio.errors import ConfigError

SHIPPED = ("8gb", "12gb", "16gb", "24gb", "cpu")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_preset_loads_and_validates(name):
    preset = load_yaml(Preset, presets.SHIPPED_DIR / f"{name}.yaml")
    assert preset.name == name
    assert preset.memory_gb > 0
    if preset.device == "cuda":
        assert preset.quant in ("4bit", "8bit")
        assert preset.train.optimizer == "paged_adamw_8bit"
        assert preset.train.gradient_checkpointing
    else:
        assert preset.train.optimizer in ("adamw_torch", "adamw_torch_fused", "sgd")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_number_in_a_shipped_preset_has_a_comment(name):
    for line in (presets.SHIPPED_DIR / f"{name}.yaml").read_text().splitlines():
        value = line.split(":", 1)[1].strip() if ":" in line and not line.lstrip().startswith("#") else ""
        if value and value.split("#")[0].strip().replace(".", "").replace("-", "").replace("e", "").isdigit():
            assert "#" in value, f"{name}.yaml: number without a reason: {line!r}"


def test_presets_are_listed_smallest_first_and_grow_with_memory():
    assert presets.list_presets()[:5] == list(SHIPPED)
    budgets = [presets.load_preset(n).memory_gb for n in SHIPPED[:4]]
    assert budgets == sorted(budgets)


def test_cpu_preset_trains_the_bundled_model_quickly():
    cpu = presets.load_preset("cpu")
    assert cpu.device == "cpu" and cpu.train.precision == "bf16"  # the worker falls back to fp32 where bf16 is slow
    assert cpu.train.max_steps <= 100 and cpu.train.max_seq_len <= 512


def test_user_preset_saved_beside_shipped_ones_without_touching_them(workspace):
    shipped_text = (presets.SHIPPED_DIR / "8gb.yaml").read_text()
    mine = presets.load_preset("8gb")
    path = presets.save_preset(mine, "8gb-long")
    assert path.parent == workspace / "presets"
    assert "8gb-long" in presets.list_presets()
    assert presets.load_preset("8gb-long").train == mine.train
    with pytest.raises(ConfigError, match="shipped preset"):
        presets.save_preset(mine, "8gb")
    assert (presets.SHIPPED_DIR / "8gb.yaml").read_text() == shipped_text


def test_unknown_preset_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="8gb, 12gb"):
        presets.load_preset("4gb")


def _write(tmp_path, text: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, key", [
    ("name: x\nquant: 4bit\nlora:\n  rank: 16\n", "lora.rank"),  # unknown key
    ("name: x\ntrain:\n  micro_batch: two\n", "train.micro_batch"),  # wrong type
    ("name: x\ntrain:\n  max_seq_len: -512\n", "train.max_seq_len"),  # negative
    ("name: x\nlora:\n  r: -4\n", "lora.r"),  # negative
    ("name: x\nquant: 3bit\n", "quant"),  # not a choice
])
def test_bad_preset_yaml_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        presets.load_preset(str(_write(tmp_path, text)))
    assert repr(key) in err.value.message
    assert err.value.fix


def test_rank_larger_than_hidden_size_names_the_key(tmp_path):
    preset = presets.load_preset(str(_write(tmp_path, "name: x\nlora:\n  r: 1024\n")))
    with pytest.raises(ConfigError) as err:
        presets.estimate_preset(presets.model_shape("smollm2-135m"), preset)
    assert "'lora.r'" in err.value.message and "576" in err.value.message
