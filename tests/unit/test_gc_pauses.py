"""The collector's thresholds are raised while fleetrun works, and put back exactly."""

from __future__ import annotations

import gc
import threading

from fleetrun.common.gc_pauses import YOUNG_THRESHOLD, fewer_pauses


def test_the_thresholds_are_raised_inside_and_restored_after() -> None:
    before = gc.get_threshold()
    with fewer_pauses():
        assert gc.get_threshold()[0] == max(before[0], YOUNG_THRESHOLD)
        assert gc.get_threshold()[1:] == before[1:]
    assert gc.get_threshold() == before


def test_jobs_that_overlap_in_threads_restore_the_original_thresholds() -> None:
    before = gc.get_threshold()
    first_in, first_may_leave = threading.Event(), threading.Event()

    def first() -> None:
        with fewer_pauses():
            first_in.set()
            first_may_leave.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(10)
    with fewer_pauses():  # enters while the first is inside, leaves after it
        first_may_leave.set()
        thread.join(10)
        assert gc.get_threshold()[0] == max(before[0], YOUNG_THRESHOLD)
    assert gc.get_threshold() == before


def test_an_error_inside_still_restores_them() -> None:
    before = gc.get_threshold()
    try:
        with fewer_pauses():
            raise RuntimeError("the job failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before
