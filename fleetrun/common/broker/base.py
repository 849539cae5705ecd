"""The broker interface that the coordinator and the worker program against.

Two implementations pass one contract suite (``tests/contract``): :mod:`.rabbitmq` (pika, for a
fleet) and :mod:`.embedded` (in memory, for one machine). The interface is deliberately small:
durable queues, confirmed publishes (a :class:`~concurrent.futures.Future` per message, so
publishes pipeline), pull consumers with a bounded prefetch, acks, requeues and a fanout
exchange for control broadcasts. Every method is safe to call from any thread.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Delivery:
    """A message handed to a consumer, to be acked (or requeued) exactly once."""

    body: bytes
    headers: Mapping[str, Any]
    redelivered: bool
    tag: int
    # The channel (or embedded consumer) the delivery came from: an ack for a delivery from an
    # earlier channel is dropped, since the broker has already requeued it.
    channel: Any = field(repr=False, compare=False)

    def prior_returns(self) -> int:
        """How many times the broker handed this message out before and got it back unacked.

        Quorum queues count returns in ``x-delivery-count`` (3.10-4.2: every return; 4.3+: only
        failed ones) and, from 4.3, every hand-out in ``x-acquired-count``. Taking the largest
        of both, and at least 1 when ``redelivered`` is set, is right on every version. The
        worker counts a return as a lost try only if that try had started (see
        ``BatchHandler._tries_spent``).
        """
        counts = [
            int(self.headers.get(h, 0) or 0) for h in ("x-delivery-count", "x-acquired-count")
        ]
        return max(*counts, 1 if self.redelivered else 0)


class Consumer(abc.ABC):
    """A pull consumer on one queue with a bounded number of unacked deliveries."""

    @abc.abstractmethod
    def get(self, timeout: float | None = None) -> Delivery | None:
        """The next delivery, or None when none arrived within ``timeout`` seconds."""

    @abc.abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """Acknowledge; acks are batched, and dropped for deliveries of a lost channel."""

    @abc.abstractmethod
    def requeue(self, delivery: Delivery) -> None:
        """Hand the delivery back to the queue (``basic.nack`` with requeue)."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop receiving. Deliveries already received stay held until acked or closed."""

    @abc.abstractmethod
    def set_prefetch(self, prefetch: int) -> None:
        """Up to ``prefetch`` unacked deliveries from now on, besides those already held:
        RabbitMQ fixes a consumer's prefetch when it starts, so the consumer is replaced on
        its channel, where what it held stays held and is acked as before."""


class Connection(abc.ABC):
    """One client connection to a broker."""

    @abc.abstractmethod
    def declare_queue(self, name: str, *, exclusive: bool = False) -> None:
        """A durable quorum queue (or an exclusive, auto-deleted one for a single client)."""

    @abc.abstractmethod
    def declare_fanout(self, exchange: str) -> None: ...

    @abc.abstractmethod
    def bind(self, queue: str, exchange: str) -> None: ...

    @abc.abstractmethod
    def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str = "",
        headers: Mapping[str, Any] | None = None,
    ) -> Future[None]:
        """Publish a persistent message; the future resolves when the broker confirms it."""

    @abc.abstractmethod
    def consume(self, queue: str, prefetch: int) -> Consumer: ...

    @abc.abstractmethod
    def queue_depth(self, queue: str) -> tuple[int, int]:
        """``(ready messages, consumers)`` of a queue."""

    @abc.abstractmethod
    def delete_queue(self, queue: str) -> None: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Flush pending acks and close; unacked deliveries return to their queues."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Where this connection goes, without credentials, for messages to people."""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class TlsFiles:
    """Certificates for ``amqps://``: the CA to trust, and a client certificate if required."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


def connect(
    url: str | list[str],
    name: str = "fleetrun",
    *,
    embedded: Any = None,
    tls: TlsFiles | None = None,
) -> Connection:
    """A connection to RabbitMQ (one URL or a cluster's list) or to an embedded broker."""
    if embedded is not None:
        return embedded.connect()  # type: ignore[no-any-return]
    from fleetrun.common.broker.rabbitmq import RabbitConnection

    urls = [url] if isinstance(url, str) else list(url)
    flat = [u.strip() for entry in urls for u in entry.split(",") if u.strip()]
    return RabbitConnection(flat, name=name, tls=tls)
