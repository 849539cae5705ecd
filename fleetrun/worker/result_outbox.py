"""Results on their way to a coordinator: several to a message when they come faster than the
broker confirms them.

A worker finishing no-op batches publishes a result per batch; at a couple of thousand batches
a second, carrying, confirming and delivering those messages one by one is a good part of the
broker's work and of the coordinator's. So for each reply queue one message is in flight at a
time: a result goes out at once when none is, and the results that finish while one awaits its
confirm go together in the next (lines of one body, :func:`results_to_bytes`). No result waits
longer than one confirm, an idle or slow job sends exactly what it did before, and a message's
confirm (or refusal) settles every result in it, each through its own callback: the batch is
acked only once its result is confirmed, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from fleetrun.common.messages import results_to_bytes

# Bounds on one message, so a burst of results with long tracebacks stays a modest message.
MAX_RESULTS = 500
MAX_BYTES = 1 << 20

Settle = Callable[[BaseException | None], None]
Publish = Callable[[str, bytes], Future[None]]


class ResultOutbox:
    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._lock = threading.Lock()
        self._waiting: dict[str, list[tuple[bytes, Settle]]] = {}
        self._in_flight: set[str] = set()
        self._idle = threading.Condition(self._lock)

    def send(self, reply_to: str, body: bytes, settle: Settle) -> None:
        """Publish one encoded result; ``settle(error)`` runs once it is confirmed (None) or
        refused."""
        with self._lock:
            if reply_to in self._in_flight:
                self._waiting.setdefault(reply_to, []).append((body, settle))
                return
            self._in_flight.add(reply_to)
        self._send_now(reply_to, [(body, settle)])

    def _send_now(self, reply_to: str, results: list[tuple[bytes, Settle]]) -> None:
        future = self._publish(reply_to, results_to_bytes([body for body, _ in results]))
        future.add_done_callback(lambda f: self._confirmed(reply_to, results, f.exception()))

    def _confirmed(
        self, reply_to: str, results: list[tuple[bytes, Settle]], error: BaseException | None
    ) -> None:
        for _, settle in results:
            settle(error)
        with self._lock:
            waiting = self._take_waiting(reply_to)
            if not waiting:
                self._in_flight.discard(reply_to)
                self._idle.notify_all()
        if waiting:
            self._send_now(reply_to, waiting)

    def _take_waiting(self, reply_to: str) -> list[tuple[bytes, Settle]]:
        """The next message's worth of waiting results (the lock is held)."""
        waiting = self._waiting.pop(reply_to, [])
        size = 0
        for count, (body, _) in enumerate(waiting):
            size += len(body)
            if count == MAX_RESULTS or (count and size > MAX_BYTES):
                self._waiting[reply_to] = waiting[count:]
                return waiting[:count]
        return waiting

    def wait_idle(self, timeout: float) -> bool:
        """Until every result sent is confirmed or refused (a drain's last step)."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._in_flight, timeout)
