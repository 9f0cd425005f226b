"""The time left in a run, on a simulated step clock: steady, slowing down, with evaluations."""

from __future__ import annotations

import random

from studio.jobs.eta import EtaEstimator

TOTAL = 100


def _durations(seed: int = 0, steady: float = 1.0, jitter: float = 0.1, first: float = 5.0) -> list[float]:
    """Seconds per step: a slow first step (warm-up), then `steady` +- `jitter`."""
    rng = random.Random(seed)
    return [first] + [steady * (1 + rng.uniform(-jitter, jitter)) for _ in range(TOTAL - 1)]


def _run(durations: list[float], until: int, evals: dict[int, float] | None = None):
    """Feed the estimator up to step `until`; returns (estimate, actual time left)."""
    clock = 0.0
    eta = EtaEstimator(0, clock)
    for step, seconds in enumerate(durations[:until], start=1):
        clock += seconds
        eta.step(step, clock)
        if evals and step in evals:
            clock += evals[step]
            eta.pause(clock)
    left = sum(durations[until:]) + sum(s for step, s in (evals or {}).items() if step > until)
    return eta.estimate(TOTAL), left


def test_at_a_fifth_of_a_steady_run_the_estimate_is_within_a_quarter_of_the_truth():
    for seed in range(5):
        estimate, left = _run(_durations(seed), until=TOTAL // 5)
        assert abs(estimate.seconds - left) <= 0.25 * left, (seed, estimate, left)
        assert not estimate.uncertain  # 19 steady steps: one number, no wide range


def test_the_slow_first_step_does_not_skew_the_early_estimate():
    estimate, left = _run(_durations(), until=3)  # a run average would say 7 s / 3 = 2.3 s a step
    assert abs(estimate.seconds - left) <= 0.25 * left, (estimate, left)


def test_few_steps_give_a_range_that_narrows():
    first, _ = _run(_durations(), until=2)
    later, _ = _run(_durations(), until=10)
    assert first.uncertain and first.low < first.seconds < first.high
    assert (later.high - later.low) / later.seconds < (first.high - first.low) / first.seconds


def test_a_slowdown_shows_within_a_few_steps():
    """Steps take twice as long from step 40 on: ten steps later the estimate follows (a run average would
    still say ~1.2 s a step, 40% short)."""
    durations = _durations()[:40] + [2.0] * (TOTAL - 40)
    estimate, left = _run(durations, until=50)
    assert abs(estimate.seconds - left) <= 0.25 * left, (estimate, left)


def test_evaluations_count_as_their_share_not_as_a_slow_step():
    evals = {20: 10.0, 40: 10.0, 60: 10.0, 80: 10.0}  # 10 s evaluations every 20 steps
    estimate, left = _run(_durations(), until=41, evals=evals)
    assert abs(estimate.seconds - left) <= 0.25 * left, (estimate, left)
    right_after, _ = _run(_durations(), until=21, evals=evals)
    assert not right_after.uncertain  # an evaluation did not look like a tenfold slower step


def test_nothing_to_say_before_the_first_step():
    assert EtaEstimator(0, 0.0).estimate(TOTAL) is None
