"""One decode step of a Llama-family model without transformers' per-step machinery (the serving hot loop).

A decode step feeds every running row its latest token. Through `model(...)` it pays, every step, for what
only a prefill needs: the causal mask built from the 2-D mask, the cache's update bookkeeping, the keyword
plumbing of four nested forwards. On a 135M model on a CPU that is about a fifth of a q8 step
(`python -m benchmarks.decode_floor` times both). `step` below is the same arithmetic written out for one
new token per row: it calls the model's own modules (embeddings, norms, rotary embedding, every projection,
the MLP, the head), so whatever wraps them (PEFT's LoRA layers, merged or not, the stacked LoRA's hooks,
q8's int8 linears) works unchanged, and its logits are bit-identical to the model's
(tests/unit/test_decode.py). On a q8 base the projections that read one input are one int8 matmul
where no adapter is in the step. Anything else (another architecture, sliding windows, attention other than
SDPA, PEFT's `adapter_names` route, a cache that is not plain dynamic layers) goes through `model(...)`.
"""

from __future__ import annotations

LEAN_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")  # the same layer shapes, biases or not


def lean_model(model):
    """The transformers model under `model` (PEFT's wrapper or not) when `step` can run it, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__ not in LEAN_ARCHITECTURES:
        return None
    config = base.config
    if config._attn_implementation != "sdpa" or getattr(config, "use_sliding_window", False):
        return None
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return None
    return base


def step(model, layers, last, positions, mask, base_only: bool = False):
    """Logits [rows, 1, vocab] for `last` [rows] at `positions` [rows], the cache `layers` (one DynamicLayer
    per decoder layer) extended by one position; `mask` [rows, cache length + 1] is 1 where a row has a token.

    `base_only`: no adapter adds anything in this step (the engine routed every row to the base), so q8's
    fused projections (studio/q8.py `Fused`) may stand in for the projection modules: one int8 matmul for
    q, k and v, one for gate and up.
    The attention is transformers' SDPA call for one query token: GQA in the kernel when no row is padded,
    else the query heads packed by key head under the padding mask (its `pack_gqa`)."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    inner = model.model
    rows = last.shape[0]
    hidden = inner.embed_tokens(last[:, None])
    cos, sin = inner.rotary_emb(hidden, position_ids=positions[:, None])
    cos, sin = cos[:, None], sin[:, None]  # one head axis, as apply_rotary_pos_emb's unsqueeze_dim=1
    padded = not bool(mask.all())
    attn_mask = mask.bool()[:, None, None, :] if padded else None
    for layer, cached in zip(inner.layers, layers, strict=True):
        attention = layer.self_attn
        head_dim, groups = attention.head_dim, attention.num_key_value_groups
        query, key, value = _projections(attention, ("q_proj", "k_proj", "v_proj"), layer.input_layernorm(hidden),
                                         base_only)
        query = _rotate(query.reshape(rows, 1, -1, head_dim).transpose(1, 2), cos, sin)
        key = _rotate(key.reshape(rows, 1, -1, head_dim).transpose(1, 2), cos, sin)
        value = value.reshape(rows, 1, -1, head_dim).transpose(1, 2)
        cached.keys = torch.cat([cached.keys, key], dim=-2)
        cached.values = torch.cat([cached.values, value], dim=-2)
        if padded and groups > 1:
            heads = query.shape[1]
            out = sdpa(query.reshape(rows, heads // groups, groups, head_dim), cached.keys, cached.values,
                       attn_mask=attn_mask, scale=attention.scaling).reshape(rows, heads, 1, head_dim)
        else:
            out = sdpa(query, cached.keys, cached.values, attn_mask=attn_mask, scale=attention.scaling,
                       enable_gqa=groups > 1)
        hidden = hidden + _module(attention.o_proj, base_only)(out.transpose(1, 2).reshape(rows, 1, -1))
        hidden = hidden + _mlp(layer.mlp, layer.post_attention_layernorm(hidden), base_only)
    return _module(model.lm_head, base_only)(inner.norm(hidden))


def _module(module, base_only: bool):
    """The layer to call: in a base-only step, the base layer under PEFT's wrapper (the engine has switched
    PEFT's layers off for it: the wrapper would only check that and call the base layer)."""
    return getattr(module, "base_layer", module) if base_only else module


def _projections(parent, names: tuple[str, ...], x, base_only: bool) -> list:
    """The outputs of `parent`'s projections `names` for x [rows, 1, hidden]: one fused int8 matmul where
    q8 made one (`q8.fuse` names it after the first) and the step is the base's alone, else each module (and
    whatever wraps or hooks it)."""
    fused = parent.__dict__.get(f"int8_{names[0]}") if base_only else None
    if fused is None:
        return [_module(getattr(parent, name), base_only)(x) for name in names]
    return [out[:, None] for out in fused(x[:, 0])]


def _mlp(mlp, x, base_only: bool):
    """`mlp(x)` (LlamaMLP's arithmetic), through `_projections` in a base-only step."""
    if not base_only:
        return mlp(x)
    gate, up = _projections(mlp, ("gate_proj", "up_proj"), x, base_only)
    return _module(mlp.down_proj, base_only)(mlp.act_fn(gate) * up)


def _rotate(x, cos, sin):
    """transformers' apply_rotary_pos_emb for one tensor: x * cos + rotate_half(x) * sin."""
    import torch

    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
