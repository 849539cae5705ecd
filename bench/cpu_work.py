"""The work of the cpu_bound benchmark: pure-Python arithmetic, about 20 ms per item.

fleetrun's runners and the ProcessPoolExecutor baseline run this very code: the entry script
is this module's source plus a ``run()`` (see :func:`entry_script`).
"""

from __future__ import annotations

import inspect
import os
import sys
import time


def busy(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total = (total + i * i) % 1_000_003
    return total


def score_batch(paths: list[str], iterations: int) -> list[str]:
    """One output line per input: its file name and the result of the work."""
    return [f"{os.path.basename(path)} {busy(iterations)}" for path in paths]


def calibrate(seconds_per_item: float) -> int:
    """The iteration count that takes ``seconds_per_item`` here (best of a few tries)."""
    probe = 200_000
    best = min(_timed(probe) for _ in range(5))
    return max(1, round(probe * seconds_per_item / best))


def _timed(iterations: int) -> float:
    started = time.perf_counter()
    busy(iterations)
    return time.perf_counter() - started


def item_seconds(iterations: int, repeat: int = 5) -> float:
    """The time of one item's work, best of ``repeat`` (the least disturbed by neighbours)."""
    return min(_timed(iterations) for _ in range(repeat))


def entry_script(iterations: int) -> str:
    """An entry script whose ``run()`` is :func:`score_batch` with a fixed iteration count."""
    source = inspect.getsource(sys.modules[__name__])
    return (
        source
        + f"""

ITERATIONS = {iterations}


def run(mini_batch):
    return score_batch(mini_batch, ITERATIONS)
"""
    )
