"""End-to-end check of one real model: BOS-correct first loss, answers that stop, GGUF parity with llama.cpp.

    python scripts/model_e2e.py --model bundled --llama-bin /path/to/llama.cpp/build/bin [--steps 20]

Runs in a scratch workspace: prepares `--data` (assets/hinglish_demo.jsonl) with the model, trains `--steps`
LoRA steps through the studio's worker, and checks (each prints its result as it finishes, then one JSON report):
1. first_loss: the first logged training loss equals plain transformers' loss on that row with BOS (and how
   far the same row without BOS is);
2. end_of_turn: p(end-of-turn token) right after each held-out answer, teacher-forced, base vs adapter;
3. stops / stops_sampled: answers from the adapter (greedy / temperature 0.7, the chat defaults otherwise)
   stop by themselves (an end-of-turn/EOS id before 300 tokens);
4. gguf: the merged model exported as f16 GGUF (llama.cpp's converter) gives the same greedy tokens in the
   real llama.cpp (llama-simple) as transformers on the merged folder, and llama-tokenize splits a
   tricky string into the same tokens as transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRICKY = "In 2024, I've paid $1234567.89 for 3 items -- it's   weird!!"
PROMPTS = ["Mujhe neend nahi aati, kya karun?", "Chai banane ka tarika batao.", "What is the capital of India?"]


def row_losses(model, tokenizer, ids: list[int], mask: list[int]) -> float:
    import torch

    labels = [i if m else -100 for i, m in zip(ids, mask, strict=True)]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
    return float(out.loss)


def first_loss_check(ref: str, name: str, run_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.data.store import load_prepared
    from studio.models import resolve

    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    first = next(e["loss"] for e in events if e.get("loss") is not None)
    folder = resolve(ref)
    tok = AutoTokenizer.from_pretrained(folder)  # plain transformers: no studio code below
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    best = None
    for index, row in enumerate(load_prepared(name).train):  # the row the first step trained on: closest loss
        ids, mask = list(row["input_ids"]), list(row["assistant_masks"])
        with_bos = row_losses(model, tok, ids, mask)
        if best is None or abs(with_bos - first) < abs(best["with_bos"] - first):
            best = {"row": index, "ids": ids, "mask": mask, "with_bos": with_bos}
            if abs(with_bos - first) < 1e-4:
                break
    ids, mask = best["ids"], best["mask"]
    text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if tok.bos_token and text.startswith(tok.bos_token):
        text = text[len(tok.bos_token):]
    plain = tok(text)["input_ids"]  # transformers' own special tokens: BOS where the tokenizer adds it
    bos = tok.bos_token_id
    no_bos = row_losses(model, tok, ids[1:], mask[1:]) if bos is not None and ids[0] == bos else best["with_bos"]
    return {"first_step_loss": round(first, 4), "row": best["row"], "row_tokens": len(ids),
            "trained_tokens": sum(mask), "transformers_loss_with_bos": round(best["with_bos"], 4),
            "same_row_without_bos": round(no_bos, 4), "bos_in_row": ids.count(bos) if bos is not None else 0,
            "starts_with_bos": bos is not None and ids[0] == bos,
            "plain_retokenization_same_ids": plain[:len(ids)] == ids,
            "equal": abs(best["with_bos"] - first) < 2e-3}


def stop_check(ref: str, run_id: str, temperature: float = 0.0) -> dict:
    import torch
    from peft import PeftModel

    from studio.inference import GenerationSettings, encode_chat, generate_kwargs
    from studio.models import load_model
    from studio.templates import current

    loaded = load_model(ref, "fp32", device="cpu")
    model = PeftModel.from_pretrained(loaded.model, str(Path("runs") / run_id / "adapter")).eval()
    stops = current(loaded.tokenizer).stop_ids
    settings = GenerationSettings(max_new_tokens=300, temperature=temperature)  # the chat defaults otherwise
    answers = []
    for prompt in PROMPTS:
        torch.manual_seed(settings.seed)
        ids = encode_chat(loaded.tokenizer, [{"role": "user", "content": prompt}])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 **generate_kwargs(loaded.tokenizer, settings))
        new = out[0, ids.shape[1]:].tolist()
        answers.append({"prompt": prompt, "tokens": len(new), "stopped": bool(new) and new[-1] in stops,
                        "answer": loaded.tokenizer.decode(new, skip_special_tokens=True)[:300]})
    return {"temperature": temperature, "stop_ids": stops, "answers": answers,
            "stopped": f"{sum(a['stopped'] for a in answers)} of {len(answers)}"}


def end_of_turn_check(ref: str, name: str, run_id: str, rows: int = 8) -> dict:
    """p(end of turn) right after each held-out answer, teacher-forced: base against the adapter."""
    import statistics

    import torch
    from peft import PeftModel

    from studio.data.store import load_prepared
    from studio.models import load_model
    from studio.templates import current

    loaded = load_model(ref, "fp32", device="cpu")
    end = loaded.tokenizer.convert_tokens_to_ids(current(loaded.tokenizer).end_of_turn or loaded.tokenizer.eos_token)
    data = list(load_prepared(name).eval)[:rows]

    def probabilities(model) -> list[float]:
        found = []
        for row in data:
            ids, mask = list(row["input_ids"]), list(row["assistant_masks"])
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
            found += [float(logp[i - 1, end].exp())
                      for i, (t, m) in enumerate(zip(ids, mask, strict=True)) if m and t == end]
        return found

    base = probabilities(loaded.model)
    tuned = probabilities(PeftModel.from_pretrained(loaded.model, str(Path("runs") / run_id / "adapter")).eval())
    return {"end_of_turn_id": end, "answers": len(tuned), "base_median": round(statistics.median(base), 4),
            "tuned_median": round(statistics.median(tuned), 4), "tuned": [round(x, 3) for x in tuned]}


def gguf_check(ref: str, run_id: str, name: str, llama_bin: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from studio import export, templates
    from studio.models import load_tokenizer

    merged = Path(export.merge(ref, f"run:{run_id}", f"{name}-merged")["path"])
    start = time.time()
    gguf = export.to_gguf(merged, f"{name}.f16", "f16")
    seconds = time.time() - start
    tok = load_tokenizer(str(merged))
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    result = {"gguf": str(gguf), "convert_seconds": round(seconds, 1), "modelfile": gguf.with_suffix(".Modelfile")
              .read_text(), "prompts": []}
    for prompt in PROMPTS[:2]:
        ids = templates.encode(tok, [{"role": "user", "content": prompt}])
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                 eos_token_id=templates.current(tok).stop_ids, pad_token_id=tok.pad_token_id)
        new = out[0, len(ids):].tolist()
        if new and new[-1] in templates.current(tok).stop_ids:
            new = new[:-1]
        hf_text = tok.decode(new, skip_special_tokens=False)
        text = tok.decode(ids, skip_special_tokens=False)
        if templates.current(tok).add_bos and text.startswith(tok.bos_token):
            text = text[len(tok.bos_token):]  # llama.cpp adds BOS itself (tokenizer.ggml.add_bos_token)
        done = subprocess.run([str(llama_bin / "llama-simple"), "-m", str(gguf), "-n", "32", text],
                              capture_output=True, text=True, timeout=600)
        llama_text = done.stdout[:-1] if done.stdout.endswith("\n") else done.stdout  # llama-simple ends with \n
        result["prompts"].append({"prompt": prompt, "transformers": hf_text, "llama_cpp_tail": llama_text[-300:],
                                  "match": bool(hf_text) and llama_text.endswith(hf_text)})
    done = subprocess.run([str(llama_bin / "llama-tokenize"), "-m", str(gguf), "-p", TRICKY, "--ids",
                           "--no-bos", "--log-disable"], capture_output=True, text=True, timeout=600)
    llama_ids = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else done.stderr[-300:]
    hf_ids = tok(TRICKY, add_special_tokens=False)["input_ids"]
    result["tokenize"] = {"transformers": len(hf_ids), "llama_cpp": llama_ids if isinstance(llama_ids, str)
                          else len(llama_ids), "same": llama_ids == hf_ids}
    result["all_match"] = all(p["match"] for p in result["prompts"]) and result["tokenize"]["same"]
    return result


def _show(check: str, result: dict) -> None:
    """Print one check's result as soon as it is known (a slow machine may not reach the last one)."""
    print(f"== {check}: " + json.dumps(result, ensure_ascii=False), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--name", default="e2e")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--llama-bin", default=None,
                        help="folder with llama-simple and llama-tokenize (needed by the gguf check)")
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--data", default="assets/hinglish_demo.jsonl", help="a sample dataset of the repo")
    parser.add_argument("--max-len", type=int, default=192)
    parser.add_argument("--micro-batch", type=int, default=1, help="rows per step")
    parser.add_argument("--reuse", action="store_true", help="check the run already in --workspace again")
    parser.add_argument("--checks", default="first_loss,end_of_turn,stops,stops_sampled,gguf",
                        help="which checks to run, comma-separated (each prints its result as it finishes)")
    args = parser.parse_args()
    ws = Path(args.workspace or tempfile.mkdtemp(prefix="studio-e2e-"))
    ws.mkdir(parents=True, exist_ok=True)
    os.environ["STUDIO_WORKSPACE"] = str(ws)
    os.chdir(ws)
    from studio.config import LoraSpec, ModelSpec, RunSpec, TrainSpec
    from studio.data import store
    from studio.jobs import manager, worker
    from studio.models import load_tokenizer
    from studio.templates import describe

    report = {"model": args.model, "template": describe(load_tokenizer(args.model))}
    if not args.reuse:
        store.prepare(ROOT / args.data, args.model, args.name, max_len=args.max_len, eval_split=0.1,
                      cot_style="answer", overwrite=True)
    spec = RunSpec(name=args.name, dataset=args.name, model=ModelSpec(ref=args.model, quant="fp32"),
                   lora=LoraSpec(r=16, alpha=32, dropout=0.0, target_modules="all-linear"),
                   train=TrainSpec(max_seq_len=args.max_len, micro_batch=args.micro_batch, grad_accum=1, lr=1e-3,
                                   warmup_ratio=0.0,
                                   max_steps=args.steps, save_steps=1000, eval_steps=0,
                                   gradient_checkpointing=False, optimizer="adamw_torch", precision="fp32",
                                   packing=False))
    run_dir = ws / "runs" / args.name
    start = time.time()
    if not (args.reuse and (run_dir / "adapter").is_dir()):  # --reuse: check a finished run again
        run_dir = manager.create(spec)
        worker.train(run_dir, foreground=True)
    report["train_seconds"] = round(time.time() - start, 1)
    _show("train", {k: report[k] for k in ("template", "train_seconds")})
    checks = {"first_loss": lambda: first_loss_check(args.model, args.name, run_dir) if args.micro_batch == 1 else
              {"skipped": "the first step's loss is one row's only with --micro-batch 1"},
              "end_of_turn": lambda: end_of_turn_check(args.model, args.name, run_dir.name),
              "stops": lambda: stop_check(args.model, run_dir.name),
              "stops_sampled": lambda: stop_check(args.model, run_dir.name, temperature=0.7),
              "gguf": lambda: gguf_check(args.model, run_dir.name, args.name, Path(args.llama_bin))}
    for name in args.checks.split(","):
        start = time.time()
        report[name] = {**checks[name](), "seconds": round(time.time() - start, 1)}
        _show(name, report[name])
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
