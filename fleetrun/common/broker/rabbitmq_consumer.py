"""Consuming from RabbitMQ: pull consumers fed by the I/O thread, and batched acks.

Each consumer has a channel of its own (its prefetch is the channel's QoS). Deliveries are put
in the consumer's inbox by the I/O thread; acks from any thread are queued and flushed on the
I/O thread, a run of consecutive tags as one ``basic.ack(multiple=True)``.
"""

from __future__ import annotations

import functools
import logging
import queue as stdqueue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pika
from pika.channel import Channel
from pika.spec import BasicProperties

from fleetrun.common.broker.base import Consumer, Delivery
from fleetrun.common.errors import BrokerError

log = logging.getLogger("fleetrun.common.broker.rabbitmq")


class RabbitConsumer(Consumer):
    def __init__(self, owner: ConsumingMixin, queue: str, prefetch: int) -> None:
        self._owner = owner
        self.queue = queue
        self.prefetch = prefetch
        self.inbox: stdqueue.Queue[Delivery | BaseException] = stdqueue.Queue()
        self.channel: Channel | None = None
        self.tag: str | None = None
        self.outstanding: list[int] = []  # delivery tags received and not yet settled, in order
        self.cancelled = False

    def get(self, timeout: float | None = None) -> Delivery | None:
        try:
            item = self.inbox.get(timeout=timeout)
        except stdqueue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def ack(self, delivery: Delivery) -> None:
        self._owner._settle(self, delivery, requeue=False)

    def requeue(self, delivery: Delivery) -> None:
        self._owner._settle(self, delivery, requeue=True)

    def cancel(self) -> None:
        self.cancelled = True
        self._owner._call(functools.partial(self._owner._cancel_on_loop, self))

    def set_prefetch(self, prefetch: int) -> None:
        self.prefetch = max(1, prefetch)
        self._owner._call(functools.partial(self._owner._reconsume_on_loop, self))

    def on_message(self, ch: Channel, method: Any, props: BasicProperties, body: bytes) -> None:
        """Called by pika on the I/O thread."""
        if ch is not self.channel:
            return
        self.outstanding.append(method.delivery_tag)
        self.inbox.put(
            Delivery(body, props.headers or {}, method.redelivered, method.delivery_tag, ch)
        )


class ConsumingMixin:
    """The consuming half of :class:`RabbitConnection` (which provides these attributes)."""

    _conn: pika.SelectConnection | None
    _consumers: list[RabbitConsumer]
    _lock: threading.Lock
    _to_settle: list[tuple[RabbitConsumer, Delivery, bool]]
    _settle_scheduled: bool
    _closing: bool

    def _call(self, fn: Callable[[], None]) -> None:
        raise NotImplementedError

    def _call_and_wait(self, fn: Callable[[Future[Any]], None], timeout: float = 30.0) -> Any:
        raise NotImplementedError

    @staticmethod
    def _fail_on_close(channel: Channel, future: Future[Any], what: str) -> None:
        raise NotImplementedError

    def consume(self, queue: str, prefetch: int) -> Consumer:
        consumer = RabbitConsumer(self, queue, max(1, prefetch))

        def run(future: Future[Any]) -> None:
            self._consumers.append(consumer)
            self._open_consumer(consumer, future)

        self._call_and_wait(run)
        return consumer

    def _open_consumer(self, consumer: RabbitConsumer, started: Future[Any] | None = None) -> None:
        conn = self._conn
        if conn is None or not conn.is_open:
            return

        def on_channel(channel: Channel) -> None:
            consumer.channel = channel
            consumer.outstanding = []
            if started is not None:
                self._fail_on_close(channel, started, f"consuming {consumer.queue}")
            channel.add_on_close_callback(functools.partial(self._on_consumer_closed, consumer))
            channel.add_on_cancel_callback(lambda _frame: self._on_broker_cancel(consumer, channel))

            def on_qos(_frame: Any) -> None:
                consumer.tag = channel.basic_consume(
                    consumer.queue,
                    consumer.on_message,
                    callback=lambda _f: started.set_result(None) if started else None,
                )

            channel.basic_qos(prefetch_count=consumer.prefetch, callback=on_qos)

        conn.channel(on_open_callback=on_channel)

    def _on_consumer_closed(
        self, consumer: RabbitConsumer, channel: Channel, reason: BaseException
    ) -> None:
        if channel is not consumer.channel:
            return
        consumer.channel = None
        consumer.outstanding.clear()
        code = getattr(reason, "reply_code", 0)
        if code == 404:
            consumer.inbox.put(BrokerError(f"queue {consumer.queue} is gone: {reason}"))
            if consumer in self._consumers:
                self._consumers.remove(consumer)  # nothing to consume after a reconnect
            return
        # A consumer timeout (406 on 3.10-4.2) or a queue error closes only the channel: the
        # broker has requeued what it held. Open a fresh channel and carry on.
        if (
            not consumer.cancelled
            and not self._closing
            and self._conn is not None
            and self._conn.is_open
        ):
            log.warning("consumer channel on %s closed (%s); reopening", consumer.queue, reason)
            self._open_consumer(consumer)

    def _on_broker_cancel(self, consumer: RabbitConsumer, channel: Channel) -> None:
        # 4.3+ cancels a timed-out consumer instead of closing its channel.
        current = consumer.channel
        if current is not None and current is channel and current.is_open:
            current.close()

    def _reconsume_on_loop(self, consumer: RabbitConsumer) -> None:
        """A new prefetch: RabbitMQ fixes a consumer's prefetch when it starts, so a new
        consumer replaces it on the same channel, where the deliveries already held stay held
        and are acked as before. (One that pika receives for the old consumer in the moment
        between the two is handed back by pika: it was never started, so it costs no try.)"""
        current, old_tag = consumer.channel, consumer.tag
        if current is None or not current.is_open or consumer.cancelled or old_tag is None:
            return  # a reconnect, or none, opens the consumer with the new prefetch

        def on_qos(_frame: Any) -> None:
            channel = consumer.channel
            if channel is None or channel is not current or consumer.cancelled:
                return  # lost or cancelled meanwhile
            consumer.tag = channel.basic_consume(consumer.queue, consumer.on_message)
            channel.basic_cancel(old_tag)

        current.basic_qos(prefetch_count=consumer.prefetch, callback=on_qos)

    def _cancel_on_loop(self, consumer: RabbitConsumer) -> None:
        channel = consumer.channel
        if channel is not None and channel.is_open and consumer.tag:
            channel.basic_cancel(consumer.tag)

    def _settle(self, consumer: RabbitConsumer, delivery: Delivery, requeue: bool) -> None:
        with self._lock:
            self._to_settle.append((consumer, delivery, requeue))
            if self._settle_scheduled:
                return
            self._settle_scheduled = True
        self._call(self._flush_settlements)

    def _flush_settlements(self) -> None:
        with self._lock:
            batch, self._to_settle = self._to_settle, []
            self._settle_scheduled = False
        by_consumer: dict[int, tuple[RabbitConsumer, dict[int, bool]]] = {}
        for consumer, delivery, requeue in batch:
            if delivery.channel is not consumer.channel or consumer.channel is None:
                continue  # from a lost channel: the broker has already requeued it
            by_consumer.setdefault(id(consumer), (consumer, {}))[1][delivery.tag] = requeue
        for consumer, settled in by_consumer.values():
            channel = consumer.channel
            if channel is None or not channel.is_open:
                continue
            # The longest run of acked tags at the head of the outstanding list goes as one
            # multiple ack; the rest one by one.
            head = 0
            for tag in consumer.outstanding:
                if settled.get(tag) is False:
                    head += 1
                else:
                    break
            if head:
                channel.basic_ack(consumer.outstanding[head - 1], multiple=True)
            acked_together = set(consumer.outstanding[:head])
            held = set(consumer.outstanding)
            for tag, requeue in settled.items():
                if tag in acked_together or tag not in held:
                    continue  # settled already: a second ack would make the broker close us
                if requeue:
                    channel.basic_nack(tag, requeue=True)
                else:
                    channel.basic_ack(tag)
            done = set(settled)
            consumer.outstanding = [t for t in consumer.outstanding if t not in done]
