"""RabbitMQ over pika: one I/O thread owns the connection; every other thread schedules onto it.

Why a ``SelectConnection`` in a thread of its own rather than a ``BlockingConnection``: a
blocking channel waits for each publisher confirm in turn, which caps confirmed publishing near
1,100 messages/s (``shared/reference/rabbitmq.md`` (e)(1)); here confirms pipeline, with a
future per message. Heartbeats never starve, because nothing but pika runs on the I/O thread.
Acks are batched on the I/O thread: a run of consecutive delivery tags is one
``basic.ack(multiple=True)``.

On a lost connection the thread reconnects with backoff, going round the shuffled list of
cluster URLs, and replays what the callers set up (queues, exchanges, bindings, consumers).
Deliveries from the lost channel become stale (their acks are dropped: the broker has already
requeued them) and unconfirmed publishes fail with :class:`ConnectionLost`, for the caller to
retry. Publishing lives in :mod:`.rabbitmq_publishing`, consuming in :mod:`.rabbitmq_consumer`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pika
import pika.exceptions
from pika.channel import Channel

from fleetrun.common.broker.base import Connection, Delivery, TlsFiles
from fleetrun.common.broker.rabbitmq_consumer import ConsumingMixin, RabbitConsumer
from fleetrun.common.broker.rabbitmq_publishing import PublishingMixin
from fleetrun.common.broker.rabbitmq_setup import (
    CONNECT_TIMEOUT,
    QUORUM_ARGS,
    describe,
    parameters,
    redact,
)
from fleetrun.common.errors import BrokerError, BrokerUnavailable, ConnectionLost

log = logging.getLogger(__name__)


class RabbitConnection(ConsumingMixin, PublishingMixin, Connection):
    """A connection to RabbitMQ (or a cluster, tried in turn) with a reconnecting I/O thread."""

    def __init__(
        self, urls: list[str], name: str = "fleetrun", tls: TlsFiles | None = None
    ) -> None:
        if not urls:
            raise BrokerError("no broker URL given")
        self._urls = urls
        self._name = name
        self._tls = tls
        self._lock = threading.Lock()
        self._conn: pika.SelectConnection | None = None
        self._channel: Channel | None = None  # the publishing channel, in confirm mode
        self._ready = threading.Event()
        self._closing = False
        self._fatal: BaseException | None = None
        self._pending: list[Callable[[], None]] = []  # calls waiting for the next connection
        self._queued: list[Callable[[], None]] = []  # calls for the loop's next wake-up
        self._wakeup_scheduled = False
        self._seq = 0
        self._unconfirmed: dict[int, Future[None]] = {}
        self._returned: set[str] = set()
        self._declared: dict[str, Callable[[Channel, Callable[[Any], None]], None]] = {}
        self._consumers: list[RabbitConsumer] = []
        self._to_settle: list[tuple[RabbitConsumer, Delivery, bool]] = []
        self._settle_scheduled = False
        self._attempt = 0
        self._thread = threading.Thread(target=self._run, name=f"pika-{name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(CONNECT_TIMEOUT) or self._fatal is not None:
            self._closing = True
            reason = (
                describe(self._fatal)
                if self._fatal
                else f"no answer within {CONNECT_TIMEOUT:.0f} s"
            )
            where = ", ".join(redact(u) for u in urls)
            raise BrokerUnavailable(
                f"cannot connect to RabbitMQ at {where}: {reason}. Check that the broker runs "
                "and the URL, user and password are right (amqp://user:pass@host:5672/vhost)."
            )

    @property
    def description(self) -> str:
        return ", ".join(redact(u) for u in self._urls)

    # -- the I/O thread ------------------------------------------------------------------------

    def _run(self) -> None:
        order = self._urls[:]
        random.shuffle(order)
        while not self._closing:
            url = order[self._attempt % len(order)]
            self._attempt += 1
            try:
                conn = pika.SelectConnection(
                    parameters(url, self._name, self._tls),
                    on_open_callback=self._on_open,
                    on_open_error_callback=self._on_open_error,
                    on_close_callback=self._on_close,
                )
            except Exception as exc:  # a malformed URL: nothing to retry
                self._fatal = exc
                self._ready.set()
                return
            self._conn = conn
            conn.ioloop.start()
            with self._lock:
                self._conn = None
                self._keep_queued_for_next_connection()
            if self._closing or self._fatal is not None:
                return
            time.sleep(min(10.0, 0.2 * 2 ** min(self._attempt, 6)) * random.uniform(0.5, 1.0))

    def _on_open(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_publish_channel)

    def _on_open_error(self, conn: pika.SelectConnection, error: BaseException) -> None:
        if isinstance(
            error,
            pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError,
        ):
            self._fatal = error  # wrong credentials or vhost: retrying will not help
            self._ready.set()
        elif not self._ready.is_set() and self._attempt >= 3 * len(self._urls):
            self._fatal = error
            self._ready.set()
        conn.ioloop.stop()

    def _on_close(self, conn: pika.SelectConnection, reason: BaseException) -> None:
        self._channel = None
        self._fail_unconfirmed(ConnectionLost(f"connection lost before confirm: {reason}"))
        for consumer in self._consumers:
            consumer.channel = None
            consumer.outstanding.clear()
        if not self._closing:
            log.warning("RabbitMQ connection lost (%s); reconnecting", reason)
            self._ready.clear()
        conn.ioloop.stop()

    def _on_publish_channel(self, channel: Channel) -> None:
        self._confirm_on(channel)
        self._replay(list(self._declared.values()), self._after_replay)

    def _replay(
        self,
        steps: list[Callable[[Channel, Callable[[Any], None]], None]],
        done: Callable[[], None],
    ) -> None:
        if not steps or self._channel is None:
            done()
            return
        steps[0](self._channel, lambda _frame: self._replay(steps[1:], done))

    def _after_replay(self) -> None:
        for consumer in self._consumers:
            if not consumer.cancelled:
                self._open_consumer(consumer)
        self._attempt = 0
        self._ready.set()
        self._run_pending()

    def _run_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for call in pending:
            call()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        self._channel = None
        self._fail_unconfirmed(BrokerError(f"publishing channel closed: {reason}"))
        conn = self._conn
        if conn is not None and conn.is_open and not self._closing:
            conn.channel(on_open_callback=self._reopened_publish_channel)

    def _reopened_publish_channel(self, channel: Channel) -> None:
        self._confirm_on(channel)
        self._run_pending()

    def _call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread once a connection is up, after the calls made before.

        Calls made close together share one wake-up of the loop: a publisher sending
        thousands of messages a second costs the loop one wake-up per burst, not per message.
        """
        with self._lock:
            conn = self._conn
            # Calls wait while there is no connection, or while a refused request's closed
            # channel is being replaced.
            if conn is None or not self._ready.is_set() or self._channel is None:
                self._pending.append(fn)
                return
            self._queued.append(fn)
            if self._wakeup_scheduled:
                return
            self._wakeup_scheduled = True
        try:
            conn.ioloop.add_callback_threadsafe(self._run_queued)
        except Exception:  # the loop is shutting down; the next connection runs them
            with self._lock:
                self._keep_queued_for_next_connection()

    def _keep_queued_for_next_connection(self) -> None:
        """Calls queued for a wake-up of the loop that never came wait for the next
        connection, ahead of any made since (the lock is held)."""
        self._pending[:0], self._queued = self._queued, []
        self._wakeup_scheduled = False

    def _run_queued(self) -> None:
        with self._lock:
            calls, self._queued = self._queued, []
            self._wakeup_scheduled = False
        for call in calls:
            call()

    def _call_and_wait(self, fn: Callable[[Future[Any]], None], timeout: float = 30.0) -> Any:
        if self._closing:
            raise ConnectionLost("the connection is closed")
        future: Future[Any] = Future()

        def run() -> None:
            try:
                fn(future)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)

        self._call(run)
        try:
            return future.result(timeout)
        except TimeoutError:
            raise BrokerUnavailable(f"RabbitMQ did not answer within {timeout:.0f} s") from None

    # -- declarations --------------------------------------------------------------------------

    def _declare(self, key: str, step: Callable[[Channel, Callable[[Any], None]], None]) -> None:
        def run(future: Future[Any]) -> None:
            channel = self._channel
            if channel is None:
                raise ConnectionLost("no channel")

            def ok(frame: Any) -> None:
                self._declared[key] = step
                future.set_result(None)

            self._fail_on_close(channel, future, key)
            step(channel, ok)

        self._call_and_wait(run)

    def declare_queue(self, name: str, *, exclusive: bool = False) -> None:
        def step(channel: Channel, done: Callable[[Any], None]) -> None:
            if exclusive:
                channel.queue_declare(name, exclusive=True, auto_delete=True, callback=done)
            else:
                channel.queue_declare(name, durable=True, arguments=QUORUM_ARGS, callback=done)

        self._declare(f"queue {name}", step)

    def declare_fanout(self, exchange: str) -> None:
        def step(channel: Channel, done: Callable[[Any], None]) -> None:
            channel.exchange_declare(exchange, exchange_type="fanout", durable=True, callback=done)

        self._declare(f"exchange {exchange}", step)

    def bind(self, queue: str, exchange: str) -> None:
        def step(channel: Channel, done: Callable[[Any], None]) -> None:
            channel.queue_bind(queue, exchange, callback=done)

        self._declare(f"binding {queue}<-{exchange}", step)

    @staticmethod
    def _fail_on_close(channel: Channel, future: Future[Any], what: str) -> None:
        """A refused request closes the channel; the caller hears why at once."""

        def closed(_channel: Channel, reason: BaseException) -> None:
            if not future.done():
                future.set_exception(BrokerError(f"{what}: {reason}"))

        channel.add_on_close_callback(closed)

    def queue_depth(self, queue: str) -> tuple[int, int]:
        def run(future: Future[Any]) -> None:
            if self._channel is None:
                raise ConnectionLost("no channel")
            self._fail_on_close(self._channel, future, f"queue {queue}")
            self._channel.queue_declare(
                queue,
                passive=True,
                callback=lambda f: future.set_result(
                    (f.method.message_count, f.method.consumer_count)
                ),
            )

        result: tuple[int, int] = self._call_and_wait(run)
        return result

    def delete_queue(self, queue: str) -> None:
        def run(future: Future[Any]) -> None:
            if self._channel is None:
                raise ConnectionLost("no channel")
            self._channel.queue_delete(queue, callback=lambda f: future.set_result(None))

        self._declared.pop(f"queue {queue}", None)
        self._call_and_wait(run)

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closing:
            return

        def shut() -> None:
            self._flush_settlements()
            self._closing = True
            conn = self._conn
            if conn is not None and conn.is_open:
                conn.close()
            elif conn is not None:
                conn.ioloop.stop()

        if self._conn is not None and self._ready.is_set():
            self._call(shut)
        else:
            self._closing = True
            conn = self._conn
            if conn is not None:
                conn.ioloop.add_callback_threadsafe(conn.ioloop.stop)
        self._thread.join(10)
