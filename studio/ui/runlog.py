"""A run's progress in words: the human log (one line a logged step), the learning rate in plain notation, the
time left, and how many times the run goes through the data. Read from events.jsonl / status.json; no torch."""

from __future__ import annotations

import math

from studio.ui import fmt


def learning_rate(value) -> str:
    """Plain decimals, two significant digits: 2.182e-05 -> 0.000022, 2e-4 -> 0.0002; tinier than a millionth
    in short scientific notation (6.3e-7); zero (the first warm-up step) says why."""
    if value is None:
        return "-"
    value = float(value)
    if value == 0:
        return "warming up from zero"
    if abs(value) < 1e-6:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    decimals = max(0, 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{value:,.0f}"


def planned_passes(events: list[dict], total_steps: int | None) -> float | None:
    """How many times the whole run goes through the training data (epoch at the last log, scaled to the end)."""
    last = next((e for e in reversed(events) if e.get("type") == "log" and e.get("epoch") and e.get("step")), None)
    if last is None or not total_steps:
        return None
    return last["epoch"] / last["step"] * total_steps


def _passes(value: float) -> str:
    """Two significant digits, whole numbers from 10 on: 0.038, 0.5, 3.9, 12."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _epoch(event: dict, passes: float | None) -> str:
    if not event.get("epoch"):
        return ""
    return f"epoch {_passes(event['epoch'])} of {_passes(passes)}" if passes else f"epoch {_passes(event['epoch'])}"


def log_line(event: dict, total_steps: int | None, passes: float | None) -> str:
    """One event as a person reads it: 'step 5 of 30 · loss 2.13 · lr 0.000022 · 1,234 tokens/s · epoch 0.4 of 1.2'."""
    kind, step = event.get("type"), event.get("step", 0)
    if kind == "resume":
        return f"resumed from the checkpoint of step {step}"
    if kind == "stop":
        return f"stopped at step {step} (a checkpoint is saved: Resume goes on from there)"
    if kind != "log":
        return f"{kind} at step {step}"
    where = f"step {step} of {total_steps}" if total_steps else f"step {step}"
    if "eval_loss" in event and "loss" not in event:
        return f"{where} · eval loss {fmt.number(event['eval_loss'])} (held-out rows)"
    parts = [where, f"loss {fmt.number(event.get('loss'))}", f"lr {learning_rate(event.get('lr'))}"]
    if event.get("tokens_per_sec"):
        parts.append(f"{fmt.number(round(event['tokens_per_sec']))} tokens/s")
    if epoch := _epoch(event, passes):
        parts.append(epoch)
    return " · ".join(parts)


def human_log(events: list[dict], total_steps: int | None, status_message: str = "", lines: int = 25) -> str:
    """The newest `lines` lines of the run in words; before the first step, what the worker is doing."""
    passes = planned_passes(events, total_steps)
    shown = [log_line(e, total_steps, passes) for e in events if e.get("type") in ("log", "resume", "stop")]
    if not shown:
        return status_message or ""
    return "\n".join(shown[-lines:])


def passes_note(events: list[dict], total_steps: int | None, preset_epochs: float | None,
                max_steps: int | None) -> str:
    """Say so when max steps makes the run go through the data a different number of times than the epochs say."""
    passes = planned_passes(events, total_steps)
    if passes is None or not max_steps or max_steps <= 0 or preset_epochs is None:
        return ""
    if abs(passes - preset_epochs) < 0.15 * max(preset_epochs, 1):
        return ""
    times = f"through the training data about {_passes(passes)} times" if passes >= 1 else \
        f"through {passes:.0%} of the training data"
    epochs = fmt.number(preset_epochs)
    return f"Max steps ({max_steps}) wins over the preset's {epochs} epoch(s): this run goes {times}."


def time_left(status: dict) -> str:
    """'about 4 min 10 s left', or a range while few steps are timed: 'about 2 min 30 s to 5 min left'."""
    eta = status.get("eta_sec")
    if not eta or status.get("state") != "running":  # 0: all steps done, saving
        return ""
    low, high = status.get("eta_low_sec"), status.get("eta_high_sec")
    if low is not None and high is not None and fmt.duration(low) != fmt.duration(high):
        return f"about {fmt.duration(low)} to {fmt.duration(high)} left (first steps: the range narrows)"
    return f"about {fmt.duration(eta)} left"
