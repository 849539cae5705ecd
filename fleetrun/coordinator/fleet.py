"""The fleet as a coordinator sees it: worker heartbeats in, status and cancel requests answered.

Both ride on fanout exchanges with an exclusive, auto-deleted queue per listener, so they cost
nothing when nobody listens and vanish with the process that listened.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from pydantic import ValidationError

from fleetrun.common.broker import Connection, Consumer
from fleetrun.common.messages import Topology
from fleetrun.common.status import HEARTBEAT_S, StatusReply, StatusRequest, WorkerStatus

FORGET_AFTER_S = 3 * HEARTBEAT_S


def _listen(conn: Connection, exchange: str, tag: str) -> Consumer:
    queue = f"{exchange}.{tag}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    conn.declare_fanout(exchange)
    conn.declare_queue(queue, exclusive=True)
    conn.bind(queue, exchange)
    return conn.consume(queue, prefetch=100)


class _Listener:
    """A thread that hands every message of a fanout exchange to ``handle``."""

    def __init__(self, conn: Connection, exchange: str, tag: str) -> None:
        self._consumer = _listen(conn, exchange, tag)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=tag, daemon=True)
        self._thread.start()

    def handle(self, body: bytes) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                delivery = self._consumer.get(timeout=0.5)
            except Exception:
                return  # the connection is closing
            if delivery is None:
                continue
            with contextlib.suppress(Exception):  # one bad message must not stop the listener
                self.handle(delivery.body)
            self._consumer.ack(delivery)

    def close(self) -> None:
        self._stop.set()


class FleetView(_Listener):
    """The latest heartbeat of every worker that sent one recently."""

    def __init__(self, conn: Connection, topology: Topology) -> None:
        self._latest: dict[str, WorkerStatus] = {}
        self._lock = threading.Lock()
        super().__init__(conn, topology.workers, "view")

    def handle(self, body: bytes) -> None:
        status = WorkerStatus.from_bytes(body)
        with self._lock:
            self._latest[status.worker] = status

    def workers(self) -> list[WorkerStatus]:
        cutoff = time.time() - FORGET_AFTER_S
        with self._lock:
            return [w for w in self._latest.values() if w.sent_at >= cutoff]


class StatusResponder(_Listener):
    """Answers ``fleetrun status`` and ``fleetrun cancel`` for the jobs of this process."""

    def __init__(
        self,
        conn: Connection,
        topology: Topology,
        answer: Callable[[StatusRequest], StatusReply],
    ) -> None:
        self._conn = conn
        self._answer = answer
        super().__init__(conn, topology.rpc, "coordinator")

    def handle(self, body: bytes) -> None:
        request = StatusRequest.from_bytes(body)
        self._conn.publish(request.reply_to, self._answer(request).to_bytes())


def ask(
    conn: Connection,
    topology: Topology,
    request: StatusRequest,
    timeout: float = 1.5,
    enough: Callable[[list[StatusReply]], bool] | None = None,
) -> list[StatusReply]:
    """Broadcast a request to every coordinator; the replies that came within ``timeout``
    (sooner, once ``enough`` says the replies so far will do)."""
    reply_queue = f"{topology.rpc}.reply.{uuid.uuid4().hex[:12]}"
    conn.declare_queue(reply_queue, exclusive=True)
    replies = conn.consume(reply_queue, prefetch=100)
    conn.declare_fanout(topology.rpc)
    message = request.model_copy(update={"reply_to": reply_queue})
    conn.publish("", message.to_bytes(), exchange=topology.rpc).result(10)
    answers: list[StatusReply] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        delivery = replies.get(timeout=left)
        if delivery is None:
            break
        replies.ack(delivery)
        try:
            answers.append(StatusReply.from_bytes(delivery.body))
        except ValidationError:
            continue
        if enough is not None and enough(answers):
            break
    replies.cancel()
    conn.delete_queue(reply_queue)
    return answers
