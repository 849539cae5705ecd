"""The worker's prefetch follows how long its batches take, calmly."""

from __future__ import annotations

from fleetrun.worker.prefetch import (
    MAX_PER_RUNNER,
    MIN_INTERVAL_S,
    MIN_PER_RUNNER,
    TRIES_BEFORE_CHANGE,
    PrefetchTuner,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed(tuner: PrefetchTuner, seconds: float, tries: int) -> list[int]:
    """The prefetch changes that ``tries`` batches of ``seconds`` each bring."""
    changes = [tuner.record(seconds) for _ in range(tries)]
    return [c for c in changes if c is not None]


def test_a_worker_starts_with_one_running_and_one_staged_batch_per_runner() -> None:
    assert PrefetchTuner(runners=3).current == 3 * MIN_PER_RUNNER


def test_millisecond_batches_raise_it_to_the_maximum_after_a_few_tries() -> None:
    tuner = PrefetchTuner(runners=2, clock=Clock())
    assert feed(tuner, 0.0005, TRIES_BEFORE_CHANGE - 1) == []
    assert feed(tuner, 0.0005, 1) == [2 * MAX_PER_RUNNER]


def test_slow_batches_keep_it_at_the_minimum() -> None:
    tuner = PrefetchTuner(runners=2, clock=Clock())
    assert feed(tuner, 2.0, 50) == []
    assert tuner.current == 2 * MIN_PER_RUNNER


def test_it_changes_at_most_once_per_interval_and_only_by_a_factor_of_two() -> None:
    clock = Clock()
    tuner = PrefetchTuner(runners=1, clock=clock)
    assert feed(tuner, 0.0005, 8) == [MAX_PER_RUNNER]
    # Slower batches: the target falls, but not before the interval has passed.
    assert feed(tuner, 0.5, 20) == []
    clock.now += MIN_INTERVAL_S
    assert feed(tuner, 0.5, 1) == [MIN_PER_RUNNER]
    # A target within a factor of two of the current one changes nothing.
    clock.now += 10 * MIN_INTERVAL_S
    assert feed(tuner, 0.015, 20) == []  # 3 per runner, against 2


def test_one_slow_first_batch_does_not_hold_it_back() -> None:
    tuner = PrefetchTuner(runners=1, clock=Clock())
    tuner.record(3.0)  # init()'s imports, a cold cache
    assert feed(tuner, 0.0005, 7) == [MAX_PER_RUNNER]


def test_going_idle_resets_it_and_the_next_job_ramps_at_once() -> None:
    tuner = PrefetchTuner(runners=2, clock=Clock())
    feed(tuner, 0.0005, 8)
    assert tuner.reset() == 2 * MIN_PER_RUNNER
    assert tuner.reset() is None  # already there
    assert feed(tuner, 0.0005, TRIES_BEFORE_CHANGE) == [2 * MAX_PER_RUNNER]


def test_a_prefetch_the_operator_fixed_never_changes() -> None:
    tuner = PrefetchTuner(runners=2, fixed=10, clock=Clock())
    assert feed(tuner, 0.0005, 50) == []
    assert tuner.reset() is None
    assert tuner.current == 10
