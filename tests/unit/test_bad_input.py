"""The bad-input battery: 40+ things a user can get wrong, across the whole studio.

Each case must raise a StudioError whose message says what went wrong (asserted by pattern) and
leave the workspace as it was: every file of the existing run, dataset and adapter is byte-for-byte
unchanged, nothing half-written is left behind, and the studio still lists and loads them after.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from studio import paths
from studio.errors import AdapterError, ConfigError, DataError, ModelError, RunError, StudioError

ROOT = Path(__file__).resolve().parents[2]
HINGLISH = ROOT / "assets" / "hinglish_demo.jsonl"
HUGE_ROW_CHARS = 2_000_000  # one 2 MB answer: far beyond any max length, must not crash the reader
LONG_PROMPT_CHARS = 100_000  # the brief's 100k-character prompt


# ---------------------------------------------------------------- the existing work that must survive


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_model_dir) -> Path:
    """A workspace holding one prepared dataset, one stopped run and one imported adapter, built once."""
    import os

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from studio.adapters import import_adapter
    from studio.config import LoraSpec, ModelSpec, RunSpec, TrainSpec
    from studio.data.store import prepare
    from studio.jobs import manager
    from studio.jobs.events import write_status

    ws = tmp_path_factory.mktemp("battery-template")
    old = os.environ.get("STUDIO_WORKSPACE")
    os.environ["STUDIO_WORKSPACE"] = str(ws)
    try:
        prepare(HINGLISH, str(tiny_model_dir), "keep-data", max_len=128)
        spec = RunSpec(name="keep-run", dataset="keep-data", model=ModelSpec(ref=str(tiny_model_dir), quant="fp32"),
                       lora=LoraSpec(r=4, alpha=8), train=TrainSpec(max_steps=2, max_seq_len=128))
        run = manager.create(spec)
        write_status(run, state="stopped", message="Stopped by the user.")  # never launched by a later schedule()
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        saved = tmp_path_factory.mktemp("lora") / "keep"
        model.save_pretrained(saved)
        import_adapter(saved, "keep-adapter")
    finally:
        if old is None:
            os.environ.pop("STUDIO_WORKSPACE", None)
        else:
            os.environ["STUDIO_WORKSPACE"] = old
    return ws


@pytest.fixture
def ws(template, workspace) -> Path:
    """This test's workspace, a copy of the template."""
    shutil.copytree(template, workspace, dirs_exist_ok=True)
    return workspace


def snapshot(ws: Path) -> dict[str, str]:
    """Every file (and folder) under the workspace with its content hash; the queue's empty lock file, which
    any look at the runs creates, is not the user's data."""
    return {str(p.relative_to(ws)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(ws.rglob("*")) if p.name != ".schedule.lock"}


def assert_still_usable(ws: Path) -> None:
    from studio.adapters import adapter_names, get_adapter
    from studio.data.store import list_datasets, load_prepared
    from studio.jobs import manager

    assert [m["name"] for m in list_datasets()] == ["keep-data"]
    assert len(load_prepared("keep-data").train) > 0
    assert [r["run"] for r in manager.list_runs()] == ["keep-run"]
    assert adapter_names() == ["keep-adapter"] and get_adapter("keep-adapter").path.is_dir()


# ---------------------------------------------------------------- files a user might upload


def _write(tmp: Path, name: str, content: bytes | str) -> Path:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _prepare(tmp: Path, name: str, content: bytes | str, ds_name: str = "new-data", **kw):
    from studio.data.store import prepare

    return lambda ctx: prepare(_write(tmp, name, content), ctx["model"], ds_name, **kw)


def _zip(entries: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _adapter_files(template: Path) -> dict[str, bytes]:
    folder = template / "adapters" / "keep-adapter"
    return {f: (folder / f).read_bytes() for f in ("adapter_config.json", "adapter_model.safetensors")}


def _import_zip(entries_of: Callable[[dict], dict], compress: int = zipfile.ZIP_STORED, name: str = "new-adapter"):
    from studio.adapters import import_adapter

    def run(ctx):
        path = ctx["tmp"] / "upload.zip"
        path.write_bytes(_zip(entries_of(_adapter_files(ctx["template"])), compress))
        import_adapter(path, name)
    return run


def _import_folder(change: Callable[[Path], None], name: str = "new-adapter", base=None):
    from studio.adapters import import_adapter

    def run(ctx):
        folder = ctx["tmp"] / "upload-adapter"
        shutil.copytree(ctx["template"] / "adapters" / "keep-adapter", folder)
        change(folder)
        import_adapter(folder, name, base_model=ctx[base] if base else None)
    return run


def _preset_yaml(text: str):
    from studio.config import Preset, load_yaml

    def run(ctx):
        load_yaml(Preset, _write(ctx["tmp"], "mine.yaml", text))
    return run


def _run(name: str = "new-run", dataset: str = "keep-data"):
    from studio.config import LoraSpec, ModelSpec, RunSpec, TrainSpec
    from studio.jobs import manager

    def run(ctx):
        manager.start(RunSpec(name=name, dataset=dataset, model=ModelSpec(ref=ctx["model"], quant="fp32"),
                              lora=LoraSpec(r=4, alpha=8), train=TrainSpec(max_steps=2, max_seq_len=128)))
    return run


def _generate(prompt: str = "Hello?", **settings):
    from studio.inference import GenerationSettings, stream_chat

    def run(ctx):
        loaded = ctx["loaded"]
        messages = [{"role": "user", "content": prompt}]
        list(stream_chat(loaded.model, loaded.tokenizer, messages, GenerationSettings(**settings)))
    return run


def _pickle_bytes() -> bytes:
    import pickle

    return pickle.dumps({"lora_A": [0.0] * 4})


PRESET_OK = """name: mine
description: test
memory_gb: 8
device: cpu
quant: fp32
lora: {r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear}
train: {max_seq_len: 256, micro_batch: 1, grad_accum: 1, lr: 0.0002, max_steps: 10}
"""


def _cases(tmp: Path) -> list:
    """(id, action, error class, message pattern). `tmp` holds the files the user 'uploads'."""
    from studio.adapters import import_adapter, validate_adapter
    from studio.data.io import read_records
    from studio.data.store import inspect, prepare
    from studio.jobs import manager
    from studio.models import load_model, resolve

    garbage = bytes(range(256)) * 64  # every byte value: binary, not text
    # a 2 MB question: no answer token fits in the max length, so the only row cannot be trained on
    huge = json.dumps({"messages": [{"role": "user", "content": "x " * (HUGE_ROW_CHARS // 2)},
                                    {"role": "assistant", "content": "ok"}]})
    return [
        # -------- data files
        ("empty-jsonl", _prepare(tmp, "empty.jsonl", b""), DataError, "is empty"),
        ("whitespace-only-txt", _prepare(tmp, "blank.txt", "\n\n   \n"), DataError, "no records|empty|no text"),
        ("binary-named-json", _prepare(tmp, "garbage.json", garbage), DataError, "not UTF-8|not valid JSON"),
        ("binary-named-jsonl", _prepare(tmp, "garbage.jsonl", garbage), DataError, "UTF-8|invalid|read"),
        ("binary-named-csv", _prepare(tmp, "garbage.csv", garbage), DataError, "UTF-8|readable CSV"),
        ("binary-named-parquet", _prepare(tmp, "garbage.parquet", garbage), DataError, "not a readable Parquet"),
        ("non-utf8-csv", _prepare(tmp, "latin1.csv", "prompt,response\ncaf\xe9,ol\xe9\n".encode("latin-1")),
         DataError, "not UTF-8.*0xe9"),
        ("truncated-json", _prepare(tmp, "cut.json", '[{"instruction": "a", "output": "b"}, {"instr'), DataError,
         "not valid JSON.*line 1"),
        ("json-scalar", _prepare(tmp, "scalar.json", "42"), DataError, "holds a JSON int, not a list"),
        ("json-two-lists", _prepare(tmp, "two.json", '{"a": [{"x": 1}], "b": [{"y": 2}]}'), DataError,
         "several lists"),
        ("bad-jsonl-line-named", lambda ctx: read_records(_write(tmp, "oneline.jsonl",
                                                                 '{"text": "ok"}\n{"text": oops}\n')),
         DataError, "line 2"),
        ("every-row-invalid", _prepare(tmp, "allbad.jsonl", '{"messages": []}\n{"messages": "x"}\n', fmt="openai"),
         DataError, "No row of .* is usable"),
        ("wrong-columns-csv", _prepare(tmp, "cols.csv", "foo,bar\n1,2\n3,4\n"), DataError, "needs a column mapping"),
        ("mapping-to-missing-column", _prepare(tmp, "cols2.csv", "foo,bar\n1,2\n", fmt="mapped",
                                               mapping={"prompt": "question", "response": "answer"}), DataError,
         "question|column|invalid"),
        ("huge-single-row", _prepare(tmp, "huge.jsonl", huge, max_len=64), DataError,
         "invalid|too long|no trained token"),
        ("unsupported-extension", _prepare(tmp, "model.exe", b"MZ\x90\x00"), DataError, "not a supported file type"),
        ("missing-file", lambda ctx: inspect(tmp / "nope.jsonl"), DataError, "does not exist"),
        ("unknown-format", _prepare(tmp, "fmt.jsonl", HINGLISH.read_bytes(), fmt="yaml-chat"), DataError,
         "Unknown format"),
        ("max-len-too-small", _prepare(tmp, "ml.jsonl", HINGLISH.read_bytes(), max_len=2), DataError, "too small"),
        ("eval-split-out-of-range", _prepare(tmp, "es.jsonl", HINGLISH.read_bytes(), eval_split=1.5), DataError,
         "out of range"),
        # -------- names
        ("dataset-name-slash", _prepare(tmp, "n1.jsonl", HINGLISH.read_bytes(), ds_name="a/b"), DataError,
         "not allowed"),
        ("dataset-name-dotdot", _prepare(tmp, "n2.jsonl", HINGLISH.read_bytes(), ds_name=".."), DataError,
         "not allowed"),
        ("dataset-name-exists", lambda ctx: prepare(HINGLISH, ctx["model"], "keep-data"), DataError,
         "already exists"),
        ("run-name-slash", _run("runs/../../etc"), ConfigError, "not allowed"),
        ("run-name-dotdot", _run(".."), ConfigError, "not allowed"),
        ("run-name-exists", _run("keep-run"), RunError, "already exists"),
        ("run-missing-dataset", _run("fresh", dataset="no-such-data"), RunError, "does not exist"),
        ("resume-unknown-run", lambda ctx: manager.resume("ghost"), RunError, "no run named"),
        ("stop-a-stopped-run", lambda ctx: manager.stop("keep-run"), RunError, "is stopped, not running"),
        ("delete-run-traversal", lambda ctx: manager.delete("../datasets"), ConfigError, "not allowed"),
        # -------- adapters
        ("zip-path-traversal", _import_zip(lambda f: {"../../evil.txt": b"x", **f}), AdapterError, "unsafe entry"),
        ("zip-absolute-path", _import_zip(lambda f: {"/tmp/evil.txt": b"x", **f}), AdapterError, "unsafe entry"),
        ("zip-bomb", _import_zip(lambda f: {**f, "bomb.txt": b"\0" * (64 * 2**20)}, zipfile.ZIP_DEFLATED),
         AdapterError, "expands|GiB"),
        ("zip-pickle", _import_zip(lambda f: {**f, "adapter_model.bin": _pickle_bytes()}), AdapterError, "pickle"),
        ("zip-not-a-zip", lambda ctx: import_adapter(_write(tmp, "fake.zip", garbage), "new-adapter"), AdapterError,
         "not a readable zip"),
        ("pickled-adapter-folder", _import_folder(lambda f: (f / "adapter_model.safetensors").rename(
            f / "adapter_model.bin")), AdapterError, "pickle"),
        ("adapter-missing-weights", _import_folder(lambda f: (f / "adapter_model.safetensors").unlink()),
         AdapterError, "no adapter_model.safetensors"),
        ("adapter-config-garbage", _import_folder(lambda f: (f / "adapter_config.json").write_text("{}")),
         AdapterError, "not a valid PEFT adapter config"),
        ("adapter-weights-garbage", _import_folder(lambda f: (f / "adapter_model.safetensors").write_bytes(garbage),
                                                   base="other_model"), AdapterError, "safetensors|trained for"),
        ("adapter-for-another-base", lambda ctx: validate_adapter(ctx["template"] / "adapters" / "keep-adapter",
                                                                  ctx["other_model"]), AdapterError, "does not fit"),
        ("adapter-name-traversal", _import_folder(lambda f: None, name="../../x"), ConfigError, "not allowed"),
        ("adapter-name-exists", _import_folder(lambda f: None, name="keep-adapter"), AdapterError, "already exists"),
        # -------- presets and settings
        ("preset-wrong-type", _preset_yaml(PRESET_OK.replace("r: 8", "r: eight")), ConfigError, "lora.r"),
        ("preset-unknown-key", _preset_yaml(PRESET_OK.replace("max_steps: 10", "max_steps: 10, turbo: true")),
         ConfigError, "turbo"),
        ("preset-negative", _preset_yaml(PRESET_OK.replace("lr: 0.0002", "lr: -1")), ConfigError, "train.lr"),
        ("preset-not-yaml", _preset_yaml("name: [unclosed\n  - : :"), ConfigError, "YAML|yaml|parse"),
        # -------- generation
        ("prompt-100k-chars", _generate("x" * LONG_PROMPT_CHARS), ConfigError, "over the 32,000 limit"),
        ("prompt-empty", _generate("   "), ConfigError, "prompt is empty"),
        ("max-new-tokens-negative", _generate(max_new_tokens=-5), ConfigError, "max_new_tokens"),
        ("temperature-absurd", _generate(temperature=1e9), ConfigError, "temperature"),
        ("top-p-zero", _generate(top_p=0.0), ConfigError, "top_p"),
        ("repetition-negative", _generate(repetition_penalty=-1.0), ConfigError, "repetition_penalty"),
        # -------- models
        ("model-path-missing", lambda ctx: resolve(str(tmp / "no-model")), ModelError, "does not exist"),
        ("model-folder-without-config", lambda ctx: resolve(str(ctx["template"] / "datasets")), ModelError,
         "no config.json"),
        ("model-corrupt-gguf", lambda ctx: resolve(str(_write(tmp, "broken.gguf", b"GGUF\x03\x00" + garbage[:64]))),
         ModelError, "GGUF|gguf"),
        ("model-unknown-quant", lambda ctx: load_model(ctx["model"], "3bit"), StudioError, "3bit"),
    ]


CASE_IDS = [c[0] for c in _cases(Path("/nonexistent"))]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from studio.models import load_model

    return load_model(str(tiny_model_dir), "fp32", device="cpu")


@pytest.fixture(scope="module")
def other_model(other_tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(other_tiny_model_dir)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_is_refused_clearly_and_nothing_is_lost(case_id, ws, tmp_path, template, tiny_model_dir, loaded,
                                                         other_model):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    _, action, error, pattern = next(c for c in _cases(uploads) if c[0] == case_id)
    ctx = {"tmp": uploads, "template": ws, "model": str(tiny_model_dir), "loaded": loaded,
           "other_model": other_model}
    before = snapshot(ws)
    with pytest.raises(error, match=pattern) as caught:
        action(ctx)
    assert caught.value.fix, f"{case_id}: the message says what went wrong but not how to fix it"
    assert len(str(caught.value)) < 2000  # a message, not a dump
    assert snapshot(ws) == before, f"{case_id} changed the workspace"
    assert_still_usable(ws)
    assert paths.workspace() == ws
    _record(case_id, caught.value)


def _record(case_id: str, exc: StudioError) -> None:
    """What the user saw, kept in test-artifacts/ for docs/reliability.md."""
    out = ROOT / "test-artifacts" / "bad_input_messages.jsonl"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps({"case": case_id, "error": type(exc).__name__, "message": str(exc)}) + "\n")
