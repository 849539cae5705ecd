"""An in-memory broker for one machine: the same interface and semantics as RabbitMQ.

It mirrors what the fleet relies on from a quorum queue: messages are handed out round-robin
up to each consumer's prefetch, an unacked message returns to the front of its queue when its
holder's connection closes, and every such return is counted in ``x-delivery-count``.
"""

from __future__ import annotations

import itertools
import queue as stdqueue
import threading
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from fleetrun.common.broker.base import Connection, Consumer, Delivery
from fleetrun.common.errors import BrokerError, ConnectionLost, Unroutable


@dataclass
class _Message:
    body: bytes
    headers: dict[str, Any]
    returns: int = 0


@dataclass
class _Queue:
    name: str
    owner: EmbeddedConnection | None
    ready: deque[_Message] = field(default_factory=deque)
    consumers: list[_EmbeddedConsumer] = field(default_factory=list)
    turn: int = 0


class EmbeddedBroker:
    """The server side: holds the queues. Clients get connections from :meth:`connect`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._queues: dict[str, _Queue] = {}
        self._fanouts: dict[str, set[str]] = {}
        self._tags = itertools.count(1)

    def connect(self) -> EmbeddedConnection:
        return EmbeddedConnection(self)

    # All methods below run with self._lock held by the caller.

    def _queue(self, name: str) -> _Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise BrokerError(f"NOT_FOUND - no queue '{name}' in the embedded broker") from None

    def _enqueue(self, name: str, message: _Message, front: bool = False) -> None:
        q = self._queue(name)
        (q.ready.appendleft if front else q.ready.append)(message)
        self._dispatch(q)

    def _dispatch(self, q: _Queue) -> None:
        while q.ready and q.consumers:
            for offset in range(len(q.consumers)):
                consumer = q.consumers[(q.turn + offset) % len(q.consumers)]
                if consumer.has_room():
                    q.turn = (q.turn + offset + 1) % len(q.consumers)
                    consumer.deliver(q.ready.popleft(), next(self._tags))
                    break
            else:
                return

    def _return(self, name: str, messages: list[_Message]) -> None:
        if name not in self._queues:
            return
        for message in reversed(messages):
            message.returns += 1
            self._enqueue(name, message, front=True)


class _EmbeddedConsumer(Consumer):
    def __init__(self, broker: EmbeddedBroker, queue: str, prefetch: int) -> None:
        self._broker = broker
        self.queue = queue
        self._prefetch = prefetch
        # None, put when the consumer is cancelled, wakes every get() waiting (each puts it
        # back for the next).
        self._inbox: stdqueue.Queue[Delivery | None] = stdqueue.Queue()
        self.unacked: dict[int, _Message] = {}
        self._carried: set[int] = set()  # held before the last set_prefetch: not counted
        self.active = True

    def has_room(self) -> bool:
        return self.active and len(self.unacked) - len(self._carried) < self._prefetch

    def deliver(self, message: _Message, tag: int) -> None:
        self.unacked[tag] = message
        headers = dict(message.headers)
        if message.returns:
            headers["x-delivery-count"] = message.returns
        self._inbox.put(Delivery(message.body, headers, message.returns > 0, tag, self))

    def get(self, timeout: float | None = None) -> Delivery | None:
        try:
            if not self.active:
                # Cancelled: nothing more can arrive, so there is nothing to wait for.
                delivery = self._inbox.get_nowait()
            else:
                delivery = self._inbox.get(timeout=timeout)
        except stdqueue.Empty:
            return None
        if delivery is None:
            self._inbox.put(None)
        return delivery

    def _settle(self, delivery: Delivery) -> _Message | None:
        if delivery.channel is not self:
            return None
        message: _Message | None = self.unacked.pop(delivery.tag, None)
        self._carried.discard(delivery.tag)
        return message

    def ack(self, delivery: Delivery) -> None:
        with self._broker._lock:
            if self._settle(delivery) is not None and self.queue in self._broker._queues:
                self._broker._dispatch(self._broker._queues[self.queue])

    def requeue(self, delivery: Delivery) -> None:
        with self._broker._lock:
            message = self._settle(delivery)
            if message is not None:
                self._broker._return(self.queue, [message])

    def set_prefetch(self, prefetch: int) -> None:
        with self._broker._lock:
            self._prefetch = max(1, prefetch)
            self._carried = set(self.unacked)
            q = self._broker._queues.get(self.queue)
            if q is not None and self.active:
                self._broker._dispatch(q)

    def cancel(self) -> None:
        with self._broker._lock:
            if self.active:
                self._inbox.put(None)
            self.active = False
            q = self._broker._queues.get(self.queue)
            if q is not None and self in q.consumers:
                q.consumers.remove(self)

    def close(self) -> None:
        """Like a channel closing: everything held goes back, counted as a return."""
        with self._broker._lock:
            self.cancel()
            held = [self.unacked[tag] for tag in sorted(self.unacked)]
            self.unacked.clear()
            self._carried.clear()
            self._broker._return(self.queue, held)


class EmbeddedConnection(Connection):
    def __init__(self, broker: EmbeddedBroker) -> None:
        self._broker = broker
        self._consumers: list[_EmbeddedConsumer] = []
        self._closed = False

    @property
    def description(self) -> str:
        return "the embedded broker"

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionLost("the embedded connection is closed")

    def declare_queue(self, name: str, *, exclusive: bool = False) -> None:
        with self._broker._lock:
            self._check_open()
            if name not in self._broker._queues:
                self._broker._queues[name] = _Queue(name, self if exclusive else None)

    def declare_fanout(self, exchange: str) -> None:
        with self._broker._lock:
            self._broker._fanouts.setdefault(exchange, set())

    def bind(self, queue: str, exchange: str) -> None:
        with self._broker._lock:
            self._broker._queue(queue)
            self._broker._fanouts.setdefault(exchange, set()).add(queue)

    def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str = "",
        headers: Mapping[str, Any] | None = None,
    ) -> Future[None]:
        future: Future[None] = Future()
        with self._broker._lock:
            if self._closed:
                future.set_exception(ConnectionLost("the embedded connection is closed"))
                return future
            targets = (
                [routing_key]
                if not exchange
                else sorted(self._broker._fanouts.get(exchange, set()))
            )
            targets = [t for t in targets if t in self._broker._queues]
            if not targets and not exchange:
                future.set_exception(Unroutable(f"message to '{routing_key}' was unroutable"))
                return future
            for target in targets:
                self._broker._enqueue(target, _Message(body, dict(headers or {})))
        future.set_result(None)
        return future

    def consume(self, queue: str, prefetch: int) -> Consumer:
        with self._broker._lock:
            self._check_open()
            consumer = _EmbeddedConsumer(self._broker, queue, max(1, prefetch))
            q = self._broker._queue(queue)
            q.consumers.append(consumer)
            self._consumers.append(consumer)
            self._broker._dispatch(q)
            return consumer

    def queue_depth(self, queue: str) -> tuple[int, int]:
        with self._broker._lock:
            q = self._broker._queue(queue)
            return len(q.ready), len(q.consumers)

    def delete_queue(self, queue: str) -> None:
        with self._broker._lock:
            q = self._broker._queues.pop(queue, None)
            for members in self._broker._fanouts.values():
                members.discard(queue)
            for consumer in q.consumers if q else []:
                consumer.active = False

    def close(self) -> None:
        with self._broker._lock:
            if self._closed:
                return
            self._closed = True
            for consumer in self._consumers:
                consumer.close()
            for name, q in list(self._broker._queues.items()):
                if q.owner is self:
                    self.delete_queue(name)
