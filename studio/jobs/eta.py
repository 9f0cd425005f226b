"""Time left in a run, from its recent steps (no torch: the worker feeds it, status.json carries the result).

The run's plain average lags: the first step (data loading, first kernels) is slow, and a machine that slows
down halfway (another job, thermal limits) is noticed only after many steps. Here the time of a step is an
exponential moving average (EMA) of the recent steps, the first step is dropped once a second is known, and
evaluations and checkpoint saves are timed apart (added back as their average cost per step). While few steps
are known, the estimate comes with a range that narrows as steps arrive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.2  # weight of the newest step: about the last 10 steps count; a slowdown shows within ~5 steps
FEW_STEPS = 5  # below this many timed steps, a range is shown rather than one number
START_SPREAD = 0.5  # +-50% with one timed step, narrowing as 1/sqrt(steps)


@dataclass(frozen=True)
class Eta:
    seconds: float  # the best guess
    low: float  # a range: the user reads "about 2-4 min" while it is wide
    high: float
    steps_timed: int

    @property
    def uncertain(self) -> bool:
        return self.steps_timed < FEW_STEPS or self.high > 1.5 * max(self.low, 1e-9)


class EtaEstimator:
    """Feed it `step(step_number, now)` after every optimizer step and `pause(now)` after an evaluation or a
    save; `estimate(total_steps)` is the time left."""

    def __init__(self, start_step: int, now: float):
        self.last_step, self.last_time = start_step, now
        self.mean: float | None = None  # EMA of seconds per step
        self.var = 0.0  # EMA of the squared deviation (the spread of recent steps)
        self.timed = 0  # steps timed so far
        self.first: float | None = None  # the first step's time, kept apart until a second one is known
        self.overhead = 0.0  # seconds spent in evaluations and saves
        self.steps_seen = 0

    def step(self, step: int, now: float) -> None:
        done = step - self.last_step
        if done <= 0:
            return
        per_step = (now - self.last_time) / done
        self.last_step, self.last_time = step, now
        self.steps_seen += done
        if self.timed == 0 and self.first is None:
            self.first = per_step  # slow (warm-up): replaced by the second step's time
            return
        if self.mean is None:
            self.mean, self.first = per_step, None
        else:
            deviation = per_step - self.mean
            self.mean += ALPHA * deviation
            self.var = (1 - ALPHA) * (self.var + ALPHA * deviation * deviation)
        self.timed += done

    def pause(self, now: float) -> None:
        """An evaluation or a checkpoint save just ended: its time is overhead, not a slower step."""
        self.overhead += max(0.0, now - self.last_time)
        self.last_time = now

    def estimate(self, total_steps: int) -> Eta | None:
        per_step = self.mean if self.mean is not None else self.first
        if per_step is None or not total_steps:
            return None
        left = max(0, total_steps - self.last_step)
        overhead = self.overhead / self.steps_seen if self.steps_seen else 0.0
        seconds = left * (per_step + overhead)
        timed = self.timed if self.mean is not None else 0
        spread = max(math.sqrt(self.var) / per_step, START_SPREAD / math.sqrt(max(timed, 1)))
        if timed >= FEW_STEPS:
            spread = math.sqrt(self.var) / per_step
        return Eta(seconds=seconds, low=seconds * max(0.0, 1 - spread), high=seconds * (1 + spread),
                   steps_timed=timed)
