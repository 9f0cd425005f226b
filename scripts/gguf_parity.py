"""Greedy tokens of an HF folder in transformers against its GGUF in the real llama.cpp (llama-simple),
and the tokenization of a tricky string by both (llama-tokenize).

    python scripts/gguf_parity.py --folder MERGED_OR_CONVERTED_FOLDER --gguf FILE.gguf --llama-bin BUILD/bin
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
TRICKY = "In 2024, I've paid $1234567.89 for 3 items -- it's   weird!!"
PROMPTS = ["What is the capital of France?", "Write one sentence about the sea."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--llama-bin", required=True)
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from studio import templates
    from studio.models import load_tokenizer

    tok = load_tokenizer(args.folder)
    choice = templates.current(tok)
    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32).eval()
    report = {"template": choice.why(), "prompts": []}
    for prompt in PROMPTS:
        ids = templates.encode(tok, [{"role": "user", "content": prompt}])
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=args.tokens, do_sample=False,
                                 eos_token_id=choice.stop_ids, pad_token_id=tok.pad_token_id)
        new = out[0, len(ids):].tolist()
        new = new[:-1] if new and new[-1] in choice.stop_ids else new
        hf_text = tok.decode(new, skip_special_tokens=False)
        text = tok.decode(ids, skip_special_tokens=False)
        if choice.add_bos and text.startswith(tok.bos_token):
            text = text[len(tok.bos_token):]  # llama.cpp adds BOS itself (tokenizer.ggml.add_bos_token)
        done = subprocess.run([str(Path(args.llama_bin) / "llama-simple"), "-m", args.gguf, "-n", str(args.tokens),
                               text], capture_output=True, text=True, timeout=900)
        llama_text = done.stdout[:-1] if done.stdout.endswith("\n") else done.stdout  # llama-simple ends with \n
        report["prompts"].append({"prompt": prompt, "transformers_tokens": len(new), "transformers": hf_text,
                                  "llama_cpp_tail": llama_text[-len(hf_text) - 40:],
                                  "match": bool(hf_text) and llama_text.endswith(hf_text)})
    done = subprocess.run([str(Path(args.llama_bin) / "llama-tokenize"), "-m", args.gguf, "-p", TRICKY, "--ids",
                           "--no-bos", "--log-disable"], capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.strip().splitlines() if line.startswith("[")]
    llama_ids = json.loads(lines[-1]) if lines else done.stderr[-300:]
    hf_ids = tok(TRICKY, add_special_tokens=False)["input_ids"]
    report["tokenize"] = {"transformers": len(hf_ids), "llama_cpp": len(llama_ids) if isinstance(llama_ids, list)
                          else llama_ids, "same_ids": llama_ids == hf_ids}
    report["all_match"] = all(p["match"] for p in report["prompts"]) and report["tokenize"]["same_ids"]
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0 if report["all_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
