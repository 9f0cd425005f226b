"""`python -m studio.serving.soak`: a long mixed load on the real server, to show that it holds.

N requests from `--clients` threads of the official `openai` client (streamed and not) on the base, two
stable adapters and a "churn" adapter that is deleted and imported again with other weights every
`--churn-every` requests, with `--malformed` of them hostile bodies sent raw. Counted at the end:
- lost: a well-formed request for the base or a stable adapter that got no answer (any error);
- wrong: such an answer that differs from the one the same request gets alone (greedy, before the load);
- churn: answered with one of its two versions' alone answers, or refused with a 4xx saying why;
- malformed: each must get a 4xx in OpenAI's error shape (a 5xx or a non-JSON answer is counted bad);
- RSS of this process (server and clients) after the warm-up and after the load, and the peak.

The registry is a scratch workspace (nothing of the user's is touched). `--model tiny` builds a random
two-layer Llama with the bundled tokenizer (seconds; the answers are nonsense but exact to compare).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path

BAD_BODIES = [b'{"model": "base", "messages": [', b"[1, 2]", b'{"model": 5, "messages": []}',
              b'{"model": "base", "messages": [{"role": "wizard", "content": "x"}]}',
              b'{"model": "base", "messages": [{"role": "user", "content": "x"}], "stop": 5}',
              b'{"model": "base", "messages": [{"role": "user", "content": "x"}], "stream_options": true}',
              b'{"model": "base", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
              b'{"model": "base", "messages": [{"role": "assistant", "content": null, "tool_calls": "x"}]}',
              b'{"model": "base", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
              b'{"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": 99999999}',
              b'{"model": "no-such", "messages": [{"role": "user", "content": "x"}]}',
              b'{"model": "base", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": 1}]}']
PROMPTS = ("Explain what a fever is.", "Give me three tips for sleeping better.", "What is the capital of France?",
           "Write a short poem about rain.", "How do I boil an egg?", "Summarise the water cycle.")
STABLE = ("base", "A", "B")


def tiny_model(out: Path) -> Path:
    """A random-weight two-layer Llama with the bundled tokenizer (as the tests' make_tiny_model)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from studio.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("bundled"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _ask(api, model: str, prompt: str, max_tokens: int, stream: bool) -> str:
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        reply = api.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens)
        return reply.choices[0].message.content or ""
    chunks = api.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens,
                                         stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


class Churn:
    """Deletes the "churn" adapter and imports the other of its two versions, every `every` requests."""

    def __init__(self, versions: list[Path], every: int):
        self.versions, self.every, self.current, self.count, self.swaps = versions, every, 0, 0, 0
        self.lock = threading.Lock()

    def tick(self) -> None:
        from studio.adapters import delete_adapter, import_adapter

        with self.lock:
            self.count += 1
            if self.count % self.every:
                return
            self.current = 1 - self.current
            delete_adapter("churn")
            import_adapter(self.versions[self.current], "churn")
            self.swaps += 1


def _job(api, url: str, kind: str, model: str, prompt: str, args, tally: dict, alone: dict) -> None:
    import httpx

    if kind == "malformed":
        body = random.Random(prompt).choice(BAD_BODIES)
        response = httpx.post(f"{url}/chat/completions", content=body, timeout=60,
                              headers={"Content-Type": "application/json"})
        try:
            shaped = "error" in response.json()
        except ValueError:
            shaped = False
        tally["malformed_ok" if 400 <= response.status_code < 500 and shaped else "malformed_bad"] += 1
        return
    stream = hash((model, prompt)) % 2 == 0
    try:
        text = _ask(api, model, prompt, args.max_tokens, stream)
    except Exception as exc:  # noqa: BLE001 - counted
        status = getattr(exc, "status_code", None)
        if model == "churn" and (status is None or 400 <= status < 500):
            tally["churn_refused"] += 1
        else:
            tally["lost"] += 1
            tally["errors"].append(f"{model}: {exc}"[:300])
        return
    if model == "churn":
        tally["churn_answered" if text in alone[("churn", prompt)] else "churn_wrong"] += 1
    elif text == alone[(model, prompt)]:
        tally["answered"] += 1
    else:
        tally["wrong"] += 1


def soak(args) -> dict:
    from openai import OpenAI

    from studio.adapters import delete_adapter, import_adapter
    from studio.inference import Engine
    from studio.serving.local import random_adapters, start_server

    scratch = Path(tempfile.mkdtemp(prefix="studio-soak-"))
    os.environ["STUDIO_WORKSPACE"] = str(scratch / "ws")
    model = str(tiny_model(scratch / "tiny-llama")) if args.model == "tiny" else args.model
    from studio.models import resolve

    folders = random_adapters(str(resolve(model)), scratch / "made", ("A", "B", "churn-0", "churn-1"))
    engine = Engine(model, "fp32", max_batch=args.clients)
    server, url = start_server(engine, {})
    api = OpenAI(base_url=url, api_key="soak", max_retries=0)
    alone: dict = {}
    for name in ("A", "B"):
        import_adapter(folders[name], name)
    for version in ("churn-1", "churn-0"):  # each version's answers alone; churn-0 (the first swap's "old") stays
        if ("churn", PROMPTS[0]) in alone:
            delete_adapter("churn")
        import_adapter(folders[version], "churn")
        for p in PROMPTS:
            alone.setdefault(("churn", p), set()).add(_ask(api, "churn", p, args.max_tokens, False))
    alone.update({(m, p): _ask(api, m, p, args.max_tokens, False) for m in STABLE for p in PROMPTS})
    return _load(args, url, alone, Churn([folders["churn-0"], folders["churn-1"]], args.churn_every), engine,
                 server)


def _load(args, url: str, alone: dict, churn: Churn, engine, server) -> dict:
    from openai import OpenAI

    rng = random.Random(0)
    jobs = [("malformed" if rng.random() < args.malformed else "ok", rng.choice((*STABLE, "churn")),
             rng.choice(PROMPTS)) for _ in range(args.requests)]
    tally = {k: 0 for k in ("answered", "wrong", "lost", "churn_answered", "churn_refused", "churn_wrong",
                            "malformed_ok", "malformed_bad")}
    tally["errors"] = []
    gc.collect()
    rss_before, peak = _rss(), _rss()
    lock = threading.Lock()
    start = time.perf_counter()

    def client() -> None:
        nonlocal peak
        api = OpenAI(base_url=url, api_key="soak", max_retries=0, timeout=300)
        while True:
            with lock:
                if not jobs:
                    return
                kind, model, prompt = jobs.pop()
            _job(api, url, kind, model, prompt, args, tally, alone)
            churn.tick()
            peak = max(peak, _rss())

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server.should_exit = True
    gc.collect()
    rss_after = _rss()
    return {**tally, "requests": args.requests, "clients": args.clients, "max_tokens": args.max_tokens,
            "churn_swaps": churn.swaps, "isolated_forwards": engine.scheduler.isolated, "wall_s": round(wall, 1),
            "rss_before_mib": round(rss_before / 2**20), "rss_after_mib": round(rss_after / 2**20),
            "rss_peak_mib": round(peak / 2**20), "rss_growth": round(rss_after / rss_before - 1, 4),
            "load_avg": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.serving.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (a random two-layer Llama), 'bundled' or a folder")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--malformed", type=float, default=0.05, help="share of hostile request bodies")
    parser.add_argument("--churn-every", type=int, default=25, help="requests between two swaps of 'churn'")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = soak(args)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    ok = not (result["lost"] or result["wrong"] or result["churn_wrong"] or result["malformed_bad"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
