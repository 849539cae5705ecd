"""Publishing to RabbitMQ with confirms: a future per message, resolved by the broker.

The publishing channel is in confirm mode; each message gets the next sequence number and a
future, and ``basic.ack``/``basic.nack`` (one at a time or ``multiple``) resolve them, so
confirms pipeline instead of being waited for in turn. A mandatory message the broker could
not route comes back (``basic.return``) before its ack, which then fails it as
:class:`Unroutable`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from fleetrun.common.errors import BrokerError, ConnectionLost, Unroutable


class PublishingMixin:
    """The publishing half of :class:`RabbitConnection` (which provides these attributes)."""

    _lock: threading.Lock
    _closing: bool
    _channel: Channel | None
    _seq: int
    _unconfirmed: dict[int, Future[None]]
    _returned: set[str]

    def _call(self, fn: Callable[[], None]) -> None:
        raise NotImplementedError

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        raise NotImplementedError

    def _confirm_on(self, channel: Channel) -> None:
        """Publish on ``channel`` from now on, in confirm mode (on the I/O thread)."""
        self._channel = channel
        self._seq = 0
        channel.confirm_delivery(self._on_confirm)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_close_callback(self._on_channel_closed)

    def _fail_unconfirmed(self, error: BaseException) -> None:
        """The publishing channel is gone: every message not yet confirmed fails with
        ``error``, for its publisher to send again."""
        with self._lock:
            unconfirmed, self._unconfirmed = self._unconfirmed, {}
            self._returned.clear()
        for future in unconfirmed.values():
            if not future.done():
                future.set_exception(error)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        with self._lock:
            if method.multiple:
                # Tags are inserted in increasing order: the confirmed ones are at the front.
                tags = list(
                    itertools.takewhile(lambda t: t <= method.delivery_tag, self._unconfirmed)
                )
            else:
                tags = [method.delivery_tag]
            futures = [(t, self._unconfirmed.pop(t)) for t in tags if t in self._unconfirmed]
        for tag, future in futures:
            if future.done():
                continue
            if not ok:
                future.set_exception(BrokerError("the broker refused the message (nack)"))
            elif str(tag) in self._returned:
                self._returned.discard(str(tag))
                future.set_exception(Unroutable("the message was unroutable: no such queue"))
            else:
                future.set_result(None)

    def _on_return(
        self, channel: Channel, method: Any, props: BasicProperties, body: bytes
    ) -> None:
        if props.message_id:
            self._returned.add(props.message_id)

    def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str = "",
        headers: Mapping[str, Any] | None = None,
    ) -> Future[None]:
        future: Future[None] = Future()
        if self._closing:
            future.set_exception(ConnectionLost("the connection is closed"))
            return future

        def run() -> None:
            channel = self._channel
            if channel is None or not channel.is_open:
                future.set_exception(ConnectionLost("no open channel to publish on"))
                return
            self._seq += 1
            with self._lock:
                self._unconfirmed[self._seq] = future
            props = BasicProperties(
                delivery_mode=2, headers=dict(headers or {}), message_id=str(self._seq)
            )
            try:
                channel.basic_publish(exchange, routing_key, body, props, mandatory=not exchange)
            except Exception as exc:
                with self._lock:
                    self._unconfirmed.pop(self._seq, None)
                future.set_exception(ConnectionLost(f"publish failed: {exc}"))

        self._call(run)
        return future
