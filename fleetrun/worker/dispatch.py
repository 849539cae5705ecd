"""Which held batch a runner slot takes next, so a worker serves several jobs without thrashing.

A slot's runner has run one job's ``init()``; switching jobs costs a new runner and a new
``init()``. So a slot takes, in this order: a batch that has waited longer than ``fairness_s``
(no job starves); a batch of its own job; a batch of a job that no slot serves yet; and only
when a batch has waited ``switch_after_s`` (its own job's slots are busy, or this slot's job
has no batches left), any batch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetrun.common.broker import Consumer, Delivery


@dataclass
class _Waiting:
    delivery: Delivery
    job_id: str | None
    arrived: float = field(default_factory=time.monotonic)


def _job_of(delivery: Delivery) -> str | None:
    try:
        job = json.loads(delivery.body).get("job_id")
    except (ValueError, AttributeError):
        return None
    return job if isinstance(job, str) else None


class Dispatcher:
    def __init__(
        self,
        consumer: Consumer,
        *,
        switch_after_s: float = 10.0,
        fairness_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.switch_after_s = switch_after_s
        self.fairness_s = fairness_s
        self._clock = clock
        self._waiting: list[_Waiting] = []
        self._lock = threading.Lock()

    def take(
        self,
        own_job: Callable[[], str | None],
        served: Callable[[], set[str]],
        timeout: float,
        stopping: threading.Event | None = None,
    ) -> Delivery | None:
        """The delivery this slot should run next, or None after ``timeout`` seconds (or as
        soon as ``stopping`` is set). ``own_job`` (the job of the slot's runner, None when it
        has none or its job has ended) and ``served`` are asked afresh on every look."""
        deadline = self._clock() + timeout
        while stopping is None or not stopping.is_set():
            with self._lock:
                self._collect()
                chosen = self._choose(own_job(), served())
                if chosen is not None:
                    self._waiting.remove(chosen)
                    return chosen.delivery
            left = deadline - self._clock()
            if left <= 0:
                return None
            delivery = self.consumer.get(timeout=min(left, 0.05))
            if delivery is not None:
                with self._lock:
                    self._add(delivery)
        return None

    def _choose(self, own_job: str | None, served: set[str]) -> _Waiting | None:
        if not self._waiting:
            return None
        now = self._clock()
        oldest = self._waiting[0]
        if own_job is None or now - oldest.arrived >= self.fairness_s:
            return oldest
        for waiting in self._waiting:
            if waiting.job_id == own_job:
                return waiting
        for waiting in self._waiting:
            if waiting.job_id not in served:
                return waiting
        if now - oldest.arrived >= self.switch_after_s:
            return oldest
        return None

    def _collect(self, timeout: float = 0) -> None:
        """Move what the consumer received into the waiting list (the lock is held)."""
        while (delivery := self.consumer.get(timeout=timeout)) is not None:
            self._add(delivery)

    def _add(self, delivery: Delivery) -> None:
        self._waiting.append(_Waiting(delivery, _job_of(delivery), self._clock()))

    def surplus(self, keep: int) -> list[Delivery]:
        """The held deliveries beyond the first ``keep`` that no slot took yet, released."""
        with self._lock:
            self._collect()
            extra = self._waiting[max(0, keep) :]
            del self._waiting[max(0, keep) :]
        return [w.delivery for w in extra]

    def drain(self) -> list[Delivery]:
        """Everything held and not taken (for handing back on shutdown)."""
        with self._lock:
            # Deliveries still in flight when the consumer was cancelled; any later one is
            # handed back by the broker itself (and costs no try: it never started).
            self._collect(timeout=0.1)
            held, self._waiting = self._waiting, []
        return [w.delivery for w in held]
