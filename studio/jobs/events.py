"""The run folder's files and their schema. Plain JSON, no torch: the UI and the CLI read them.

runs/<id>/
  spec.yaml       the RunSpec (what to train)
  status.json     {state, pid, heartbeat, step, total_steps, started, finished, message, ...}
  events.jsonl    one JSON object a line: {"type": "log", step, epoch, loss, eval_loss, lr, grad_norm,
                  tokens_per_sec, memory_mb, eta_sec, time} or {"type": "resume" | "stop" | ..., step, time}
  worker.log      everything the worker printed
  checkpoints/    checkpoint-<step>/ folders (Trainer format), the latest few kept
  adapter/        the final PEFT adapter + README.md model card + card.json
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

from studio.util import read_json, write_json_atomic

STATES = ("queued", "running", "stopping", "stopped", "completed", "failed")
ACTIVE = ("queued", "running", "stopping")
HEARTBEAT_SEC = 5  # how often a live worker touches status.json; the manager calls it dead after 12x this
DEAD_AFTER_SEC = HEARTBEAT_SEC * 12  # no heartbeat for a minute: the worker is hung or gone
STOP_FILE = "stop.request"  # the manager creates it to ask for a graceful stop (checkpoint, then exit)


def read_status(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / "status.json", default={}) or {}


def write_status(run_dir: Path, **changes) -> dict:
    """Merge `changes` into status.json (atomically) and return the result."""
    status = read_status(run_dir)
    status.update(changes)
    write_json_atomic(Path(run_dir) / "status.json", status)
    return status


class Status:
    """status.json, owned by one process while it runs: the one writer of its run's status.

    Thread-safe (the heartbeat thread writes too). `finish` stops the heartbeat before it writes the final
    state, so no beat can write "running" over a failure, and a process never makes a second writer.
    """

    def __init__(self, folder: Path, enabled: bool = True):
        self.path = Path(folder) / "status.json"
        self.enabled = enabled
        self.data = read_status(folder)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def update(self, **changes) -> None:
        if not self.enabled:
            return
        with self.lock:
            self.data.update(changes, heartbeat=time.time())
            write_json_atomic(self.path, self.data)

    def start_heartbeat(self) -> None:
        """Touch status.json every HEARTBEAT_SEC from a daemon thread (liveness while a model loads or trains)."""
        if self.enabled and self._beat is None:
            self._beat = threading.Thread(target=self._beat_until_finished, daemon=True)
            self._beat.start()

    def _beat_until_finished(self) -> None:
        while not self._stop.wait(HEARTBEAT_SEC):
            if self.data.get("state") not in ("running", "stopping"):
                return  # the run ended (a foreground run's process lives on): never rewrite a final state
            self.update()

    def finish(self, **final) -> None:
        """Stop the heartbeat, then write the final state (completed, stopped or failed) once."""
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join()
        self.update(**final)


def resume_hint(run_id: str, checkpoint: Path | None) -> str:
    """How to continue a run, for the Train tab and the CLI alike."""
    where = f"from {checkpoint.name}" if checkpoint else "from the start"
    return f"Press Resume in the Train tab (or run `python -m studio runs resume {run_id}`) to continue {where}."


def append_event(run_dir: Path, event: dict) -> None:
    event = {"time": round(time.time(), 3), **event}
    with open(Path(run_dir) / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def read_events(run_dir: Path) -> list[dict]:
    """All events; a half-written last line (a worker killed mid-write) is skipped."""
    path = Path(run_dir) / "events.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def rewind_events(run_dir: Path, step: int) -> int:
    """Before resuming from checkpoint `step`: move later log events (which will be redone) to
    events.discarded.jsonl, so events.jsonl stays one continuous curve and nothing is deleted."""
    events = read_events(run_dir)
    keep = [e for e in events if e.get("step", 0) <= step or e.get("type") != "log"]
    dropped = [e for e in events if e not in keep]
    if dropped:
        with open(Path(run_dir) / "events.discarded.jsonl", "a", encoding="utf-8") as f:
            f.writelines(json.dumps(e) + "\n" for e in dropped)
    tmp = Path(run_dir) / ".events.jsonl.tmp"
    tmp.write_text("".join(json.dumps(e) + "\n" for e in keep), encoding="utf-8")
    tmp.replace(Path(run_dir) / "events.jsonl")
    return len(dropped)


# Library notices a user cannot act on: deprecation warnings and the source line printed under them, the
# optional "kernels" package bitsandbytes looks for, and progress bars of data preparation and weight loading.
NOISE = re.compile(r"Warning\b|warnings\.warn\(|^\s+warn\(|kernels-community|pip install kernels|"
                   r"examples/s\]|it/s\]|^Loading weights|^\s*$")


def log_tail(run_dir: Path, lines: int = 30, quiet: bool = False) -> str:
    """The last `lines` lines of worker.log; `quiet` leaves out library noise (the file keeps everything)."""
    path = Path(run_dir) / "worker.log"
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 64_000))  # the last 64 kB is plenty for 30 lines
        text = f.read().decode("utf-8", errors="replace")
    # progress bars rewrite one line with \r: keep only the last state of each line
    kept = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    if quiet:
        kept = [line for line in kept if not NOISE.search(line)]
    return "\n".join(kept[-lines:])


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (one whose trainer_state.json was written last)."""
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("checkpoint-*"):
        if (path / "trainer_state.json").is_file() and path.name.split("-")[-1].isdigit():
            found.append((int(path.name.split("-")[-1]), path))
    return max(found)[1] if found else None
