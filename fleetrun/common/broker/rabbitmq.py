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
retry.
"""

from __future__ import annotations

import functools
import itertools
import logging
import queue as stdqueue
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from fleetrun.common.broker.base import Connection, Consumer, Delivery, TlsFiles
from fleetrun.common.errors import BrokerError, BrokerUnavailable, ConnectionLost, Unroutable

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT = 15  # seconds; a hung or cut-off peer is noticed after 2-3 of these
CONNECT_TIMEOUT = 15.0
_QUORUM_ARGS = {
    "x-queue-type": "quorum",
    # Tries are counted by fleetrun (see Delivery.prior_returns); this limit is only the
    # backstop that 4.x would otherwise set to 20 by default.
    "x-delivery-limit": 1000,
}


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _describe(error: BaseException) -> str:
    """pika's connection errors often print as nothing; say what actually failed."""
    for _ in range(5):  # AMQPConnectionError(WorkflowFailed([ConnectorError(exception)]))
        inner = getattr(error, "exceptions", None) or [
            a
            for a in (*error.args, getattr(error, "exception", None))
            if isinstance(a, BaseException)
        ]
        if not inner:
            break
        error = inner[-1]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _parameters(url: str, name: str, tls: TlsFiles | None = None) -> pika.URLParameters:
    params = pika.URLParameters(url)
    if tls is not None and url.startswith("amqps://"):
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        params.ssl_options = pika.SSLOptions(context, server_hostname=urlsplit(url).hostname)
    if "heartbeat" not in (urlsplit(url).query or ""):
        params.heartbeat = DEFAULT_HEARTBEAT
    params.client_properties = {"connection_name": name}
    params.connection_attempts = 1
    params.socket_timeout = 5
    return params


class _RabbitConsumer(Consumer):
    def __init__(self, owner: RabbitConnection, queue: str, prefetch: int) -> None:
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


class RabbitConnection(Connection):
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
        self._seq = 0
        self._unconfirmed: dict[int, Future[None]] = {}
        self._returned: set[str] = set()
        self._declared: dict[str, Callable[[Channel, Callable[[Any], None]], None]] = {}
        self._consumers: list[_RabbitConsumer] = []
        self._to_settle: list[tuple[_RabbitConsumer, Delivery, bool]] = []
        self._settle_scheduled = False
        self._attempt = 0
        self._thread = threading.Thread(target=self._run, name=f"pika-{name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(CONNECT_TIMEOUT) or self._fatal is not None:
            self._closing = True
            reason = (
                _describe(self._fatal)
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
                    _parameters(url, self._name, self._tls),
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
            self._conn = None
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
        with self._lock:
            unconfirmed, self._unconfirmed = self._unconfirmed, {}
            self._returned.clear()
        for future in unconfirmed.values():
            if not future.done():
                future.set_exception(ConnectionLost(f"connection lost before confirm: {reason}"))
        for consumer in self._consumers:
            consumer.channel = None
            consumer.outstanding.clear()
        if not self._closing:
            log.warning("RabbitMQ connection lost (%s); reconnecting", reason)
            self._ready.clear()
        conn.ioloop.stop()

    def _on_publish_channel(self, channel: Channel) -> None:
        self._channel = channel
        self._seq = 0
        channel.confirm_delivery(self._on_confirm)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_close_callback(self._on_channel_closed)
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
        with self._lock:
            unconfirmed, self._unconfirmed = self._unconfirmed, {}
        for future in unconfirmed.values():
            if not future.done():
                future.set_exception(BrokerError(f"publishing channel closed: {reason}"))
        conn = self._conn
        if conn is not None and conn.is_open and not self._closing:
            conn.channel(on_open_callback=self._reopened_publish_channel)

    def _reopened_publish_channel(self, channel: Channel) -> None:
        self._channel = channel
        self._seq = 0
        channel.confirm_delivery(self._on_confirm)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_close_callback(self._on_channel_closed)
        self._run_pending()

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

    def _call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread once a connection is up."""
        with self._lock:
            conn = self._conn
            # Calls wait while there is no connection, or while a refused request's closed
            # channel is being replaced.
            if conn is None or not self._ready.is_set() or self._channel is None:
                self._pending.append(fn)
                return
        try:
            conn.ioloop.add_callback_threadsafe(fn)
        except Exception:  # the loop is shutting down; the next connection runs it
            with self._lock:
                self._pending.append(fn)

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
                channel.queue_declare(name, durable=True, arguments=_QUORUM_ARGS, callback=done)

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

    # -- publishing ----------------------------------------------------------------------------

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

    # -- consuming -----------------------------------------------------------------------------

    def consume(self, queue: str, prefetch: int) -> Consumer:
        consumer = _RabbitConsumer(self, queue, max(1, prefetch))

        def run(future: Future[Any]) -> None:
            self._consumers.append(consumer)
            self._open_consumer(consumer, future)

        self._call_and_wait(run)
        return consumer

    def _open_consumer(self, consumer: _RabbitConsumer, started: Future[Any] | None = None) -> None:
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

            def on_message(ch: Channel, method: Any, props: BasicProperties, body: bytes) -> None:
                if ch is not consumer.channel:
                    return
                consumer.outstanding.append(method.delivery_tag)
                consumer.inbox.put(
                    Delivery(body, props.headers or {}, method.redelivered, method.delivery_tag, ch)
                )

            def on_qos(_frame: Any) -> None:
                consumer.tag = channel.basic_consume(
                    consumer.queue,
                    on_message,
                    callback=lambda _f: started.set_result(None) if started else None,
                )

            channel.basic_qos(prefetch_count=consumer.prefetch, callback=on_qos)

        conn.channel(on_open_callback=on_channel)

    def _on_consumer_closed(
        self, consumer: _RabbitConsumer, channel: Channel, reason: BaseException
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

    def _on_broker_cancel(self, consumer: _RabbitConsumer, channel: Channel) -> None:
        # 4.3+ cancels a timed-out consumer instead of closing its channel.
        current = consumer.channel
        if current is not None and current is channel and current.is_open:
            current.close()

    def _cancel_on_loop(self, consumer: _RabbitConsumer) -> None:
        channel = consumer.channel
        if channel is not None and channel.is_open and consumer.tag:
            channel.basic_cancel(consumer.tag)

    def _settle(self, consumer: _RabbitConsumer, delivery: Delivery, requeue: bool) -> None:
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
        by_consumer: dict[int, tuple[_RabbitConsumer, dict[int, bool]]] = {}
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
