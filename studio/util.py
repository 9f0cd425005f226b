"""Small helpers shared across the studio."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import psutil

Progress = Callable[[float, str], None]  # (fraction 0..1, message): long actions report through this
ShouldStop = Callable[[], bool]  # polled by long actions; True means the user pressed Stop / Cancel


def no_progress(fraction: float, message: str) -> None:
    """The default Progress: report nothing."""


def never() -> bool:
    """The default ShouldStop: never cancelled."""
    return False


def rss_mb() -> float:
    """Resident memory of this process, in MiB."""
    return psutil.Process().memory_info().rss / 2**20


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | Path, data) -> None:
    """Write JSON so a reader never sees half a file (write a temp file, then rename)."""
    path = Path(path)
    # a unique temp name per writer: two threads of one process must not share (and steal) one file
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: str | Path, default=None):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def in_passing_thread(fn: Callable, *args, **kwargs):
    """`fn(*args, **kwargs)` in a thread that ends when it returns (its result returned, its exception raised).

    For torch work outside the scheduler thread, such as loading a model: GNU OpenMP keeps a pool of worker
    threads for every thread that ran a parallel region, for as long as that thread lives, and once the pools
    hold more threads than there are cores its workers stop spinning between regions and sleep instead. A
    decode step is thousands of short regions: on 2 cores, a one-row matmul took 170 us instead of 45 us in
    the scheduler's thread while the loading thread's pool lived (benchmarks/decode_floor.py, docs/serving.md).
    A thread that ends takes its pool with it.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-passing") as pool:  # its thread ends on exit
        return pool.submit(fn, *args, **kwargs).result()
