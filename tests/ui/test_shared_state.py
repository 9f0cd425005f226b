"""The shared state the tabs follow, read from disk: a run that finishes brings its adapter into focus; numbers
are formatted for people; the log tail leaves library noise in worker.log."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

from studio.config import save_yaml
from studio.ui import fmt
from studio.ui.shared import Current
from tests.integration.training_helpers import tiny_spec


def _run(ws, name: str, **status) -> None:
    folder = ws / "runs" / name
    folder.mkdir(parents=True)
    save_yaml(tiny_spec(name, "ds", "bundled"), folder / "spec.yaml")
    (folder / "status.json").write_text(json.dumps({"created": time.time(), **status}))


def _finish(ws, name: str) -> None:
    (ws / "runs" / name / "status.json").write_text(json.dumps({"state": "completed", "created": time.time()}))
    (ws / "runs" / name / "adapter").mkdir()
    (ws / "runs" / name / "adapter" / "adapter_config.json").write_text("{}")


def test_a_run_that_finishes_brings_its_adapter_into_focus(workspace):
    _run(workspace, "older", state="completed")
    (workspace / "runs" / "older" / "adapter").mkdir()
    (workspace / "runs" / "older" / "adapter" / "adapter_config.json").write_text("{}")
    _run(workspace, "fresh", state="running", pid=os.getpid(), heartbeat=time.time())
    current = replace(Current(), run="fresh").with_disk()
    assert (current.run, current.run_state, current.adapter) == ("fresh", "running", "run:older")
    _finish(workspace, "fresh")
    after = current.with_disk()  # what the page's timer reads next
    assert (after.run_state, after.adapter, after.adapters) == ("completed", "run:fresh", ("run:fresh", "run:older"))
    assert "data-adapter='run:fresh'" in after.summary_html() and "fresh (completed)" in after.summary_html()
    assert after.with_disk() == after  # nothing changed on disk: the timer sends nothing


def test_a_dataset_or_run_that_is_gone_falls_back_to_the_newest(workspace):
    _run(workspace, "only", state="stopped")
    current = replace(Current(), run="deleted-meanwhile", dataset="gone").with_disk()
    assert current.run == "only" and current.dataset is None and current.adapter is None


def test_numbers_for_people():
    assert fmt.number(5.092022895812988) == "5.09" and fmt.number(0.000178914) == "0.000179"
    assert fmt.number(1234.5) == "1,234" and fmt.number(12) == "12" and fmt.number(None) == "-"
    assert fmt.megabytes(2345.6) == "2.3 GB" and fmt.duration(3725) == "1 h 02 min"
    assert fmt.rounded(27.18281828) == 27.18


def test_special_tokens_survive_markdown():
    # raw, <start_of_turn> is an HTML tag to the browser and the rest of the line disappeared (Gemma's "why")
    line = ("trained with the adapter: <start_of_turn>, <end_of_turn>); end of turn <end_of_turn>; "
            "stops on ids [1, 106].")
    assert fmt.md(line) == ("trained with the adapter: `<start_of_turn>`, `<end_of_turn>`); end of turn "
                            "`<end_of_turn>`; stops on ids [1, 106].")
    assert fmt.md("end of turn <|im_end|>", in_table=True) == "end of turn `<\\|im_end\\|>`"  # no new table cell


def test_the_log_tail_leaves_library_noise_in_the_file(tmp_path):
    from studio.jobs.events import log_tail

    (tmp_path / "worker.log").write_text(
        "[studio] rank 0 of 1 processes on cpu\n"
        "/venv/x.py:12: FutureWarning: `foo` is deprecated\n  warnings.warn(\n"
        "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'\n"
        "Loading weights: 100%|##########| 20/20 [00:00<00:00, 14675.66it/s]\n"
        "{'loss': '6.94', 'grad_norm': '3.8'}\n")
    quiet = log_tail(tmp_path, 10, quiet=True).splitlines()
    assert quiet == ["[studio] rank 0 of 1 processes on cpu", "{'loss': '6.94', 'grad_norm': '3.8'}"]
    assert "FutureWarning" in log_tail(tmp_path, 10)  # the file (and `runs show`) keeps everything
