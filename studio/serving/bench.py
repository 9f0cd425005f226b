"""`python -m studio.serving.bench`: many clients on mixed adapters against the same requests one at a time.

The server is the real one (the /v1 routes under uvicorn, in this process, on a free port) and the
clients are the official `openai` client, one thread each. Every request is greedy with a fixed
max_tokens, and the requests alternate base / adapter A / adapter B, so a batch always mixes them.
Measured per concurrency level (1, 4, 8 clients by default): aggregate decode tokens/s (completion
tokens of all requests / wall time), tokens per CPU-second of this process, p50 and p95 request
latency; then the same requests sent one at a time by a single client, right after. The load average
is recorded around each phase: on a shared CPU wall-clock numbers move with what else runs, while
tokens per CPU-second measure the work itself.

The two adapters are random LoRAs (r=16 on every projection, as the presets train) made for the base
here, so the bench needs nothing but the model; `--adapters NAME=FOLDER ...` uses real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

PROMPTS = ("Explain what a fever is in two sentences.", "Give me three tips for sleeping better.",
           "What is the capital of France, and why is it famous?", "Write a short poem about rain.",
           "How do I boil an egg?", "Summarise the water cycle.", "What does a pharmacist do?",
           "Name four healthy breakfast foods.")


def random_adapters(model_dir: str, out: Path, names=("A", "B")) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    found = {}
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        config = LoraConfig(r=16, lora_alpha=1, init_lora_weights=False,  # small random delta: answers stay text
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj"])
        get_peft_model(model, config).save_pretrained(out / name)
        found[name] = out / name
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine, adapters: dict[str, Path]):
    import uvicorn

    from studio.serving.api import Backend
    from studio.serving.server import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Backend(lambda: engine, adapters)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/v1"


def requests_for(models: list[str], count: int) -> list[tuple[str, str]]:
    return [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(count)]


def run_clients(url: str, jobs: list[tuple[str, str]], clients: int, max_tokens: int) -> dict:
    """Send `jobs` with `clients` threads (each takes the next job when free); per-request timings."""
    from openai import OpenAI

    todo = list(enumerate(jobs))
    lock = threading.Lock()
    done: dict[int, dict] = {}

    from studio.serving.api import api_keys

    key = (api_keys() or ["x"])[0]  # STUDIO_API_KEYS may name users: "alice=key1"
    apis = [OpenAI(base_url=url, api_key=key, max_retries=0) for _ in range(clients)]  # made before the clock starts

    def client(api) -> None:
        while True:
            with lock:
                if not todo:
                    return
                index, (model, prompt) = todo.pop(0)
            start = time.perf_counter()
            reply = api.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                temperature=0, max_tokens=max_tokens)
            done[index] = {"model": model, "seconds": time.perf_counter() - start,
                           "tokens": reply.usage.completion_tokens, "text": reply.choices[0].message.content}

    load_before = os.getloadavg()[0]
    cpu = time.process_time()  # this process's CPU seconds: what the work cost, whatever else the CPU runs
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(api,)) for api in apis]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    rows = [done[i] for i in range(len(jobs))]
    return {"clients": clients, "requests": len(jobs), "wall_s": round(wall, 2), "rows": rows,
            "cpu_s": round(time.process_time() - cpu, 2),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def summary(run: dict) -> dict:
    latencies = sorted(r["seconds"] for r in run["rows"])
    tokens = sum(r["tokens"] for r in run["rows"])
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {"tokens": tokens, "tok_s": round(tokens / run["wall_s"], 1),
            "tok_per_cpu_s": round(tokens / run["cpu_s"], 1),
            "p50_s": round(statistics.median(latencies), 2), "p95_s": round(p95, 2), "wall_s": run["wall_s"],
            "cpu_s": run["cpu_s"], "load": [run["load_before"], run["load_after"]]}


def bench(model: str, quant: str, levels: list[int], per_client: int, max_tokens: int,
          adapters: dict[str, Path] | None) -> dict:
    import torch

    from studio.inference import Engine
    from studio.models import resolve

    engine = Engine(model, quant, max_batch=max(levels))
    scratch = tempfile.TemporaryDirectory()
    adapters = adapters or random_adapters(str(resolve(model)), Path(scratch.name))
    for name, path in adapters.items():
        engine.load_adapter(name, path)
    server, url = start_server(engine, adapters)
    base_id = Path(model).name if Path(model).exists() else model
    models = [base_id, *adapters]
    jobs = requests_for(models, max(levels) * per_client)
    run_clients(url, jobs[:len(models)], 1, 8)  # warm-up: first-call set-up is not decode speed
    result = {"model": model, "quant": quant, "max_tokens": max_tokens, "requests_per_client": per_client,
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "levels": []}
    for clients in levels:  # each level's requests concurrently, then the same requests one at a time, back to back
        subset = jobs[:clients * per_client]
        steps_before = engine.scheduler.steps
        run = run_clients(url, subset, clients, max_tokens)
        steps = engine.scheduler.steps - steps_before
        serial = run_clients(url, subset, 1, max_tokens)
        concurrent, one = summary(run), summary(serial)
        same = all(a["text"] == b["text"] for a, b in zip(run["rows"], serial["rows"], strict=True))
        result["levels"].append({"clients": clients, "requests": len(subset), "concurrent": concurrent,
                                 "one_by_one": one, "speedup": round(concurrent["tok_s"] / one["tok_s"], 2),
                                 "cpu_speedup": round(concurrent["tok_per_cpu_s"] / one["tok_per_cpu_s"], 2),
                                 "same_answers": same, "decode_steps": steps,
                                 "mean_batch": round(concurrent["tokens"] / max(steps, 1), 2)})
    server.should_exit = True
    scratch.cleanup()
    return result


def table(result: dict) -> str:
    lines = ["| clients | requests | concurrent tok/s | tok/CPU-s | p50 s | p95 s | one-by-one tok/s | tok/CPU-s | "
             "p50 s | p95 s | speedup (wall) | speedup (CPU) | mean batch | same answers | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["levels"]:
        c, s = row["concurrent"], row["one_by_one"]
        lines.append(f"| {row['clients']} | {row['requests']} | {c['tok_s']} | {c['tok_per_cpu_s']} | {c['p50_s']} | "
                     f"{c['p95_s']} | {s['tok_s']} | {s['tok_per_cpu_s']} | {s['p50_s']} | {s['p95_s']} | "
                     f"{row['speedup']}x | {row['cpu_speedup']}x | {row['mean_batch']} | "
                     f"{'yes' if row['same_answers'] else 'no'} | {c['load'][0]}-{s['load'][1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.serving.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--quant", default="fp32")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--per-client", type=int, default=2, help="requests each client sends")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--adapters", nargs="*", default=[], metavar="NAME=FOLDER")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is far faster on a CPU other jobs share")
    parser.add_argument("--out", help="write the full result as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    adapters = {n: Path(p) for n, _, p in (a.partition("=") for a in args.adapters)} or None
    result = bench(args.model, args.quant, args.clients, args.per_client, args.max_tokens, adapters)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
