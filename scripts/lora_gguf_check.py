"""A GGUF LoRA export in the real llama.cpp: llama-server loads the base GGUF with the adapter unapplied
(--lora-init-without-apply), and each request picks it with the per-request `lora` field. Its greedy tokens
are compared with the studio's (the base as `load_model` holds it, the PEFT adapter on top), with the adapter
(scale 1) and without it (scale 0), for the same prompt ids.

    python scripts/lora_gguf_check.py --export exports/NAME --model bundled --adapter run:ID --llama-bin BUILD/bin
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
PROMPTS = ["What helps a sore throat?", "What should I do about a mild headache?"]


def studio_greedy(ref: str, adapter: str, prompts: list[str], n: int) -> dict:
    """{prompt: (prompt ids, base tokens, adapter tokens)} from transformers + PEFT, greedy, the studio's stops."""
    import torch
    from peft import PeftModel

    from studio import templates
    from studio.export import adapter_path
    from studio.models import load_model

    loaded = load_model(ref, "fp32", device="cpu")
    model = PeftModel.from_pretrained(loaded.model, str(adapter_path(adapter))).eval()
    stops = templates.current(loaded.tokenizer).stop_ids
    out = {}
    for prompt in prompts:
        ids = templates.encode(loaded.tokenizer, [{"role": "user", "content": prompt}])
        answers = []
        for use_adapter in (False, True):
            with torch.no_grad(), (model.disable_adapter() if not use_adapter else nullcontext()):
                gen = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                     eos_token_id=stops, pad_token_id=loaded.tokenizer.pad_token_id)
            answers.append(gen[0, len(ids):].tolist())
        out[prompt] = (ids, *answers)
    return out


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def server_greedy(server: str, ids: list[int], n: int, scale: float) -> list[int]:
    body = {"prompt": ids, "n_predict": n, "temperature": 0.0, "top_k": 1, "cache_prompt": False,
            "return_tokens": True, "lora": [{"id": 0, "scale": scale}]}
    return _post(f"{server}/completion", body)["tokens"]


def start_server(llama_bin: Path, base: str, lora: Path, port: int) -> subprocess.Popen:
    cmd = [str(llama_bin / "llama-server"), "-m", base, "--lora", str(lora), "--lora-init-without-apply",
           "--port", str(port), "-t", "2", "-c", "2048", "-np", "1"]
    print("$", " ".join(cmd), file=sys.stderr)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open("/tmp/llama-server-lora.log", "w"))
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("llama-server did not come up (see /tmp/llama-server-lora.log)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", required=True, help="the lora-gguf export folder (adapter.gguf, export.json)")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--llama-bin", required=True)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8093)
    args = parser.parse_args()
    folder = Path(args.export)
    card = json.loads((folder / "export.json").read_text())
    studio = studio_greedy(args.model, args.adapter, PROMPTS, args.tokens)
    proc = start_server(Path(args.llama_bin), card["base_gguf"], folder / "adapter.gguf", args.port)
    report = {"base_gguf": card["base_gguf"], "prompts": []}
    try:
        for prompt, (ids, base, tuned) in studio.items():
            server = f"http://127.0.0.1:{args.port}"
            got_base, got_tuned = server_greedy(server, ids, args.tokens, 0.0), server_greedy(server, ids,
                                                                                                args.tokens, 1.0)
            report["prompts"].append({"prompt": prompt, "adapter_changes_answer": base != tuned,
                                      "base_equal": _agree(base, got_base), "adapter_equal": _agree(tuned, got_tuned),
                                      "studio_adapter": tuned, "llama_adapter": got_tuned})
    finally:
        proc.terminate()
    print(json.dumps(report, indent=1))
    return 0


def _agree(want: list[int], got: list[int]) -> str:
    """'all N' when equal, else how many leading tokens agree ('k of N')."""
    if want == got[:len(want)] and len(got) <= len(want) + 1:
        return f"all {len(want)}"
    same = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
    return f"{same} of {len(want)}"


if __name__ == "__main__":
    raise SystemExit(main())
