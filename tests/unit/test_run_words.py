"""What the Train tab says about a run, in words: the log lines, the learning rate, the time left, the passes over
the data, the suggested run name and the max-steps field."""

from __future__ import annotations

import re

import pytest

from studio.ui import runlog

RAW = re.compile(r"\d\.0*[1-9]\d{5,}|e-0\d|'learning_rate'")  # 6+ significant digits, e-05, dict keys


@pytest.mark.parametrize(("value", "shown"), [(2.182e-05, "0.000022"), (2e-4, "0.0002"), (0.00017891, "0.00018"),
                                              (6.29e-07, "6.3e-7"), (0.5, "0.5"), (1.0, "1")])
def test_learning_rates_read_as_plain_numbers(value, shown):
    assert runlog.learning_rate(value) == shown


def test_a_zero_learning_rate_says_why():
    assert runlog.learning_rate(0.0) == "warming up from zero"  # never a bare "learning rate 0"


def _events(steps: int = 30, per_epoch: float = 7.5) -> list[dict]:
    """A run of `steps` steps over a dataset of `per_epoch` steps: it goes through the data 4 times."""
    return [{"type": "log", "step": s, "epoch": round(s / per_epoch, 4), "loss": 5.092022895812988 - s / 10,
             "lr": 2.182e-05 if s > 1 else 0.0, "tokens_per_sec": 1234.5678, "memory_mb": 2900.1}
            for s in range(1, steps + 1)] + [{"type": "log", "step": 20, "eval_loss": 3.14159265}]


def test_the_human_log_has_step_loss_lr_speed_and_epoch_and_nothing_raw():
    log = runlog.human_log(_events(), 30, lines=50)
    lines = log.splitlines()
    assert lines[4] == "step 5 of 30 · loss 4.59 · lr 0.000022 · 1,235 tokens/s · epoch 0.67 of 4"
    assert lines[-1] == "step 20 of 30 · eval loss 3.14 (held-out rows)"
    assert not RAW.findall(log), RAW.findall(log)[:3]


def test_the_log_keeps_the_newest_lines_and_says_resume_and_stop():
    events = [*_events(10), {"type": "stop", "step": 7}, {"type": "resume", "step": 7}]
    log = runlog.human_log(events, 30, lines=3)
    assert len(log.splitlines()) == 3 and "stopped at step 7" in log and "resumed from the checkpoint of step 7" in log


def test_before_the_first_step_the_log_says_what_the_worker_does():
    assert runlog.human_log([], 30, "Loading the model and data...") == "Loading the model and data..."


def test_max_steps_winning_over_one_epoch_is_said():
    note = runlog.passes_note(_events(), 30, preset_epochs=1, max_steps=30)
    assert "Max steps (30) wins over the preset's 1 epoch" in note and "about 4 times" in note
    short = runlog.passes_note(_events(5, per_epoch=100), 5, preset_epochs=1, max_steps=5)
    assert short.endswith("this run goes through 5% of the training data."), short
    assert runlog.passes_note(_events(30, per_epoch=30), 30, preset_epochs=1, max_steps=30) == ""  # as the preset


def test_time_left_gives_a_range_while_few_steps_are_timed():
    assert runlog.time_left({"state": "running", "eta_sec": 200, "eta_low_sec": 100, "eta_high_sec": 300}) == \
        "about 1 min 40 s to 5 min 00 s left (first steps: the range narrows)"
    assert runlog.time_left({"state": "running", "eta_sec": 250}) == "about 4 min 10 s left"
    assert runlog.time_left({"state": "completed", "eta_sec": 250}) == ""


def test_a_fresh_run_name_on_every_call_never_one_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    from studio import paths
    from studio.ui.tabs.train import fresh_run_name

    first = fresh_run_name()
    assert re.fullmatch(r"run-\d{4}-\d{4}", first)
    (paths.runs_dir() / first).mkdir(parents=True)  # the first run started under that name
    second = fresh_run_name()
    assert second != first and second.startswith(first)
    (paths.runs_dir() / second).mkdir()
    assert fresh_run_name() not in (first, second)


def test_max_steps_field_names_the_presets_number_and_the_settings_show_the_typed_one():
    from studio.ui.tabs.train import effective_settings, max_steps_info

    settings = {"quant": "fp32", "train": {"max_steps": 60, "epochs": 1}}
    assert max_steps_info(settings).startswith("0 = the preset's 60.")
    assert effective_settings(settings, 30)["train"]["max_steps"] == 30
    assert effective_settings(settings, 0)["train"]["max_steps"] == 60
    assert settings["train"]["max_steps"] == 60  # the preset's own settings are not changed
