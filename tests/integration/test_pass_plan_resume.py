"""A stopped and resumed CPU run trains with the pass plan of its first launch, whatever RAM is free then."""

from __future__ import annotations

import json

from studio.config import replace
from studio.jobs import manager, worker
from studio.jobs.events import STOP_FILE, read_status
from studio.jobs.worker import PLAN_FILE

from .training_helpers import prepare, tiny_spec


def test_resume_reuses_the_recorded_pass_plan(tmp_path, tiny_model_dir, capsys):
    data = prepare(tmp_path, str(tiny_model_dir))
    spec = tiny_spec("planned", data, str(tiny_model_dir), max_steps=400, save_steps=100)
    spec = replace(spec, train=replace(spec.train, packing=True, gradient_checkpointing=True))
    path = manager.create(spec)
    (path / STOP_FILE).touch()  # a Stop during step 1: checkpoint, then exit (the recipe, in this process)
    assert worker.train(path) == "stopped" and read_status(path)["step"] == 1
    first = json.loads((path / PLAN_FILE).read_text())
    assert first["micro_batch"] == 4 and not first["gradient_checkpointing"]  # 4 x 64 tokens fit: no recompute

    # A plan the first launch could have chosen on a machine short of RAM: one row per pass, recomputed.
    # The resume must train with it, not with a fresh choice from the RAM free now.
    recorded = {**first, "micro_batch": 1, "grad_accum": 4, "gradient_checkpointing": True}
    (path / PLAN_FILE).write_text(json.dumps(recorded))
    capsys.readouterr()
    (path / STOP_FILE).touch()
    assert worker.train(path) == "stopped" and read_status(path)["step"] == 2  # resumed at 1, one more step
    assert "1 packed row(s) per pass, 4 passes per step" in capsys.readouterr().out
    assert json.loads((path / PLAN_FILE).read_text()) == recorded  # the resume did not choose again
