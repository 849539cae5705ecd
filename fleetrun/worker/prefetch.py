"""How many batches a worker holds: enough that no runner waits on the broker, and few enough
that other workers are not left idle at the end of a job.

A batch a worker holds is one the broker gives to no other worker. With batches of seconds or
more, a runner needs one running and one staged (its inputs fetched while the other runs);
holding more leaves the other workers idle at the end of the job, waiting on this one (the
stragglers ParallelRunStep users complain about). With batches of a millisecond it is the
other way round: between a result and the next delivery lies a broker round trip (the batch
is acked only once its result is confirmed), longer than the batch, so a runner needs many in
hand to stay busy; a no-op job runs about a third faster with 32 per runner than with 8.

So, unless the operator fixed it (``--prefetch``), the worker sets its prefetch from how long
its recent batches took in the runners (as they report it, so a busy worker process does not
skew it): enough batches per runner to cover ``COVER_S`` of work, plus the staged one, between
``MIN_PER_RUNNER`` and ``MAX_PER_RUNNER``. It starts low (a new job may be slow), moves only
by a factor of two or more and at most once every ``MIN_INTERVAL_S`` (a change costs a new
consumer, and a shrink hands back what it no longer holds), and falls back to the start when
the worker has been idle (the next job may be another kind).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable

MIN_PER_RUNNER = 2  # one running, one staged
MAX_PER_RUNNER = 32
COVER_S = 0.02  # about a broker round trip from result to next delivery, with margin
RECENT = 8  # batches whose median duration counts (a first batch after init may be slow)
TRIES_BEFORE_CHANGE = 4
MIN_INTERVAL_S = 1.0


class PrefetchTuner:
    def __init__(
        self, runners: int, fixed: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.runners = runners
        self.fixed = fixed
        self.current = fixed or runners * MIN_PER_RUNNER
        self._clock = clock
        self._recent_s: deque[float] = deque(maxlen=RECENT)
        self._tries = 0
        self._changed_at: float | None = None  # None: the first change may come at once
        self._lock = threading.Lock()

    @property
    def adaptive(self) -> bool:
        return not self.fixed

    def target(self, try_seconds: float) -> int:
        """The prefetch for tries of ``try_seconds`` each."""
        per_runner = math.ceil(COVER_S / max(try_seconds, 1e-6)) + 1
        return self.runners * min(MAX_PER_RUNNER, max(MIN_PER_RUNNER, per_runner))

    def record(self, try_seconds: float) -> int | None:
        """Count one try's duration: the new prefetch, if it should change now."""
        if self.fixed:
            return None
        with self._lock:
            self._recent_s.append(try_seconds)
            self._tries += 1
            target = self.target(statistics.median(self._recent_s))
            now = self._clock()
            if (
                self._tries < TRIES_BEFORE_CHANGE
                or self.current / 2 < target < 2 * self.current
                or (self._changed_at is not None and now - self._changed_at < MIN_INTERVAL_S)
            ):
                return None
            self.current, self._tries, self._changed_at = target, 0, now
            return target

    def reset(self) -> int | None:
        """The worker went idle: back to the start; the new prefetch, if it changed."""
        if self.fixed:
            return None
        with self._lock:
            self._recent_s.clear()
            self._tries, self._changed_at = 0, None
            start = self.runners * MIN_PER_RUNNER
            if self.current == start:
                return None
            self.current = start
            return start
