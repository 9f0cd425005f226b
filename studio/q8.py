"""`q8`: weight-only int8 linear layers for serving on a CPU (`studio serve --quant q8`, the Chat tab's precision).

Decoding one token of a small model on a CPU reads every weight once and does little else with it, so its speed
is set by how many bytes the weights take: fp32 reads 4 bytes per weight, llama.cpp's f16 2, its Q8_0 about 1.
Here each `nn.Linear` (the output head included) keeps its weight as int8 with one scale per output row
(symmetric, round to nearest: max |w| of the row maps to 127) and multiplies with PyTorch's own int8 kernel,
`torch._weight_int8pack_mm`, on bf16 activations; everything else (embeddings, norms, attention, the KV cache)
stays in fp32. PEFT's LoRA layers wrap these like any linear layer, so adapters, mixed-adapter batches and
adapter hot-swap work unchanged (adapters are never merged into int8 weights: that would round them away).

Answers are close to fp32's but not equal: per-row scales (the only kind the kernel takes) lose more than
llama.cpp's Q8_0 blocks of 32, most on small models (docs/serving.md measures speed and agreement), so fp32
stays the CPU default and q8 is a choice of speed over exact answers.
Serving only: a q8 base cannot be trained (the int8 kernel has no backward), so training keeps QUANT_MODES.
"""

from __future__ import annotations

import torch
from torch import nn


class Int8Linear(nn.Linear):
    """A frozen linear layer whose weight is int8 codes and per-row scales (an nn.Linear to PEFT and transformers)."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)  # not nn.Linear's: no float weight is allocated
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        codes = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("qweight", codes.contiguous())
        self.register_buffer("scales", scale.to(torch.bfloat16))
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The int8 codes (PEFT reads a base layer's weight for its device, and its dtype: an integer one tells
        it the base is quantized, so the adapter is not cast to it)."""
        return self.qweight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # the kernel's fast path takes bf16 activations
        out = torch._weight_int8pack_mm(flat, self.qweight, self.scales).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, in fp32 (what the tests compare against)."""
        return self.qweight.float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, "
                f"bias={self.bias is not None}")


def quantize(model: nn.Module) -> int:
    """Replace every nn.Linear of `model` (an fp32 model on the CPU) with an Int8Linear; returns how many.

    Tied weights (an output head sharing the embedding matrix) are untied: the embedding stays fp32.
    """
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and not isinstance(module, Int8Linear)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(module))
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False  # the head is its own int8 copy now: nothing may re-tie it
    for module in model.modules():
        for names in FUSED:
            fuse(module, names)
    return len(targets)


FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # projections that read the same input


class Fused:
    """Sibling Int8Linears that read the same input (an attention's q, k and v; an MLP's gate and up) held in
    one int8 matrix: each layer's codes and scales are views of its rows, so the layers work as before and a
    decode step can multiply once for all of them (studio/serving/decode.py). Output rows are independent in
    the kernel, so the split result equals the layers' own outputs bit for bit."""

    def __init__(self, layers: list[Int8Linear]):
        self.codes = torch.cat([layer.qweight for layer in layers])
        self.scales = torch.cat([layer.scales for layer in layers])
        self.bias = None if all(layer.bias is None for layer in layers) else torch.cat(
            [layer.bias.detach() if layer.bias is not None else torch.zeros(layer.out_features) for layer in layers])
        self.sizes = [layer.out_features for layer in layers]
        start = 0
        for layer, size in zip(layers, self.sizes, strict=True):
            layer.qweight, layer.scales = self.codes[start:start + size], self.scales[start:start + size]
            start += size

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output for `x` [rows, in] (float32), as Int8Linear.forward computes it."""
        out = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.codes, self.scales).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return list(out.split(self.sizes, dim=-1))


def fuse(parent: nn.Module, names: tuple[str, ...]) -> None:
    """Give `parent` a Fused of its children `names` (as `parent.int8_<first>`) when all are Int8Linears of
    one input width."""
    layers = [getattr(parent, name, None) for name in names]
    if all(isinstance(layer, Int8Linear) for layer in layers) and len({lay.in_features for lay in layers}) == 1:
        parent.__dict__[f"int8_{names[0]}"] = Fused(layers)  # not a submodule: state_dict and PEFT never see it


def supported() -> str | None:
    """Why q8 cannot run here, or None when it can (the int8 kernel exists in this PyTorch build)."""
    try:
        torch._weight_int8pack_mm(torch.ones(1, 32, dtype=torch.bfloat16), torch.ones(8, 32, dtype=torch.int8),
                                  torch.ones(8, dtype=torch.bfloat16))
    except (RuntimeError, AttributeError) as exc:
        return f"this PyTorch has no CPU int8 weight kernel ({exc})"
    return None
