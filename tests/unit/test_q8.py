"""`q8` (studio/q8.py): int8 weight-only linear layers for serving on a CPU."""

from __future__ import annotations

import pytest
import torch

from studio import q8
from studio.config import RunSpec, from_dict
from studio.errors import ConfigError, ModelError
from studio.models import load_model


def test_an_int8_linear_computes_with_its_rounded_weights_and_keeps_its_bias():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40, bias=True)
    layer = q8.Int8Linear(linear)
    assert layer.qweight.dtype == torch.int8 and layer.qweight.shape == (40, 96)
    rounded = layer.dequantized()
    assert (rounded - linear.weight).abs().max() <= linear.weight.abs().amax(1).max() / 127  # half a step, at most
    x = torch.randn(3, 5, 96)
    expected = x.to(torch.bfloat16).float() @ rounded.T + linear.bias  # the kernel's bf16 activations
    out = layer(x)
    assert out.shape == (3, 5, 40) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
    assert (out - linear(x)).abs().max() < 0.05 * linear(x).abs().max()  # close to the fp32 layer's answer


def test_q8_loading_swaps_every_linear_and_unties_the_head(tiny_model_dir):
    fp32 = load_model(str(tiny_model_dir), "fp32", "cpu").model
    loaded = load_model(str(tiny_model_dir), "q8", "cpu")
    model = loaded.model
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, q8.Int8Linear) for m in linears)
    assert len(linears) == 2 * 7 + 1  # two layers of q, k, v, o, gate, up, down; and the output head
    assert model.get_input_embeddings().weight.dtype == torch.float32  # the embedding stays as it was
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.inference_mode():
        a, b = fp32(ids).logits, model(ids).logits
    assert (a - b).abs().max() < 0.1 * a.abs().max()  # the same model, rounded


def test_q8_is_for_serving_on_a_cpu_only(tiny_model_dir):
    with pytest.raises(ModelError, match="CPU serving mode") as err:
        load_model(str(tiny_model_dir), "q8", "cuda")
    assert "bf16" in err.value.fix
    with pytest.raises(ConfigError, match="q8"):  # a run spec cannot train on int8 codes
        from_dict(RunSpec, {"name": "x", "dataset": "d", "model": {"ref": "bundled", "quant": "q8"}})
