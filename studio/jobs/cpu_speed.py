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
  matmul needs anyway). LoRA layers reading the very same tensor (q/k/v, gate/up) share one mask,
  as one LoRA on a fused qkv/gate_up projection does: the one change here that alters the random draws
  (not the drop rate); held-out loss is checked against the baseline by the benchmark;
- **frozen base weights stored in bf16** when the run trains under bf16 autocast: autocast casts every
  frozen weight to bf16 on every forward pass; storing them in bf16 does it once (same numbers);
- **LoRA inputs left in bf16** under bf16 autocast: PEFT casts each LoRA input to the LoRA weights'
  fp32 and autocast casts it straight back for the matmul (same numbers, two copies saved).
The worker's CPU trainer also computes logits only where a label is (prompt tokens need no LM head).
"""

from __future__ import annotations

import weakref

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
    """Switch the model to `packed_attention`; False (and unchanged) where it does not apply.

    Raises (with the model back on its own attention) where transformers no longer offers what this
    relies on, or where the switched model fails `_probe_packed`: the caller turns this change off.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    config = model.config
    windowed = getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None)
    if windowed or getattr(config, "attention_dropout", 0.0):
        return False  # sliding windows, soft-capping and attention dropout need the general path
    previous = config._attn_implementation
    expected = _probe_logits(model)
    AttentionInterface.register(ATTENTION, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # the fallback path still gets its mask
    try:
        model.set_attn_implementation(ATTENTION)
        if model.config._attn_implementation != ATTENTION:
            return False
        got = _probe_logits(model)
        if not torch.allclose(got, expected, atol=1e-4, rtol=1e-3):
            raise RuntimeError(f"packed attention gave other logits than {previous} "
                               f"(max difference {(got - expected).abs().max():.2e})")
    except Exception:
        model.set_attn_implementation(previous)
        raise
    return True


def _probe_logits(model, lengths: tuple[int, ...] = (5, 3)):
    """Logits of two short conversations packed in one row (fp32, no dropout), for comparing attention paths."""
    vocab = model.config.vocab_size
    ids = (torch.arange(sum(lengths)) * 7919 % vocab)[None].to(model.device)
    positions = torch.cat([torch.arange(n) for n in lengths])[None].to(model.device)
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(model.device.type, enabled=False):
            return model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
    finally:
        model.train(training)


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
    """Inverted dropout like `nn.Dropout(p)`, with 16-bit random draws.

    With `share` (one mask per shared input), LoRA layers that read the very same tensor right after one
    another (q/k/v read one normed hidden state, gate/up another) get the same dropped copy, as one LoRA
    on a fused qkv or gate_up projection (Phi-3's `qkv_proj`, `gate_up_proj`) gets with PEFT: one mask
    drawn and applied instead of three, and one saved for backward.
    """

    _last: dict = {}  # the most recent input (a weak reference and its version), its p and its dropped copy

    def __init__(self, p: float, share: bool = False):
        super().__init__()
        self.p = p
        self.share = share

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        last = FastDropout._last
        if self.share and last.get("p") == self.p and last["x"]() is x and last["version"] == x._version:
            return last["out"]
        source, device = x, x.device.type
        if torch.is_autocast_enabled(device):  # the LoRA matmul next would cast to bf16 anyway: mask half the bytes
            x = x.to(torch.get_autocast_dtype(device))
        out = _Dropout.apply(x, self.p)
        if self.share:
            FastDropout._last = {"x": weakref.ref(source), "version": source._version, "p": self.p, "out": out}
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model, share: bool = False) -> int:
    """Replace the LoRA layers' `nn.Dropout` with `FastDropout`; returns how many were replaced.

    All or nothing: the layers are found first, `FastDropout` is checked on a probe tensor, then swapped in.
    """
    from peft.tuners.lora import LoraLayer

    found = [(module.lora_dropout, name, dropout.p) for module in model.modules() if isinstance(module, LoraLayer)
             for name, dropout in module.lora_dropout.items()
             if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0]
    if found:
        _probe_dropout(found[0][2], share)
    for dropouts, name, p in found:
        dropouts[name] = FastDropout(p, share)
    return len(found)


def share_dropout_masks(model) -> int:
    """`use_fast_dropout` with one mask per shared input (see FastDropout); returns how many layers."""
    return use_fast_dropout(model, share=True)


def keep_lora_inputs(model) -> int:
    """Under bf16 autocast, stop PEFT casting each LoRA layer's input to the LoRA weights' fp32.

    Exact: the LoRA matmul right after runs under autocast, which casts the input back to bf16, and bf16 ->
    fp32 -> bf16 gives back the same numbers. It saves two copies of every o_proj/down_proj input (they
    arrive in bf16) per LoRA layer and pass. Relies on PEFT's `cast_input_dtype_enabled` switch (0.15+).
    """
    from peft.tuners.lora import LoraLayer

    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    if not layers:
        return 0
    probe = layers[0]  # checked on one layer first: PEFT must honour the switch (a rename would not)
    probe.cast_input_dtype_enabled = False
    if probe._cast_input_dtype(torch.ones(1, dtype=torch.bfloat16), torch.float32).dtype != torch.bfloat16:
        probe.cast_input_dtype_enabled = True
        raise RuntimeError("this PEFT casts LoRA inputs whatever cast_input_dtype_enabled says")
    for module in layers:
        module.cast_input_dtype_enabled = False
    return len(layers)


def _probe_dropout(p: float, share: bool = False) -> None:
    x = torch.ones(4096, requires_grad=True)
    y = FastDropout(p, share).train()(x)
    y.sum().backward()
    kept = (y != 0).float().mean().item()
    if y.shape != x.shape or not torch.equal(x.grad, y.detach()) or abs(kept - (1 - p)) > 0.1:
        raise RuntimeError(f"16-bit dropout kept {kept:.2f} of the values, not about {1 - p:.2f}")
    if share:  # the same tensor again: the same mask; another tensor: a fresh one
        again, other = FastDropout(p, True).train()(x), FastDropout(p, True).train()(x.detach().clone())
        if again is not y or torch.equal(other, y.detach()):
            raise RuntimeError("shared dropout masks are not reused for the same input only")
        FastDropout._last = {}


def store_frozen_in_bf16(model) -> int:
    """Keep frozen fp32 linear weights in bf16 (autocast would cast them on every pass); returns how many.

    The input embeddings stay fp32 (so does an LM head tied to them): the residual stream keeps fp32.
    """
    embeddings = model.get_input_embeddings().weight
    frozen = [module for module in model.modules()
              if isinstance(module, torch.nn.Linear) and getattr(module, "weight", None) is not None
              and not module.weight.requires_grad and module.weight.dtype == torch.float32
              and module.weight is not embeddings]
    for module in frozen:  # found first, then cast: a failure above leaves every weight as it was
        module.weight.data = module.weight.data.to(torch.bfloat16)
    return len(frozen)


LM_CHUNK = 1024  # scored positions per LM-head chunk: 1024 x 49,152 fp32 logits is 200 MB at most at once


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, chunk by chunk, for a frozen `weight`.

    The gradient for `hidden` is computed in the forward pass while each chunk's logits are at hand
    (softmax minus one-hot, times the weight), so no logits tensor is kept for the backward pass and none
    spans all positions. The weight is frozen (the LM head of a LoRA run), so it gets no gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        total = hidden.new_zeros((), dtype=torch.float32)
        grad = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            probs[torch.arange(len(t), device=t.device), t] -= 1.0
            grad[start:start + chunk] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None


def linear_cross_entropy(hidden, weight, targets, chunk: int = LM_CHUNK):
    """sum over positions of -log softmax(hidden @ weight.T)[target]; hidden [N, H], weight [V, H], targets [N].

    Under autocast both matmuls run in the autocast dtype, as the model's own LM head would; the
    log-sum-exp is taken in fp32.
    """
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk)


def lm_parts(model):
    """(backbone, LM head) where the head is a plain frozen bias-free Linear the loss may bypass, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if (type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad
            or not isinstance(backbone, torch.nn.Module)):
        return None
    return backbone, head


def fused_lm_loss(parts, inputs: dict, num_items_in_batch=None):
    """The causal-LM loss of `inputs` (with `labels`) by `linear_cross_entropy` over the trained positions only.

    The backbone runs on every token; the LM head only where the next token is a label, in chunks, never
    holding the logits of every position. Normalised like the model's own loss: by `num_items_in_batch`
    when given (the trainer's count over the whole step), else by the number of trained tokens.
    """
    backbone, head = parts
    labels = inputs["labels"]
    kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels", "logits_to_keep")}
    kwargs["use_cache"] = False
    hidden = backbone(**kwargs).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    total = linear_cross_entropy(hidden[keep], head.weight, targets[keep])
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return total / count
