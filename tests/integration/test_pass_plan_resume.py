"""A stopped and resumed CPU run trains with the pass plan of its first launch, whatever RAM is free then."""

from __future__ import annotations

import json
import time

from studio.config import replace
from studio.jobs import manager
from studio.jobs.events import read_status
from studio.jobs.worker import PLAN_FILE

from .training_helpers import prepare, tiny_spec


def _wait_for(predicate, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        manager.refresh()
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_resume_reuses_the_recorded_pass_plan(tmp_path, tiny_model_dir):
    data = prepare(tmp_path, str(tiny_model_dir))
    spec = tiny_spec("planned", data, str(tiny_model_dir), max_steps=400, save_steps=100)
    spec = replace(spec, train=replace(spec.train, packing=True, gradient_checkpointing=True))
    path = manager.start(spec)
    _wait_for(lambda: read_status(path).get("step", 0) >= 2, "the first launch to train")
    first = json.loads((path / PLAN_FILE).read_text())
    assert first["micro_batch"] == 4 and not first["gradient_checkpointing"]  # 4 x 64 tokens fit: no recompute
    manager.stop("planned")
    assert manager.wait("planned", timeout=120)["state"] == "stopped"

    # A plan the first launch could have chosen on a machine short of RAM: one row per pass, recomputed.
    # The resume must train with it, not with a fresh choice from the RAM free now.
    recorded = {**first, "micro_batch": 1, "grad_accum": 4, "gradient_checkpointing": True}
    (path / PLAN_FILE).write_text(json.dumps(recorded))
    manager.resume("planned")
    _wait_for(lambda: "1 packed row(s) per pass" in (path / "worker.log").read_text(), "the resume to start")
    manager.stop("planned")
    manager.stop("planned")  # a second stop ends it at once
    log = (path / "worker.log").read_text()
    assert "1 packed row(s) per pass, 4 passes per step" in log
    assert json.loads((path / PLAN_FILE).read_text()) == recorded  # the resume did not choose again
