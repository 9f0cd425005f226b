"""Pruning: SparseGPT (Frantar and Alistarh, 2023) and the magnitude baseline.

SparseGPT prunes a model one decoder layer at a time. For each linear layer it collects the
Hessian of the layer-wise reconstruction loss, H = 2 X X^T, from the inputs X the layer sees on a
few calibration samples (inputs that already went through the pruned layers before it), then walks
the weight columns left to right: each pruned weight's error is spread over the weights to its
right through the inverse Hessian (optimal brain surgeon), in blocks of `blocksize` columns whose
updates to the rest of the matrix are applied lazily, once per block. Unstructured masks are chosen
per block by the OBS saliency w^2 / [H^-1]_jj^2; n:m masks (2:4, 4:8) in every group of m columns.
Written after the reference code, github.com/IST-DASLab/sparsegpt (sparsegpt.py, opt.py).

Magnitude pruning zeroes the smallest |w| of each linear layer (or of each group of m, for n:m)
and updates nothing else: the baseline SparseGPT has to beat.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from studio import paths
from studio.errors import ConfigError, ModelError, RunError
from studio.util import Progress, ShouldStop, write_json_atomic
from studio.util import never as _never
from studio.util import no_progress as _no_progress

METHODS = ("sparsegpt", "magnitude")
PATTERNS = ("", "2:4", "4:8")  # "" = unstructured; "n:m" = n of every m consecutive input weights are zero
CARD_FILE = "pruning.json"



@dataclass(frozen=True)
class PruneSpec:
    method: str = "sparsegpt"
    sparsity: float = 0.5  # share of each linear layer's weights set to zero (n:m patterns fix it at n/m)
    pattern: str = ""  # "", "2:4" or "4:8"
    calib_samples: int = 32  # calibration windows; the paper uses 128 x 2048 tokens, a few dozen suffice here
    calib_len: int = 256  # tokens per calibration window
    blocksize: int = 128  # columns per lazy-update block (the reference default)
    percdamp: float = 0.01  # dampening added to H's diagonal, as a share of its mean (keeps H invertible)
    seed: int = 0  # picks the calibration windows

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"Unknown pruning method {self.method!r}.", f"Use one of: {', '.join(METHODS)}.")
        if self.pattern not in PATTERNS:
            raise ConfigError(f"Unknown sparsity pattern {self.pattern!r}.",
                              "Use '' (unstructured), '2:4' or '4:8'.")
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"Sparsity {self.sparsity!r} is outside 0 to 1.",
                              "Give the share of weights to zero as a fraction at least 0 and below 1, "
                              "e.g. 0.5 for 50%.")
        for key in ("calib_samples", "calib_len", "blocksize"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be at least 1.", f"Set {key} to 1 or more.")
        if not 0.0 < self.percdamp < 1.0:
            raise ConfigError(f"percdamp={self.percdamp} must be between 0 and 1.", "Use 0.01, the paper's value.")

    @property
    def n_m(self) -> tuple[int, int]:
        """(zeros per group, group size); (0, 0) for unstructured."""
        if not self.pattern:
            return 0, 0
        n, m = (int(x) for x in self.pattern.split(":"))
        return n, m

    @property
    def target_sparsity(self) -> float:
        n, m = self.n_m
        return n / m if m else float(self.sparsity)

    @property
    def label(self) -> str:
        return f"{self.method} {self.pattern}" if self.pattern else f"{self.method} {self.sparsity:.0%}"


# ---------------------------------------------------------------- finding the layers


def decoder_layers(model):
    """The model's list of decoder blocks (model.model.layers for Llama-like models)."""
    import torch.nn as nn

    inner = getattr(model, "model", None)
    if inner is not None and isinstance(getattr(inner, "layers", None), nn.ModuleList):
        return inner.layers
    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ModelError(f"Cannot find the decoder layers of {type(model).__name__}.",
                     "Pruning supports decoder-only transformers with a list of blocks (Llama, Mistral, Qwen...).")


def linear_layers(block) -> dict:
    """The nn.Linear layers inside one decoder block, by name (q_proj, ..., down_proj)."""
    import torch.nn as nn

    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def _check_prunable(model) -> None:
    import torch

    dtypes = {p.dtype for p in decoder_layers(model).parameters()}
    if not dtypes <= {torch.float32, torch.float16, torch.bfloat16}:
        raise ModelError("Pruning needs a 16- or 32-bit model; this one holds quantized weights.",
                         "Load the base in fp32 (CPU) or bf16/fp16 (GPU), prune, then quantize for training.")


# ---------------------------------------------------------------- masks


def magnitude_mask(weight, sparsity: float, n: int = 0, m: int = 0):
    """True where a weight is pruned: the smallest |w| of the matrix, or n of every m in a row."""
    import torch

    w = weight.abs().float()
    if m:
        groups = w.reshape(w.shape[0], -1, m)
        idx = torch.topk(groups, n, dim=2, largest=False).indices
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(2, idx, True).reshape(w.shape)
    k = int(w.numel() * sparsity)
    if k == 0:
        return torch.zeros_like(w, dtype=torch.bool)
    thresh = torch.kthvalue(w.flatten(), k).values
    return w <= thresh


def prune_magnitude(linear, sparsity: float, n: int = 0, m: int = 0) -> None:
    _check_group(linear.weight.shape[1], m)
    mask = magnitude_mask(linear.weight.data, sparsity, n, m)
    linear.weight.data[mask] = 0


def _check_group(columns: int, m: int) -> None:
    if m and columns % m:
        raise ConfigError(f"A layer has {columns} input features, not a multiple of the n:m group size {m}.",
                          "Use unstructured sparsity for this model.")


# ---------------------------------------------------------------- SparseGPT


class Hessian:
    """Running H = 2/N * sum x x^T over the N input rows a linear layer has seen."""

    def __init__(self, columns: int, device):
        import torch

        self.H = torch.zeros((columns, columns), device=device, dtype=torch.float32)
        self.rows = 0

    def add(self, inp) -> None:
        x = inp.reshape(-1, inp.shape[-1]).float()
        total = self.rows + x.shape[0]
        self.H *= self.rows / total
        self.rows = total
        x = math.sqrt(2 / total) * x
        self.H += x.t() @ x


def _block_mask(W1, d1, sparsity: float, splits: list[int]):
    """Adaptive unstructured mask of one block: the lowest-saliency share, saliency w^2 / [H^-1]_jj^2,
    chosen separately in each row group (each original layer when several share one input)."""
    import torch

    saliency = W1**2 / d1.reshape(1, -1) ** 2
    mask = torch.zeros_like(W1, dtype=torch.bool)
    start = 0
    for rows in splits:
        part = saliency[start:start + rows]
        k = int(part.numel() * sparsity)
        if k:
            mask[start:start + rows] = part <= torch.kthvalue(part.flatten(), k).values
        start += rows
    return mask


def sparsegpt_prune(linear, H, sparsity: float, n: int = 0, m: int = 0,
                    blocksize: int = 128, percdamp: float = 0.01) -> float:
    """Prune `linear` in place with SparseGPT given its Hessian H; returns the OBS reconstruction loss."""
    W, loss = sparsegpt_weights(linear.weight.data, H, sparsity, n, m, blocksize, percdamp)
    linear.weight.data = W.to(linear.weight.dtype)
    return loss


def sparsegpt_weights(weight, H, sparsity: float, n: int = 0, m: int = 0, blocksize: int = 128,
                      percdamp: float = 0.01, splits: list[int] | None = None):
    """(pruned fp32 copy of `weight`, OBS loss). Rows are independent given H, so layers that share
    an input (q/k/v, gate/up) are pruned as one stacked matrix, with `splits` giving each one's rows."""
    import torch

    W = weight.clone().float()
    rows, cols = W.shape
    splits = splits or [rows]
    _check_group(cols, m)
    H = H.clone()
    dead = torch.diag(H) == 0  # inputs that were always zero: any weight there is free to prune
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    # Upper Cholesky factor of H^-1: its rows give the OBS updates column by column.
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    loss = torch.zeros(rows, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        d1 = torch.diag(Hinv1)
        mask1 = _block_mask(W1, d1, sparsity, splits) if not m else torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if m and i % m == 0:  # choose this group's n zeros from the weights as updated so far
                saliency = W1[:, i:i + m] ** 2 / d1[i:i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(saliency, n, dim=1, largest=False).indices, True)
            w = W1[:, i]
            err = torch.where(mask1[:, i], w, 0.0) / Hinv1[i, i]  # (w - q) / d, where q is w with the mask zeroed
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)  # OBS update: the rest of the block absorbs the error
            Err1[:, i] = err
        W1.masked_fill_(mask1, 0.0)  # the update leaves pruned weights near 0; make them exactly 0
        W[:, i1:i2] = W1
        loss += (Err1**2).sum(1) / 2
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the lazy batched update of all columns after the block
    return W, float(loss.sum())


class _Captured(Exception):
    """Raised by the hook on the first block to stop a forward pass once its inputs are saved."""


def _block_inputs(model, layers, windows, batch_size: int):
    """Run the embeddings once and keep what the first block receives: (hidden, args, kwargs) per batch."""
    import torch

    saved = []

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        saved.append((hidden, args[1:], kwargs))
        raise _Captured

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size].to(model.device)
            try:
                with torch.no_grad():
                    model(input_ids=batch, use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return saved


def _run_block(block, hidden, args, kwargs):
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _shared_input_groups(block, linears: dict, first) -> list[tuple[str, ...]]:
    """Names of the linear layers grouped by the very tensor they take as input (q/k/v, gate/up)."""
    seen = []  # (name, input) pairs; holding the tensors keeps their identities distinct

    def record(name):
        return lambda module, inp, out: seen.append((name, inp[0]))

    handles = [lin.register_forward_hook(record(name)) for name, lin in linears.items()]
    try:
        _run_block(block, *first)
    finally:
        for handle in handles:
            handle.remove()
    groups: list[tuple[list[str], object]] = []
    for name, x in seen:
        match = next((g for g in groups if g[1] is x), None)
        if match:
            match[0].append(name)
        else:
            groups.append(([name], x))
    return [tuple(names) for names, _ in groups]


def _prune_block(block, inputs, spec: PruneSpec) -> float:
    """SparseGPT on every linear layer of one block, from Hessians of this block's inputs.

    Layers fed the very same input tensor (q/k/v, gate/up) share one Hessian and are pruned together.
    """
    import torch

    linears = linear_layers(block)
    device = next(block.parameters()).device
    groups = _shared_input_groups(block, linears, inputs[0])
    hessians = {key: Hessian(linears[key[0]].in_features, device) for key in groups}
    handles = [linears[key[0]].register_forward_hook(lambda mod, inp, out, h=hessians[key]: h.add(inp[0].detach()))
               for key in groups]
    try:
        for hidden, args, kwargs in inputs:
            _run_block(block, hidden, args, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    n, m = spec.n_m
    loss = 0.0
    with _one_thread():
        for key, hessian in hessians.items():
            weights = [linears[name].weight.data for name in key]
            stacked, part = sparsegpt_weights(torch.cat(weights), hessian.H, spec.sparsity, n, m, spec.blocksize,
                                              spec.percdamp, [w.shape[0] for w in weights])
            loss += part
            for name, new in zip(key, torch.split(stacked, [w.shape[0] for w in weights]), strict=True):
                linears[name].weight.data = new.to(linears[name].weight.dtype).contiguous()
    return loss


@contextmanager
def _one_thread():
    """The column loop is thousands of small ops: on CPU one thread avoids thread hand-offs (10x faster
    on a busy 2-core machine); GPUs are unaffected. The setting is process-wide: the app runs pruning in a
    task process of its own (studio.jobs.tasks), so chat in the app keeps its threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prune_model(model, spec: PruneSpec, windows=None, progress: Progress = _no_progress,
                should_stop: ShouldStop = _never, batch_size: int = 8) -> dict:
    """Prune every linear layer in the decoder blocks of `model` in place; returns a report.

    `windows` is a LongTensor [samples, tokens] of calibration text (needed by SparseGPT only).
    """
    import torch

    spec.validate()
    _check_prunable(model)
    layers = decoder_layers(model)
    n, m = spec.n_m
    start = time.time()
    loss = 0.0
    with torch.no_grad():
        if spec.method == "magnitude":
            for i, block in enumerate(layers):
                _stop_if(should_stop)
                for lin in linear_layers(block).values():
                    prune_magnitude(lin, spec.sparsity, n, m)
                progress((i + 1) / len(layers), f"magnitude: block {i + 1}/{len(layers)}")
        else:
            if windows is None or len(windows) == 0:
                raise ConfigError("SparseGPT needs calibration text.", "Give a dataset with a train split.")
            inputs = _block_inputs(model, layers, windows, batch_size)
            for i, block in enumerate(layers):
                _stop_if(should_stop)
                loss += _prune_block(block, inputs, spec)
                inputs = [(_run_block(block, h, a, k), a, k) for h, a, k in inputs]  # feed the pruned outputs on
                progress((i + 1) / len(layers), f"SparseGPT: block {i + 1}/{len(layers)}")
    return {**asdict(spec), "label": spec.label, "target_sparsity": spec.target_sparsity,
            "measured_sparsity": round(measured_sparsity(model), 4), "reconstruction_loss": round(loss, 4),
            "seconds": round(time.time() - start, 1)}


def _stop_if(should_stop: ShouldStop) -> None:
    if should_stop():
        raise RunError("Pruning was cancelled; the model in memory is half pruned and was not saved.",
                       "Start pruning again when you are ready.")


def measured_sparsity(model) -> float:
    """Share of exact zeros over the weights of the decoder blocks' linear layers."""
    zeros = total = 0
    for block in decoder_layers(model):
        for lin in linear_layers(block).values():
            zeros += int((lin.weight == 0).sum())
            total += lin.weight.numel()
    return zeros / max(total, 1)


# ---------------------------------------------------------------- calibration and held-out text


def windows_from_rows(rows, samples: int, length: int, seed: int = 0):
    """`samples` windows of `length` tokens cut at random places from the rows' concatenated input_ids."""
    import torch

    stream = [t for row in rows for t in row["input_ids"]]
    if len(stream) < length:
        raise ConfigError(f"The calibration text has {len(stream)} tokens, fewer than one window of {length}.",
                          "Use a bigger dataset, or a shorter --calib-len.")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(stream) - length + 1) for _ in range(samples)]
    return torch.tensor([stream[s:s + length] for s in starts], dtype=torch.long)


def text_rows(tokenizer, texts: list[str], max_len: int) -> list[dict]:
    """Plain text as evaluation rows: every token counts (mask 1), cut into rows of at most max_len."""
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), max_len):
            chunk = ids[start:start + max_len]
            if len(chunk) > 1:
                rows.append({"input_ids": chunk, "assistant_masks": [1] * len(chunk)})
    return rows


def builtin_corpus(split: str) -> list[str]:
    """English technical prose that ships with every Python: the Language Reference topics of pydoc.

    Topics are split alphabetically by index, even for calibration ("train") and odd for held-out
    ("eval"), so the held-out perplexity is measured on text the pruning never saw.
    """
    from pydoc_data.topics import topics

    names = sorted(topics)
    keep = 0 if split == "train" else 1
    return [topics[name] for i, name in enumerate(names) if i % 2 == keep]


def corpus_rows(tokenizer, dataset: str, split: str, max_len: int = 256) -> list[dict]:
    """Rows of a prepared dataset's split, or of the built-in corpus when dataset is 'builtin:pydoc'."""
    if dataset == "builtin:pydoc":
        return text_rows(tokenizer, builtin_corpus(split), max_len)
    from studio.evaluation import split_rows

    return split_rows(dataset, split)


# ---------------------------------------------------------------- whole model: prune, evaluate, save, sweep


def prune_and_save(ref: str, spec: PruneSpec, dataset: str, out_name: str, overwrite: bool = False,
                   eval_rows: int = 64, progress: Progress = _no_progress, should_stop: ShouldStop = _never) -> dict:
    """Load `ref`, prune it, measure held-out perplexity before and after, save an HF folder."""
    from studio.evaluation import perplexity
    from studio.export import target_dir
    from studio.models import load_model

    spec.validate()
    out = target_dir(out_name, overwrite)
    progress(0.02, f"Loading {ref}...")
    loaded = load_model(ref, "fp32" if _on_cpu() else "bf16")
    model, tok = loaded.model, loaded.tokenizer
    windows = windows_from_rows(corpus_rows(tok, dataset, "train"), spec.calib_samples, spec.calib_len, spec.seed)
    held_out = corpus_rows(tok, dataset, "eval")[:eval_rows]
    before = perplexity(model, tok, held_out)
    report = prune_model(model, spec, windows, lambda f, msg: progress(0.1 + 0.75 * f, msg), should_stop)
    after = perplexity(model, tok, held_out)
    report.update(base_model=ref, dataset=dataset, perplexity_before=before["perplexity"],
                  perplexity_after=after["perplexity"], eval_tokens=after["tokens"])
    progress(0.9, f"Saving to {out}...")
    _save(model, tok, out, report, overwrite)
    progress(1.0, f"{spec.label}: perplexity {before['perplexity']:.2f} -> {after['perplexity']:.2f}")
    return {**report, "path": str(out)}


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def _save(model, tokenizer, out: Path, report: dict, overwrite: bool) -> None:
    import shutil

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_json_atomic(tmp / CARD_FILE, report)
    if overwrite:
        shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


SWEEP_DEFAULT = ("0", "0.25", "0.5", "0.6", "0.7", "2:4")


def parse_level(level: str) -> tuple[float, str]:
    """'0.5' or '50%' -> (0.5, ''); '2:4' -> (0.5, '2:4')."""
    level = str(level).strip()
    if ":" in level:
        if level not in PATTERNS:
            raise ConfigError(f"Unknown n:m pattern {level!r}.", "Use 2:4 or 4:8.")
        n, m = (int(x) for x in level.split(":"))
        return n / m, level
    try:
        value = float(level.rstrip("%")) / (100 if level.endswith("%") else 1)
    except ValueError as exc:
        raise ConfigError(f"Cannot read the sparsity level {level!r}.", "Use 0.5, 50% or 2:4.") from exc
    PruneSpec(sparsity=value).validate()
    return value, ""


def sweep(ref: str, dataset: str, levels=SWEEP_DEFAULT, methods=METHODS, calib_samples: int = 32,
          calib_len: int = 256, eval_rows: int = 64, progress: Progress = _no_progress,
          should_stop: ShouldStop = _never) -> list[dict]:
    """Held-out perplexity for each method at each sparsity level, all from one loaded copy of the base."""
    import torch

    from studio.evaluation import perplexity
    from studio.models import load_model

    parsed = [parse_level(level) for level in levels]
    loaded = load_model(ref, "fp32" if _on_cpu() else "bf16")
    model, tok = loaded.model, loaded.tokenizer
    original = {k: v.clone() for k, v in model.state_dict().items()}
    windows = windows_from_rows(corpus_rows(tok, dataset, "train"), calib_samples, calib_len)
    held_out = corpus_rows(tok, dataset, "eval")[:eval_rows]
    jobs = [(method, s, p) for s, p in parsed for method in methods if s > 0 or method == methods[0]]
    results = []
    for j, (method, sparsity, pattern) in enumerate(jobs):
        _stop_if(should_stop)
        progress(j / len(jobs), f"{method} {pattern or f'{sparsity:.0%}'} ({j + 1}/{len(jobs)})")
        model.load_state_dict(original)
        spec = PruneSpec(method, sparsity, pattern, calib_samples, calib_len)
        report = prune_model(model, spec, windows, should_stop=should_stop) if sparsity > 0 else {
            "measured_sparsity": 0.0, "seconds": 0.0}
        ppl = perplexity(model, tok, held_out)
        results.append({"method": "dense" if sparsity == 0 else method, "level": pattern or f"{sparsity:.0%}",
                        "sparsity": round(report["measured_sparsity"], 4), "perplexity": round(ppl["perplexity"], 3),
                        "eval_tokens": ppl["tokens"], "prune_seconds": report["seconds"]})
    model.load_state_dict(original)
    del original
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    progress(1.0, "Sweep done.")
    return results


def sweep_markdown(results: list[dict]) -> str:
    """Levels as rows, methods as columns: the table docs/evaluation.md shows."""
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    dense = next((r for r in results if r["method"] == "dense"), None)
    lines = ["| sparsity | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    if dense:
        lines.append("| 0% (dense) | " + " | ".join(f"{dense['perplexity']:.2f}" for _ in methods) + " |")
    for level in dict.fromkeys(r["level"] for r in results if r["method"] != "dense"):
        cells = [next((f"{r['perplexity']:.2f}" for r in results if r["method"] == m and r["level"] == level), "")
                 for m in methods]
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_sweep(results: list[dict], name: str | None = None) -> Path:
    """sweep.json and sweep.md under <workspace>/exports/sweeps/<name>; returns the folder."""
    folder = paths.exports_dir() / "sweeps" / paths.check_name(name or time.strftime("sweep-%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "sweep.json", results)
    (folder / "sweep.md").write_text(sweep_markdown(results) + "\n", encoding="utf-8")
    return folder
