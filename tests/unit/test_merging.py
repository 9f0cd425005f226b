"""Adapter merging (studio.merging): PEFT's add_weighted_adapter on two tiny adapters made here, the merged
weights checked against the math, every method loadable, bad inputs refused with a fix."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from studio.errors import AdapterError, ConfigError, StudioError

TARGETS = ["q_proj", "v_proj"]


def _make_lora(out: Path, model_dir: Path, r: int, alpha: int, seed: int) -> Path:
    """A PEFT LoRA with random A and B (init_lora_weights=False: B is not zero, so every merge is visible)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_model_dir, other_tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {"a": _make_lora(root / "a", tiny_model_dir, 4, 8, 1), "b": _make_lora(root / "b", tiny_model_dir, 4, 4, 2),
            "r8": _make_lora(root / "r8", tiny_model_dir, 8, 16, 3),
            "other": _make_lora(root / "other", other_tiny_model_dir, 4, 8, 4)}


@pytest.fixture
def registry(workspace, loras) -> dict[str, Path]:
    """The four adapters imported into this test's workspace under their names."""
    from studio.adapters import import_adapter

    return {name: import_adapter(folder, name).path for name, folder in loras.items()}


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _scale(folder: Path) -> float:
    import json

    config = json.loads((folder / "adapter_config.json").read_text())
    return config["lora_alpha"] / config["r"]


def test_linear_merge_is_the_weighted_sum_of_sqrt_scaled_a_and_b(registry, tiny_model_dir):
    from studio.merging import MergeSpec, merge

    info = merge(MergeSpec(("a", "b"), "ab-linear", "linear", (0.7, 0.3)), ref=str(tiny_model_dir))
    merged, a, b = _tensors(info.path), _tensors(registry["a"]), _tensors(registry["b"])
    factor_a, factor_b = math.sqrt(0.7 * _scale(registry["a"])), math.sqrt(0.3 * _scale(registry["b"]))
    assert set(merged) == set(a) and len(merged) == 2 * 2 * len(TARGETS)  # 2 layers x q, v x (A, B)
    for key in merged:
        expected = factor_a * a[key] + factor_b * b[key]
        assert merged[key].shape == expected.shape
        assert (merged[key] - expected).abs().max() < 1e-5, key
    assert _scale(info.path) == 1.0  # PEFT sets alpha = r: the weights carry the scales
    card = info.card
    assert [p["name"] for p in card["merge"]["parents"]] == ["a", "b"] and card["merge"]["method"] == "linear"
    assert card["merge"]["weights"] == [0.7, 0.3] and "linear" in (info.path / "README.md").read_text()


def test_cat_merge_update_is_exactly_the_weighted_sum_of_updates_even_across_ranks(registry, tiny_model_dir):
    from studio.merging import MergeSpec, merge

    info = merge(MergeSpec(("a", "r8"), "a-r8-cat", "cat", (0.5, 2.0)), ref=str(tiny_model_dir))
    merged, a, r8 = _tensors(info.path), _tensors(registry["a"]), _tensors(registry["r8"])
    assert info.card["lora"]["r"] == 12  # 4 + 8
    for key in [k for k in merged if ".lora_A." in k]:
        key_b = key.replace(".lora_A.", ".lora_B.")
        update = merged[key_b] @ merged[key]
        expected = (0.5 * _scale(registry["a"]) * a[key_b] @ a[key]
                    + 2.0 * _scale(registry["r8"]) * r8[key_b] @ r8[key])
        assert (update - expected).abs().max() < 1e-4, key


@pytest.mark.parametrize("method", ["linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "ties_svd"])
def test_every_method_gives_an_adapter_that_loads_lists_and_changes_the_output(registry, tiny_model_dir, method):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio.adapters import adapter_names, get_adapter
    from studio.merging import MergeSpec, merge

    info = merge(MergeSpec(("a", "b"), f"ab-{method}", method, density=0.5, seed=3), ref=str(tiny_model_dir))
    assert info.name in adapter_names() and info.path.parent.name == "adapters"
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(info.path))(ids).logits
    assert torch.isfinite(tuned).all() and (tuned - before).abs().max() > 1e-4
    assert info.card["base_model"] == get_adapter("a").base_model


def test_dare_is_repeatable_with_its_seed(registry, tiny_model_dir):
    from studio.merging import MergeSpec, merge

    first = merge(MergeSpec(("a", "b"), "dare-1", "dare_ties", density=0.3, seed=7), ref=str(tiny_model_dir))
    second = merge(MergeSpec(("a", "b"), "dare-2", "dare_ties", density=0.3, seed=7), ref=str(tiny_model_dir))
    one, two = _tensors(first.path), _tensors(second.path)
    assert all((one[k] == two[k]).all() for k in one)
    assert first.card["merge"]["density"] == 0.3 and first.card["merge"]["seed"] == 7


def test_mismatched_bases_are_refused_before_loading_naming_both(registry):
    from studio.merging import MergeSpec, merge

    with pytest.raises(AdapterError) as err:
        merge(MergeSpec(("a", "other"), "bad", "ties"), ref="/nonexistent/never/loaded")
    assert "tiny-llama" in err.value.message and "tiny-llama-96" in err.value.message
    assert err.value.fix and not (Path(registry["a"]).parent / "bad").exists()


def test_methods_that_mix_entries_refuse_unequal_ranks_and_say_which_methods_do_not(registry):
    from studio.merging import MergeSpec, merge

    for method in ("linear", "ties", "dare_linear", "dare_ties"):
        with pytest.raises(AdapterError) as err:
            merge(MergeSpec(("a", "r8"), "bad", method), ref="/nonexistent/never/loaded")
        assert "rank" in err.value.message and "cat" in err.value.fix


def test_an_existing_name_is_never_overwritten(registry, tiny_model_dir):
    from studio.merging import MergeSpec, merge

    before = (registry["b"] / "adapter_model.safetensors").read_bytes()
    with pytest.raises(AdapterError, match="already exists"):
        merge(MergeSpec(("a", "r8"), "b", "cat"), ref=str(tiny_model_dir))
    assert (registry["b"] / "adapter_model.safetensors").read_bytes() == before


@pytest.mark.parametrize("spec, words", [
    (dict(inputs=("a",), name="x"), "two or more"),
    (dict(inputs=("a", "a"), name="x"), "twice"),
    (dict(inputs=("a", "b"), name="x", method="slerp"), "Unknown merge method"),
    (dict(inputs=("a", "b"), name="x", weights=(1.0,)), "1 weights for 2 adapters"),
    (dict(inputs=("a", "b"), name="x", weights=(0.0, 0.0)), "All weights are 0"),
    (dict(inputs=("a", "b"), name="x", density=1.5), "Density"),
    (dict(inputs=("a", "b"), name="../x"), "name"),
])
def test_bad_specs_are_refused_with_a_fix(spec, words):
    from studio.merging import MergeSpec

    with pytest.raises((ConfigError, StudioError)) as err:
        MergeSpec(**spec).checked()
    assert words in err.value.message and err.value.fix


def test_default_weights_average_for_arithmetic_and_keep_one_for_ties():
    from studio.merging import MergeSpec

    assert MergeSpec(("a", "b", "c"), "x", "linear").checked().weights == pytest.approx((1 / 3,) * 3)
    ties = MergeSpec(("a", "b"), "x", "ties").checked()
    assert ties.weights == (1.0, 1.0) and ties.density == 0.5
    assert MergeSpec(("a", "b"), "x", "cat").checked().density is None


def test_cli_merges_and_refuses(registry, tiny_model_dir, capsys):
    from studio.cli import main

    args = ["adapters", "merge", "--method", "ties", "--inputs", "a", "b", "--weights", "1", "1", "--density", "0.4",
            "--name", "cli-ties", "--model", str(tiny_model_dir)]
    assert main(args) == 0
    assert "cli-ties" in capsys.readouterr().out
    assert main(args) == 2  # the same name again
    assert "already exists" in capsys.readouterr().err
