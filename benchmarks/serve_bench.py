"""`python -m benchmarks.serve_bench` (`make bench-serve`): the studio's server against llama-server and plain
`model.generate`, the same greedy requests in one run.

Four cells, each the same `--requests` greedy chat requests of `--max-tokens` tokens over 8 prompts, sent by
the official `openai` client (one thread per client, each taking the next request when free):
  1 client, base | 8 clients, base | 1 client, LoRA (adapter A) | 8 clients, base + 2 LoRAs mixed (base/A/B)
Targets, run one after another inside each cell (interleaved, so they share the machine's load):
- studio: `python -m studio serve` in its own process, one per `--quant` (as a user runs it; in this process its
  scheduler thread would share GNU OpenMP's thread pools with plain generate's, which slows both: studio/util.py);
- llama-server (`--llama-server`): started here on the studio's own f16 GGUF export of the same model, with
  the two adapters as GGUF LoRAs (llama.cpp's converter; `--lora-init-without-apply`, picked per request with
  the `lora` field), `-np 8` and the same thread count;
- each `--peer URL`: any OpenAI-compatible server (base = its first model id, adapters by name, or by the
  `lora` field where the peer is a llama-server);
- generate: plain transformers `model.generate` in this process, greedy, one request at a time for 1 client
  and left-padded batches of 8 for 8 clients (PEFT `adapter_names` per row for the mixed cell).
The adapters are random LoRAs (r=16 on all seven projections) made once for the base; the load average is
recorded around every cell: this is a shared CPU, so read the table next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PROMPTS = ("Explain what a fever is in two sentences.", "Give me three tips for sleeping better.",
           "What is the capital of France, and why is it famous?", "Write a short poem about rain.",
           "How do I boil an egg?", "Summarise the water cycle.", "What does a pharmacist do?",
           "Name four healthy breakfast foods.")
CELLS = (("1 client, base", 1, ("base",)), ("8 clients, base", 8, ("base",)), ("1 client, LoRA", 1, ("A",)),
         ("8 clients, base + 2 LoRAs mixed", 8, ("base", "A", "B")))
ADAPTERS = ("A", "B")
CACHE = Path(".cache/bench/serve")
LLAMA_BIN_DEFAULT = Path.home() / ".cache/llama.cpp/src/llama.cpp/build/bin"  # /work/shared/tools/llama-cpp.sh


def jobs_for(kinds: tuple[str, ...], count: int) -> list[tuple[str, str]]:
    """(base | A | B, prompt) for each request: the kinds alternate, so 8 clients always mix them."""
    return [(kinds[i % len(kinds)], PROMPTS[i % len(PROMPTS)]) for i in range(count)]


# ---------------------------------------------------------------- OpenAI-compatible servers


@dataclass
class Server:
    """An OpenAI-compatible server and how it names the base and the adapters."""

    label: str
    url: str  # .../v1
    models: dict[str, str] = field(default_factory=dict)  # base/A/B -> model id
    lora_ids: dict[str, int] | None = None  # llama-server: adapter -> its index in /lora-adapters
    process: subprocess.Popen | None = None

    def request(self, kind: str) -> tuple[str, dict]:
        """The model id and the extra body that ask this server for `kind` (base, A or B)."""
        model = self.models.get(kind, self.models.get("base", kind))
        if self.lora_ids is None:
            return model, {}
        return model, {"lora": [{"id": i, "scale": 1.0 if name == kind else 0.0} for name, i in self.lora_ids.items()]}

    def run(self, jobs: list[tuple[str, str]], clients: int, max_tokens: int) -> list[dict]:
        from openai import OpenAI

        apis = [OpenAI(base_url=self.url, api_key=_api_key(), max_retries=0, timeout=3600) for _ in range(clients)]

        def one(api, kind: str, prompt: str) -> dict:
            model, extra = self.request(kind)
            reply = api.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                temperature=0, max_tokens=max_tokens, extra_body=extra or None)
            return {"kind": kind, "tokens": reply.usage.completion_tokens, "text": reply.choices[0].message.content}

        return _pool(apis, jobs, one)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)


def _api_key() -> str:
    from studio.serving.api import api_keys

    keys = api_keys() or ["x"]
    return keys[0].partition("=")[2] or keys[0]  # STUDIO_API_KEYS may name users: "alice=key1"


def _pool(workers: list, jobs: list[tuple[str, str]], one) -> list[dict]:
    """Each worker (a client) takes the next job when free; the results in job order."""
    todo = list(enumerate(jobs))
    lock = threading.Lock()
    done: dict[int, dict] = {}
    errors: list[BaseException] = []

    def loop(worker) -> None:
        while not errors:
            with lock:
                if not todo:
                    return
                index, (kind, prompt) = todo.pop(0)
            try:
                done[index] = one(worker, kind, prompt)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
                errors.append(exc)

    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [done[i] for i in range(len(jobs))]


def peer(url: str) -> Server:
    """Any OpenAI-compatible server: base = its first model id; a llama-server's LoRAs by file name."""
    url = url.rstrip("/")
    url = url if url.endswith("/v1") else url + "/v1"
    with urllib.request.urlopen(f"{url}/models", timeout=30) as r:
        ids = [m["id"] for m in json.loads(r.read())["data"]]
    server = Server(f"peer {url}", url, {"base": ids[0], **{a: a for a in ADAPTERS}})
    try:
        with urllib.request.urlopen(f"{url[:-3]}/lora-adapters", timeout=30) as r:
            loras = json.loads(r.read())
        server.lora_ids = {Path(x["path"]).stem: int(x["id"]) for x in loras if Path(x["path"]).stem in ADAPTERS}
    except (OSError, ValueError, KeyError):
        pass  # not a llama-server: adapters by model id
    return server


# ---------------------------------------------------------------- llama-server on the studio's GGUF export


def llama_bin(given: str | None) -> Path:
    from studio.errors import ConfigError

    for folder in [given, os.environ.get("STUDIO_LLAMA_BIN"), LLAMA_BIN_DEFAULT,
                   Path(shutil.which("llama-server") or "/nonexistent").parent]:
        if folder and (Path(folder) / "llama-server").is_file():
            return Path(folder)
    raise ConfigError("llama-server was not found (--llama-bin, STUDIO_LLAMA_BIN, ~/.cache/llama.cpp/.../bin, PATH).",
                      "Build it with the command in docs/serving.md (Benchmark), or leave --llama-server out.")


def gguf_files(model_dir: Path, adapters: dict[str, Path], cache: Path) -> tuple[Path, list[Path]]:
    """The base as f16 GGUF and each adapter as f16 GGUF LoRA, with the studio's export converters (cached)."""
    from studio import export

    base = cache / "base.f16.gguf"
    if not base.is_file():
        print(f"[bench] exporting {model_dir} to {base} (llama.cpp convert_hf_to_gguf, f16)...", flush=True)
        export._run_converter(model_dir, base, "f16", lambda f, m: None)
    loras = []
    for name, folder in adapters.items():
        out = cache / f"{name}.gguf"
        if not out.is_file():
            export._run_lora_converter(model_dir, folder, out, "f16", lambda f, m: None)
        loras.append(out)
    return base, loras


def quantized(folder: Path, base: Path, kind: str) -> Path:
    """`base` (f16) quantized to `kind` (e.g. q8_0) with llama.cpp's own llama-quantize (cached beside it)."""
    if kind == "f16":
        return base
    out = base.with_name(f"base.{kind}.gguf")
    if not out.is_file():
        print(f"[bench] llama-quantize {base} -> {out} ({kind.upper()})", flush=True)
        subprocess.run([str(folder / "llama-quantize"), str(base), str(out), kind.upper()], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def _wait_ready(request: urllib.request.Request, process: subprocess.Popen, log: Path, name: str) -> None:
    """Poll `request` until it answers 200 (up to 10 minutes); stop if the server's process exits first."""
    for _ in range(1200):
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited (see {log})") from None
            time.sleep(0.5)
    raise SystemExit(f"{request.full_url} did not answer in 10 minutes (see {log})")


def start_llama(folder: Path, base: Path, loras: list[Path], threads: int, log: Path, kind: str = "f16") -> Server:
    from studio.serving.local import free_port

    port = free_port()
    # one --lora with a comma-separated list: this llama.cpp keeps only the last of repeated --lora flags.
    # --no-repack for quantized files: repacking Q8_0 for AMX dies with an illegal instruction on this CPU.
    cmd = [str(folder / "llama-server"), "-m", str(base), "--lora", ",".join(str(p) for p in loras),
           "--lora-init-without-apply", "-np", "8", "-c", "8192", "-t", str(threads), "-tb", str(threads),
           *([] if kind == "f16" else ["--no-repack"]), "--host", "127.0.0.1", "--port", str(port)]
    print("[bench] $", " ".join(cmd), flush=True)
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    _wait_ready(urllib.request.Request(f"http://127.0.0.1:{port}/health"), process, log, "llama-server")
    server = peer(f"http://127.0.0.1:{port}/v1")
    server.label, server.process = f"llama-server -np 8 ({kind}, -t {threads})", process
    if sorted(server.lora_ids or {}) != sorted(ADAPTERS):  # else a LoRA request would silently run the base
        server.stop()
        raise SystemExit(f"llama-server loaded the LoRAs {sorted(server.lora_ids or {})}, not {list(ADAPTERS)} "
                         f"(see {log})")
    return server


# ---------------------------------------------------------------- plain transformers generate


class Generate:
    """Plain `model.generate` on the same weights (PEFT for the adapters), greedy."""

    def __init__(self, model_ref: str, quant: str, adapters: dict[str, Path]):
        from peft import PeftModel

        from studio import templates
        from studio.models import load_model

        loaded = load_model(model_ref, quant, "cpu")
        self.label = f"plain model.generate ({quant})"
        self.tokenizer = loaded.tokenizer
        self.tokenizer.padding_side = "left"
        self.stops = templates.current(loaded.tokenizer).stop_ids
        names = list(adapters)
        self.model = PeftModel.from_pretrained(loaded.model, str(adapters[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            self.model.load_adapter(str(adapters[name]), adapter_name=name)
        self.model.eval()

    def run(self, jobs: list[tuple[str, str]], clients: int, max_tokens: int) -> list[dict]:
        rows: list[dict] = []
        for start in range(0, len(jobs), clients):
            rows += self._batch(jobs[start:start + clients], max_tokens)
        return rows

    def _batch(self, jobs: list[tuple[str, str]], max_tokens: int) -> list[dict]:
        import torch

        from studio import templates

        ids = [templates.encode(self.tokenizer, [{"role": "user", "content": p}]) for _, p in jobs]
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id
        inputs = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        names = [kind if kind != "base" else "__base__" for kind, _ in jobs]
        with torch.inference_mode():
            out = self.model.generate(input_ids=inputs, attention_mask=mask, max_new_tokens=max_tokens,
                                      do_sample=False, eos_token_id=self.stops, pad_token_id=pad,
                                      adapter_names=names)
        rows = []
        for (kind, _), answer in zip(jobs, out[:, width:].tolist(), strict=True):
            ended = next((n + 1 for n, t in enumerate(answer) if t in self.stops), len(answer))
            rows.append({"kind": kind, "tokens": ended,
                         "text": self.tokenizer.decode(answer[:ended], skip_special_tokens=True)})
        return rows


# ---------------------------------------------------------------- the run


def measure(target, jobs: list[tuple[str, str]], clients: int, max_tokens: int) -> dict:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    rows = target.run(jobs, clients, max_tokens)
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in rows)
    return {"tok_s": round(tokens / wall, 1), "tokens": tokens, "wall_s": round(wall, 2),
            "load": [round(load, 2), round(os.getloadavg()[0], 2)], "texts": [r["text"] for r in rows]}


def studio_server(args, quant: str, adapters: dict[str, Path], log: Path) -> Server:
    """`python -m studio serve` in its own process (as a user runs it, and as llama-server runs), in `quant`,
    with both adapters attached and `--threads` torch threads."""
    from studio.serving.local import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "studio", "serve", "--model", args.model, "--quant", quant, "--host", "127.0.0.1",
           "--port", str(port), "--max-batch", "8", "--adapters", *(f"{n}={path}" for n, path in adapters.items())]
    print("[bench] $", " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env)
    url = f"http://127.0.0.1:{port}/v1"
    _wait_ready(urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {_api_key()}"}),
                process, log, "studio serve")
    base = Path(args.model).name if Path(args.model).exists() else args.model
    return Server(f"studio serve ({quant}, {args.threads} threads)", url, {"base": base, "A": "A", "B": "B"},
                  process=process)


def targets(args, workdir: Path) -> tuple[list, dict[str, Path]]:
    """Every target, started and warmed up: the studio's server first."""
    from studio.models import resolve
    from studio.serving.local import random_adapters

    model_dir = Path(resolve(args.model))
    adapters = {a: workdir / a for a in ADAPTERS}
    if not all((p / "adapter_config.json").is_file() for p in adapters.values()):
        adapters = random_adapters(str(model_dir), workdir, ADAPTERS)
    found: list = []
    try:
        _start_targets(args, workdir, model_dir, adapters, found)
    except BaseException:
        for target in found:  # a target that fails to start stops the ones already running
            getattr(target, "stop", lambda: None)()
        raise
    return found, adapters


def _start_targets(args, workdir: Path, model_dir: Path, adapters: dict[str, Path], found: list) -> None:
    for quant in args.quant:
        found.append(studio_server(args, quant, adapters, workdir / f"studio-serve.{quant}.log"))
    if args.llama_server:
        base, loras = gguf_files(model_dir, adapters, workdir)
        folder = llama_bin(args.llama_bin)
        for kind in args.llama_quant:
            found.append(start_llama(folder, quantized(folder, base, kind), loras, args.threads,
                                     workdir / f"llama-server.{kind}.log", kind))
    found += [peer(u) for u in args.peer]
    if not args.no_generate:
        found.append(Generate(args.model, args.quant[0], adapters))
    for target in found:  # warm-up: first-call set-up (and lazy compiles) is not decode speed
        target.run(jobs_for(("base", "A", "B"), 3), 1, 8)


def bench(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir) if args.workdir else CACHE / Path(args.model).name
    workdir.mkdir(parents=True, exist_ok=True)
    found, _ = targets(args, workdir)
    result = {"command": " ".join(["python -m benchmarks.serve_bench", *sys.argv[1:]]), "model": args.model,
              "requests": args.requests, "max_tokens": args.max_tokens, "threads": args.threads,
              "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cells": []}
    try:
        for label, clients, kinds in CELLS:
            jobs = jobs_for(kinds, args.requests)
            cell = {"cell": label, "clients": clients, "targets": {}}
            for target in found:
                cell["targets"][target.label] = got = measure(target, jobs, clients, args.max_tokens)
                print(f"[bench] {label} | {target.label}: {got['tok_s']} tok/s (load {got['load']})", flush=True)
            result["cells"].append(cell)
    finally:
        for target in found:
            getattr(target, "stop", lambda: None)()
    result["labels"] = [t.label for t in found]
    return result


def table(result: dict) -> str:
    """The targets as rows, the four cells as columns (tok/s; the load average around each in brackets)."""
    cells = result["cells"]
    lines = ["| | " + " | ".join(c["cell"] for c in cells) + " |", "|---|" + "---|" * len(cells)]
    for label in result["labels"]:
        got = [c["targets"][label] for c in cells]
        lines.append(f"| {label} | " + " | ".join(f"{g['tok_s']} tok/s (load {g['load'][0]})" for g in got) + " |")
    studios = [x for x in result["labels"] if x.startswith("studio")]
    for llama in [x for x in result["labels"] if x.startswith("llama")]:
        for studio in studios:
            ratios = [c["targets"][studio]["tok_s"] / max(c["targets"][llama]["tok_s"], 1e-9) for c in cells]
            lines.append(f"| {studio} / {llama} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--quant", nargs="+", help="the studio's weights, one server each (default: what "
                                                   "`studio serve` picks); plain generate uses the first")
    parser.add_argument("--requests", type=int, default=16, help="requests per cell")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and llama-server alike")
    parser.add_argument("--llama-server", action="store_true", help="start llama-server on the studio's GGUF export")
    parser.add_argument("--llama-quant", nargs="+", default=["f16"], metavar="KIND",
                        help="one llama-server each on the f16 GGUF or a llama-quantize of it (f16 q8_0 ...)")
    parser.add_argument("--llama-bin", help="the folder with llama-server (default: STUDIO_LLAMA_BIN, ~/.cache/...)")
    parser.add_argument("--peer", action="append", default=[], metavar="URL", help="another OpenAI-compatible server")
    parser.add_argument("--no-generate", action="store_true", help="leave out the plain model.generate row")
    parser.add_argument("--workdir", help="adapters and GGUFs, made once (.cache/bench/serve/MODEL)")
    parser.add_argument("--out", help="write the full result as JSON here (the table goes to stdout)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed bench still stops its llama-server
    if args.quant is None:
        from studio.inference import serving_quant

        args.quant = [serving_quant()]
    result = bench(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"load average at the end: {os.getloadavg()}")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
