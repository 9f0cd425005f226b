"""The CPU fast path of the training recipe. Each piece is measured in docs/benchmarks.md.

On a CPU the recipe splits each step into passes of about 1,024 packed tokens and drops gradient
checkpointing when such a pass fits in RAM (`presets.cpu_pass`). What makes a pass cheap, without
changing what is learned:

- **attention per packed sequence**: the row holds several conversations. SDPA with a block-diagonal
  mask computes every masked block; one causal SDPA call per conversation computes only what is
  used (the varlen idea of flash attention, with the `cu_seq_lens` TRL's collator already sends);
- **LoRA dropout from 16-bit random numbers**: `nn.Dropout` draws one random number per element, and
  on a CPU that costs almost a fifth of the step. Four 16-bit draws per 64-bit random number give
  the same drop rate to 1/65,536 (under autocast the mask is applied to the bf16 copy the LoRA
  matmul needs anyway);
- **frozen base weights stored in bf16** when the run trains under bf16 autocast: autocast casts every
  frozen weight to bf16 on every forward pass; storing them in bf16 does it once (same numbers).
The worker's CPU trainer also computes logits only where a label is (prompt tokens need no LM head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ATTENTION = "studio_packed"  # the name the attention function is registered under
DROP_BITS = 16  # random bits per dropout decision


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     cu_seq_lens_q=None, position_ids=None, **kwargs):
    """Causal attention of each packed sequence on its own; the general SDPA path otherwise.

    query is [batch, heads, tokens, head_dim]. A single row without a KV cache is split at the sequence
    starts (TRL's `cu_seq_lens_q`, or where `position_ids` do not count up by one).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    single_row = query.shape[0] == 1 and query.shape[2] == key.shape[2] and dropout == 0.0
    bounds = _sequence_bounds(cu_seq_lens_q, position_ids, query.shape[2]) if single_row else None
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, position_ids=position_ids, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    with torch.autocast(query.device.type, enabled=False):  # CPU flash attention is faster in fp32 than in bf16
        q, k, v = query.float(), key.float(), value.float()
        pieces = [F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True,
                                                 scale=scaling, enable_gqa=gqa)
                  for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
    out = torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _sequence_bounds(cu_seq_lens, position_ids, length: int) -> list[int] | None:
    if cu_seq_lens is not None and int(cu_seq_lens[-1]) == length:
        return [int(b) for b in cu_seq_lens]
    if position_ids is None:
        return None
    positions = position_ids[0]
    starts = (positions[1:] != positions[:-1] + 1).nonzero().flatten() + 1
    return [0, *starts.tolist(), length]


def use_packed_attention(model) -> bool:
    """Switch the model to `packed_attention`; False (and unchanged) where it does not apply."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    config = model.config
    windowed = getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None)
    if windowed or getattr(config, "attention_dropout", 0.0):
        return False  # sliding windows, soft-capping and attention dropout need the general path
    AttentionInterface.register(ATTENTION, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # the fallback path still gets its mask
    model.set_attn_implementation(ATTENTION)
    return model.config._attn_implementation == ATTENTION


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: float):
        n = x.numel()
        words = torch.randint(-2**63, 2**63 - 1, (-(-n // 4),), dtype=torch.int64, device=x.device)
        bits = words.view(torch.int16)[:n].view_as(x)  # uniform over [-32768, 32767]
        keep = bits >= round(p * 2**DROP_BITS) - 2**(DROP_BITS - 1)  # P(drop) = p to 1/65,536
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.where(keep, x, 0.0).mul_(ctx.scale)  # where(): 9x faster than multiplying by a bool mask

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None


class FastDropout(torch.nn.Module):
    """Inverted dropout like `nn.Dropout(p)`, with 16-bit random draws."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        device = x.device.type
        if torch.is_autocast_enabled(device):  # the LoRA matmul next would cast to bf16 anyway: mask half the bytes
            x = x.to(torch.get_autocast_dtype(device))
        return _Dropout.apply(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model) -> int:
    """Replace the LoRA layers' `nn.Dropout` with `FastDropout`; returns how many were replaced."""
    from peft.tuners.lora import LoraLayer

    replaced = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, dropout in module.lora_dropout.items():
                if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                    module.lora_dropout[name] = FastDropout(dropout.p)
                    replaced += 1
    return replaced


def store_frozen_in_bf16(model) -> int:
    """Keep frozen fp32 linear weights in bf16 (autocast would cast them on every pass); returns how many.

    The input embeddings stay fp32 (so does an LM head tied to them): the residual stream keeps fp32.
    """
    embeddings = model.get_input_embeddings().weight
    changed = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (isinstance(module, torch.nn.Linear) and weight is not None and not weight.requires_grad
                and weight.dtype == torch.float32 and weight is not embeddings):
            module.weight.data = weight.data.to(torch.bfloat16)
            changed += 1
    return changed
