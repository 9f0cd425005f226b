"""SparseGPT and magnitude pruning on tiny models: sparsity patterns, bad input, saving, cancelling."""

from __future__ import annotations

import pytest
import torch

from studio import pruning
from studio.errors import ConfigError, RunError


def _tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _windows(tokenizer, samples=8, length=64):
    rows = pruning.text_rows(tokenizer, pruning.builtin_corpus("train")[:6], 128)
    return pruning.windows_from_rows(rows, samples, length)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_outside_zero_to_one_is_refused(sparsity):
    with pytest.raises(ConfigError, match="outside 0 to 1"):
        pruning.PruneSpec(sparsity=sparsity).validate()
    with pytest.raises(ConfigError):
        pruning.parse_level(str(sparsity))


def test_unknown_method_and_pattern_are_refused():
    with pytest.raises(ConfigError, match="method"):
        pruning.PruneSpec(method="random").validate()
    with pytest.raises(ConfigError, match="pattern"):
        pruning.PruneSpec(pattern="3:4").validate()


def test_parse_level_reads_fractions_percent_and_patterns():
    assert pruning.parse_level("0.5") == (0.5, "")
    assert pruning.parse_level("60%") == (0.6, "")
    assert pruning.parse_level("2:4") == (0.5, "2:4")


@pytest.mark.parametrize("method", pruning.METHODS)
def test_unstructured_pruning_reaches_the_sparsity_asked_for(tiny_model_dir, method):
    model, tok = _tiny(tiny_model_dir)
    report = pruning.prune_model(model, pruning.PruneSpec(method, 0.6), _windows(tok))
    assert report["measured_sparsity"] == pytest.approx(0.6, abs=0.01)
    # embeddings and the output head are left dense
    assert float((model.model.embed_tokens.weight == 0).float().mean()) < 0.01


@pytest.mark.parametrize("method", pruning.METHODS)
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_n_m_pruning_zeroes_n_of_every_m_weights(tiny_model_dir, method, pattern):
    model, tok = _tiny(tiny_model_dir)
    pruning.prune_model(model, pruning.PruneSpec(method, 0.5, pattern), _windows(tok))
    n, m = (int(x) for x in pattern.split(":"))
    for block in pruning.decoder_layers(model):
        for lin in pruning.linear_layers(block).values():
            zeros = (lin.weight.reshape(lin.weight.shape[0], -1, m) == 0).sum(dim=2)
            assert bool((zeros >= n).all())


def test_sparsegpt_reconstructs_a_layer_better_than_magnitude():
    """On one linear layer with correlated inputs, the OBS update keeps outputs closer to the dense ones."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32, bias=False)
    mixing = torch.randn(64, 64) / 8
    x = torch.randn(512, 64) @ mixing + torch.randn(512, 64) * 0.1  # correlated features, as in real layers
    dense = layer(x).detach()
    hessian = pruning.Hessian(64, "cpu")
    hessian.add(x)
    sgpt, mag = torch.nn.Linear(64, 32, bias=False), torch.nn.Linear(64, 32, bias=False)
    sgpt.weight.data, mag.weight.data = layer.weight.data.clone(), layer.weight.data.clone()
    pruning.sparsegpt_prune(sgpt, hessian.H, 0.5, blocksize=16)
    pruning.prune_magnitude(mag, 0.5)
    err_sgpt = float(((sgpt(x) - dense) ** 2).mean())
    err_mag = float(((mag(x) - dense) ** 2).mean())
    assert float((sgpt.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert err_sgpt < 0.7 * err_mag


def test_sparsegpt_without_calibration_text_is_refused(tiny_model_dir):
    model, _ = _tiny(tiny_model_dir)
    with pytest.raises(ConfigError, match="calibration"):
        pruning.prune_model(model, pruning.PruneSpec("sparsegpt", 0.5), None)


def test_cancel_stops_pruning(tiny_model_dir):
    model, tok = _tiny(tiny_model_dir)
    with pytest.raises(RunError, match="cancelled"):
        pruning.prune_model(model, pruning.PruneSpec("sparsegpt", 0.5), _windows(tok), should_stop=lambda: True)


def test_a_4bit_model_is_refused(tiny_model_dir):
    from studio.errors import ModelError
    from studio.models import load_model

    model = load_model(str(tiny_model_dir), "4bit", device="cpu").model
    with pytest.raises(ModelError, match="16- or 32-bit"):
        pruning.prune_model(model, pruning.PruneSpec("magnitude", 0.5))


def test_pruned_model_saves_as_hf_folder_that_reloads_and_takes_an_adapter(tiny_model_dir, workspace):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    report = pruning.prune_and_save(str(tiny_model_dir), pruning.PruneSpec("sparsegpt", 0.5, calib_samples=4,
                                                                           calib_len=64),
                                    "builtin:pydoc", "tiny-pruned", eval_rows=4)
    assert report["path"] == str(workspace / "exports" / "tiny-pruned")
    assert report["perplexity_after"] > 0 and report["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    reloaded = AutoModelForCausalLM.from_pretrained(report["path"])
    assert pruning.measured_sparsity(reloaded) == pytest.approx(0.5, abs=0.01)
    peft_model = get_peft_model(reloaded, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert peft_model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == reloaded.config.vocab_size
    with pytest.raises(ConfigError, match="already exists"):
        pruning.prune_and_save(str(tiny_model_dir), pruning.PruneSpec("magnitude", 0.5), "builtin:pydoc",
                               "tiny-pruned")


def test_sweep_table_has_every_method_and_level(tiny_model_dir):
    results = pruning.sweep(str(tiny_model_dir), "builtin:pydoc", ["0", "0.5", "2:4"], calib_samples=4,
                            calib_len=64, eval_rows=4)
    assert [(r["method"], r["level"]) for r in results] == [
        ("dense", "0%"), ("sparsegpt", "50%"), ("magnitude", "50%"), ("sparsegpt", "2:4"), ("magnitude", "2:4")]
    table = pruning.sweep_markdown(results)
    assert "| 2:4 |" in table and "sparsegpt" in table.splitlines()[0]
    folder = pruning.save_sweep(results, "tiny")
    assert (folder / "sweep.json").is_file() and (folder / "sweep.md").read_text().startswith("| sparsity")
