"""A mixed-adapter batch with two matmuls per LoRA layer: every row through its own adapter, or none.

PEFT's `adapter_names=` route splits each projection's input by adapter and runs every adapter's two small
matmuls on its own rows, registering hooks on every layer at every forward: on a 2-core CPU, 8 rows of
base + 2 adapters decoded about 75% slower than the base alone (150 against 85 ms a step, the bundled model).
Here each LoRA layer keeps the batch's adapters stacked, A as one [columns, in] matrix and B (times its
scaling) as one [out, columns], and a forward hook adds

    ((x @ A.T) * row_mask) @ B.T

to the base layer's output, where `row_mask` keeps each row's own adapter's r columns (none for a base row).
PEFT's own LoRA is switched off meanwhile, so the layers run their base weights alone.

Plain LoRA on linear layers only: an adapter with DoRA or another variant, a LoRA bias, LoRA on embeddings
or convolutions, or `modules_to_save` is left to PEFT's route (`BatchedLora.build` returns None).
"""

from __future__ import annotations


class BatchedLora:
    """The stacked adapters of one set of PEFT adapter names, hooked into the model's LoRA layers."""

    def __init__(self, adapters: tuple[str, ...], layers: dict):
        self.adapters = adapters
        self.layers = layers  # LoRA layer -> (A [columns, in], B [out, columns], layout)
        self.masks: dict | None = None  # layout -> [rows, 1, columns] while a mixed step runs; None: hooks idle
        self._handles = [layer.register_forward_hook(self._hook) for layer in layers]

    @classmethod
    def build(cls, model, adapters: tuple[str, ...]) -> BatchedLora | None:
        """Stack `adapters` (PEFT names) of `model`, a PeftModel; None where one of them needs PEFT's route."""
        import torch
        from peft.tuners.lora import LoraLayer

        for name in adapters:
            config = model.peft_config[name]
            if getattr(config, "modules_to_save", None) or getattr(config, "use_dora", False):
                return None
        layers = {}
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            mine = [a for a in adapters if a in module.lora_A or a in getattr(module, "lora_embedding_A", {})]
            if not mine:
                continue
            if any(not _plain_linear(module, a) for a in mine):
                return None
            a_stack = torch.cat([module.lora_A[a].weight for a in mine])
            b_stack = torch.cat([module.lora_B[a].weight * module.scaling[a] for a in mine], dim=1)
            layout = tuple((a, module.lora_A[a].weight.shape[0]) for a in mine)
            layers[module] = (a_stack.detach(), b_stack.detach(), layout)
        return cls(adapters, layers)

    def set_rows(self, rows: list[str | None]) -> None:
        """Route this step's rows: each one's PEFT adapter name, or None for the base."""
        import torch

        masks = {}
        for a_stack, _, layout in self.layers.values():
            if layout in masks:
                continue
            mask = torch.zeros(len(rows), 1, sum(r for _, r in layout), device=a_stack.device, dtype=a_stack.dtype)
            start = 0
            for name, rank in layout:
                for i, row in enumerate(rows):
                    if row == name:
                        mask[i, 0, start:start + rank] = 1.0
                start += rank
            masks[layout] = mask
        self.masks = masks

    def idle(self) -> None:
        """Hooks off (PEFT's own routes serve the next forward)."""
        self.masks = None

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self.masks = [], None

    def _hook(self, module, args, output):
        if self.masks is None:
            return None
        import torch.nn.functional as F

        a_stack, b_stack, layout = self.layers[module]
        picked = F.linear(args[0].to(a_stack.dtype), a_stack) * self.masks[layout]
        return output + F.linear(picked, b_stack).to(output.dtype)


def _plain_linear(module, adapter: str) -> bool:
    import torch

    return (adapter in module.lora_A and isinstance(module.lora_A[adapter], torch.nn.Linear)
            and module.lora_A[adapter].bias is None and module.lora_B[adapter].bias is None
            and adapter not in getattr(module, "lora_variant", {}))
