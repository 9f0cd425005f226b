"""Shared fixtures: an isolated workspace per test, a session-wide studio home (so the bundled model
is converted once per machine), and tiny random-weight Llama models built here for speed.

Parallel runs (pytest-xdist, `make test` uses `-n`): every worker process has its own session fixtures and
its own tmp_path root, each test its own workspace (STUDIO_WORKSPACE), apps and servers take free ports
(tests/app_launcher.py), the one shared folder, STUDIO_HOME, is a cache whose bundled-model conversion runs
once under a file lock, and each worker's torch gets its share of the cores (OMP_NUM_THREADS, inherited by
the workers and apps a test starts) instead of every worker spinning threads on all of them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("STUDIO_HOME", str(ROOT / ".cache" / "test-home"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ARTIFACTS = ROOT / "test-artifacts"
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if XDIST_WORKERS > 1:  # set before torch is imported: torch reads it once
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // XDIST_WORKERS)))


@pytest.fixture(scope="session", autouse=True)
def bundled_converted() -> None:
    """Convert the bundled model (once per STUDIO_HOME) before any test runs, under a file lock: parallel
    workers (and parallel test runs sharing the home) would otherwise convert it at once into one folder.
    Tests that call resolve("bundled") themselves, or start an app that does, need nothing more."""
    from filelock import FileLock

    from studio import paths
    from studio.models import bundled_gguf, resolve

    if bundled_gguf() is None:
        return  # the bundled_dir fixture says what to install
    with FileLock(str(paths.home() / "bundled-conversion.lock")):
        resolve("bundled")


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Path:
    """Each test gets its own runs/, datasets/, adapters/ and exports/."""
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.setenv("STUDIO_WORKSPACE", str(ws))
    return ws


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct, converted once into an HF folder."""
    from studio.models import resolve

    return Path(resolve("bundled"))


def make_tiny_model(out: Path, tokenizer_dir: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random-weight Llama with the bundled tokenizer (and its chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_dir) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", bundled_dir)


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory, bundled_dir) -> Path:
    """A second tiny model with a different shape: adapters trained for one must not fit the other."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny2") / "tiny-llama-96", bundled_dir, hidden=96)


# ---------------------------------------------------------------- parallel scheduling (pytest-xdist)

DURATIONS = Path(__file__).with_name("durations.json")  # seconds per test file, measured (docs/testing.md)
CACHE_KEY = "tuning-studio/test-seconds"  # seconds per test from this checkout's last runs (.pytest_cache)
UNKNOWN_TEST_SECONDS = 3.0  # a test of a file never measured


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (`make test`: --dist loadfile --no-loadscope-reorder) the files go to the workers in
    collection order, a file at a time (a file's tests share module fixtures, and some run in file order, like
    the browser walk). Put the longest files first, so that no worker starts a long file when the others are
    nearly done. Inside a file the order stays as written."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    estimate = _estimates(config, items)
    file_seconds: dict[str, float] = {}
    for item in items:
        file_seconds[_file_of(item.nodeid)] = file_seconds.get(_file_of(item.nodeid), 0.0) + estimate(item)
    items.sort(key=lambda item: -file_seconds[_file_of(item.nodeid)])  # a stable sort


def _estimates(config: pytest.Config, items: list[pytest.Item]):
    """Seconds a test is expected to take: its own last time (.pytest_cache), else its share of its file's
    measured time (tests/durations.json, for a fresh clone), else UNKNOWN_TEST_SECONDS."""
    import json

    per_file = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    cached = cache.get(CACHE_KEY, {}) if cache is not None else {}
    counts: dict[str, int] = {}
    for item in items:
        counts[_file_of(item.nodeid)] = counts.get(_file_of(item.nodeid), 0) + 1

    def estimate(item: pytest.Item) -> float:
        file = _file_of(item.nodeid)
        if item.nodeid in cached:
            return cached[item.nodeid]
        return per_file[file] / counts[file] if file in per_file else UNKNOWN_TEST_SECONDS

    return estimate


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration  # setup + call + teardown


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remember each test's time for the next run's order (the controller sees every worker's reports)."""
    config = session.config
    cache = getattr(config, "cache", None)
    if hasattr(config, "workerinput") or cache is None or not _measured:
        return
    cache.set(CACHE_KEY, {**cache.get(CACHE_KEY, {}), **{t: round(s, 2) for t, s in _measured.items()}})
