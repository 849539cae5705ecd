"""One contract for every broker implementation: the embedded broker must behave like RabbitMQ.

Each test runs twice, against ``EmbeddedBroker`` and against RabbitMQ (skipped locally when no
broker answers, a failure under ``CI=true``). A test talks to its broker only through the
:class:`~fleetrun.common.broker.Connection` interface; RabbitMQ is asynchronous, so anything a
broker settles in the background (acks, cancels, requeues) is checked with :func:`eventually`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pika
import pytest

from fleetrun.common.broker import Connection, Consumer, Delivery, connect
from fleetrun.common.broker.embedded import EmbeddedBroker
from fleetrun.common.errors import BrokerError, BrokerUnavailable

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0  # seconds a test waits for something that must happen
QUIET = 0.5  # seconds a test waits to be sure something does not happen


def eventually(check: Callable[[], Any], expected: Any, timeout: float = WAIT) -> None:
    """Assert that ``check()`` returns ``expected`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    value = check()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        value = check()
    assert value == expected


def get(consumer: Consumer, timeout: float = WAIT) -> Delivery:
    """The next delivery, which must arrive within ``timeout`` seconds."""
    delivery = consumer.get(timeout)
    assert delivery is not None, f"no delivery within {timeout} s"
    return delivery


@dataclass
class BrokerUnderTest:
    """New client connections to one broker, and unique names that are cleaned up after."""

    kind: str
    open: Callable[[str], Connection]
    connections: list[Connection] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    def connect(self, name: str = "client") -> Connection:
        conn = self.open(f"contract-{name}")
        self.connections.append(conn)
        return conn

    def queue(self, conn: Connection, *, exclusive: bool = False) -> str:
        """Declare a queue with a name no other test uses."""
        name = f"contract-{uuid.uuid4().hex[:12]}"
        self.queues.append(name)
        conn.declare_queue(name, exclusive=exclusive)
        return name

    def exchange(self, conn: Connection) -> str:
        name = f"contract-x-{uuid.uuid4().hex[:12]}"
        self.exchanges.append(name)
        conn.declare_fanout(name)
        return name


@pytest.fixture(
    params=["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)],
)
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerUnderTest]:
    """A broker of each kind; every ``connect()`` is a new client connection to it."""
    url = ""
    if request.param == "embedded":
        embedded = EmbeddedBroker()
        under_test = BrokerUnderTest("embedded", lambda _name: embedded.connect())
    else:
        url = request.getfixturevalue("rabbitmq_url")
        under_test = BrokerUnderTest("rabbitmq", lambda name: connect(url, name=name))
    yield under_test
    for conn in under_test.connections:
        conn.close()
    cleaner = under_test.connect("cleanup")
    for name in under_test.queues:
        cleaner.delete_queue(name)
    cleaner.close()
    if url and under_test.exchanges:  # the interface has no exchange deletion
        blocking = pika.BlockingConnection(pika.URLParameters(url))
        channel = blocking.channel()
        for name in under_test.exchanges:
            channel.exchange_delete(name)
        blocking.close()


def returns_within(seconds: float, call: Callable[[], Any]) -> BaseException | None:
    """Run ``call`` on a side thread; fail unless it ends within ``seconds``; its error, if any.

    A call that hangs is left behind on its daemon thread, so a hanging implementation fails
    the test in ``seconds`` instead of stalling it.
    """
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test below
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert outcome, f"the call did not return within {seconds} s"
    assert time.monotonic() - started < seconds
    return outcome[0]


def publish_all(conn: Connection, queue: str, bodies: list[bytes]) -> None:
    futures = [conn.publish(queue, body) for body in bodies]
    for future in futures:
        future.result(WAIT)


def test_a_publish_is_confirmed_and_its_body_and_headers_reach_the_consumer(
    broker: BrokerUnderTest,
) -> None:
    conn = broker.connect()
    queue = broker.queue(conn)
    future = conn.publish(queue, b"hello", headers={"job": "j1", "n": 3})
    assert future.result(WAIT) is None
    consumer = conn.consume(queue, prefetch=1)
    delivery = get(consumer)
    assert delivery.body == b"hello"
    assert delivery.headers["job"] == "j1"
    assert delivery.headers["n"] == 3
    assert delivery.redelivered is False
    assert delivery.prior_returns() == 0
    consumer.ack(delivery)


def test_an_acked_message_is_gone_from_the_queue(broker: BrokerUnderTest) -> None:
    publisher = broker.connect("publisher")
    worker = broker.connect("worker")
    queue = broker.queue(publisher)
    publish_all(publisher, queue, [b"one"])
    consumer = worker.consume(queue, prefetch=1)
    consumer.ack(get(consumer))
    eventually(lambda: publisher.queue_depth(queue), (0, 1))
    worker.close()  # an ack that never reached the broker would put the message back now
    eventually(lambda: publisher.queue_depth(queue), (0, 0))
    assert publisher.consume(queue, prefetch=1).get(QUIET) is None


def test_one_consumer_receives_messages_in_publish_order(broker: BrokerUnderTest) -> None:
    conn = broker.connect()
    queue = broker.queue(conn)
    bodies = [f"m{i:03d}".encode() for i in range(50)]
    publish_all(conn, queue, bodies)
    consumer = conn.consume(queue, prefetch=10)
    received = []
    for _ in bodies:
        delivery = get(consumer)
        received.append(delivery.body)
        consumer.ack(delivery)
    assert received == bodies


def test_prefetch_bounds_the_unacked_deliveries_a_consumer_holds(
    broker: BrokerUnderTest,
) -> None:
    publisher = broker.connect("publisher")
    worker = broker.connect("worker")
    queue = broker.queue(publisher)
    publish_all(publisher, queue, [f"m{i}".encode() for i in range(5)])
    consumer = worker.consume(queue, prefetch=2)
    first, second = get(consumer), get(consumer)
    assert consumer.get(QUIET) is None
    eventually(lambda: publisher.queue_depth(queue), (3, 1))
    consumer.ack(first)
    third = get(consumer)
    assert [first.body, second.body, third.body] == [b"m0", b"m1", b"m2"]
    assert consumer.get(QUIET) is None
    eventually(lambda: publisher.queue_depth(queue), (2, 1))


def test_a_new_prefetch_applies_at_once_besides_what_the_consumer_holds(
    broker: BrokerUnderTest,
) -> None:
    publisher = broker.connect("publisher")
    worker = broker.connect("worker")
    queue = broker.queue(publisher)
    bodies = [f"m{i}".encode() for i in range(10)]
    publish_all(publisher, queue, bodies)
    consumer = worker.consume(queue, prefetch=2)
    held = [get(consumer), get(consumer)]
    assert consumer.get(QUIET) is None

    consumer.set_prefetch(5)  # five more, besides the two held, without any ack
    held += [get(consumer) for _ in range(5)]
    assert consumer.get(QUIET) is None

    consumer.set_prefetch(1)  # one more; acking what was held before frees nothing
    held.append(get(consumer))
    assert consumer.get(QUIET) is None
    for delivery in held[:7]:
        consumer.ack(delivery)
    assert consumer.get(QUIET) is None
    consumer.ack(held[7])
    held.append(get(consumer))
    assert consumer.get(QUIET) is None

    assert [d.body for d in held] == bodies[:9]
    assert not any(d.redelivered for d in held)
    consumer.ack(held[8])
    worker.close()  # every ack held, the replaced consumer's too: nothing comes back
    eventually(lambda: publisher.queue_depth(queue), (1, 0))


def test_a_requeued_message_is_handed_out_again_as_redelivered(broker: BrokerUnderTest) -> None:
    conn = broker.connect()
    queue = broker.queue(conn)
    publish_all(conn, queue, [b"again"])
    consumer = conn.consume(queue, prefetch=1)
    first = get(consumer)
    consumer.requeue(first)
    second = get(consumer)
    assert second.body == b"again"
    assert second.redelivered is True
    assert second.prior_returns() == 1
    consumer.ack(second)
    assert consumer.get(QUIET) is None


def test_a_message_whose_holder_dies_goes_to_another_consumer_with_its_returns_counted(
    broker: BrokerUnderTest,
) -> None:
    publisher = broker.connect("publisher")
    queue = broker.queue(publisher)
    publish_all(publisher, queue, [b"batch-7"])

    first_holder = broker.connect("holder-1")
    first = get(first_holder.consume(queue, prefetch=1))
    assert (first.redelivered, first.prior_returns()) == (False, 0)
    first_holder.close()

    second_holder = broker.connect("holder-2")
    second = get(second_holder.consume(queue, prefetch=1))
    assert second.body == b"batch-7"
    assert second.redelivered is True
    assert second.prior_returns() == 1
    second_holder.close()

    survivor = broker.connect("holder-3")
    consumer = survivor.consume(queue, prefetch=1)
    third = get(consumer)
    assert third.body == b"batch-7"
    assert third.redelivered is True
    assert third.prior_returns() == 2
    consumer.ack(third)


def test_an_ack_for_a_delivery_of_a_closed_connection_is_ignored(
    broker: BrokerUnderTest,
) -> None:
    publisher = broker.connect("publisher")
    queue = broker.queue(publisher)
    publish_all(publisher, queue, [b"held"])
    lost = broker.connect("lost")
    lost_consumer = lost.consume(queue, prefetch=1)
    stale = get(lost_consumer)
    lost.close()
    lost_consumer.ack(stale)  # no exception, and no effect on the message
    lost_consumer.requeue(stale)

    other = broker.connect("other")
    consumer = other.consume(queue, prefetch=1)
    again = get(consumer)
    assert (again.body, again.redelivered) == (b"held", True)
    consumer.ack(again)
    eventually(lambda: publisher.queue_depth(queue), (0, 1))


def test_a_publish_to_a_missing_queue_fails_its_future(broker: BrokerUnderTest) -> None:
    conn = broker.connect()
    missing = f"contract-missing-{uuid.uuid4().hex[:12]}"
    future = conn.publish(missing, b"lost")
    with pytest.raises(BrokerError):
        future.result(WAIT)
    # The connection stays usable after an unroutable message.
    queue = broker.queue(conn)
    assert conn.publish(queue, b"fine").result(WAIT) is None


def test_a_fanout_broadcast_reaches_every_bound_queue(broker: BrokerUnderTest) -> None:
    publisher = broker.connect("publisher")
    exchange = broker.exchange(publisher)
    consumers = []
    for name in ("worker-a", "worker-b"):
        conn = broker.connect(name)
        conn.declare_fanout(exchange)
        queue = broker.queue(conn, exclusive=True)
        conn.bind(queue, exchange)
        consumers.append(conn.consume(queue, prefetch=5))
    future = publisher.publish("", b"stop job-1", exchange=exchange, headers={"kind": "stop"})
    assert future.result(WAIT) is None
    for consumer in consumers:
        delivery = get(consumer)
        assert delivery.body == b"stop job-1"
        assert delivery.headers["kind"] == "stop"
        consumer.ack(delivery)
        assert consumer.get(QUIET) is None


def test_an_exclusive_queue_disappears_when_its_connection_closes(
    broker: BrokerUnderTest,
) -> None:
    owner = broker.connect("owner")
    other = broker.connect("other")
    queue = broker.queue(owner, exclusive=True)
    assert other.publish(queue, b"while it lives").result(WAIT) is None
    owner.close()

    def routable() -> bool:
        try:
            other.publish(queue, b"after").result(WAIT)
        except BrokerError:
            return False
        return True

    eventually(routable, False)


def test_queue_depth_counts_ready_messages_and_consumers(broker: BrokerUnderTest) -> None:
    publisher = broker.connect("publisher")
    queue = broker.queue(publisher)
    assert publisher.queue_depth(queue) == (0, 0)
    publish_all(publisher, queue, [b"a", b"b", b"c"])
    assert publisher.queue_depth(queue) == (3, 0)
    worker_a = broker.connect("worker-a")
    worker_b = broker.connect("worker-b")
    held_a = get(worker_a.consume(queue, prefetch=1))
    held_b = get(worker_b.consume(queue, prefetch=1))
    assert {held_a.body, held_b.body} == {b"a", b"b"}
    eventually(lambda: publisher.queue_depth(queue), (1, 2))  # unacked ones are not ready
    worker_b.close()
    # b's message went back; worker_a is full (prefetch 1), so it waits in the queue.
    eventually(lambda: publisher.queue_depth(queue), (2, 1))
    assert held_a.body == b"a"


@pytest.mark.slow
def test_two_thousand_messages_with_batched_acks_all_arrive_exactly_once(
    broker: BrokerUnderTest,
) -> None:
    publisher = broker.connect("publisher")
    queue = broker.queue(publisher)
    bodies = [f"{i:05d}".encode() for i in range(2000)]
    publish_all(publisher, queue, bodies)
    workers = [broker.connect(f"worker-{i}") for i in range(2)]
    consumers = [w.consume(queue, prefetch=50) for w in workers]
    received: list[bytes] = []
    held: list[tuple[Consumer, Delivery]] = []
    deadline = time.monotonic() + 30
    while len(received) < len(bodies) and time.monotonic() < deadline:
        for consumer in consumers:
            delivery = consumer.get(0.01)
            if delivery is None:
                continue
            received.append(delivery.body)
            held.append((consumer, delivery))
        if len(held) >= 20 or len(received) == len(bodies):  # ack in runs, not one by one
            for consumer, delivery in held:
                consumer.ack(delivery)
            held.clear()
    assert sorted(received) == bodies
    assert len(received) == len(set(received))
    for worker in workers:
        worker.close()  # anything not acked would be handed back now
    eventually(lambda: publisher.queue_depth(queue), (0, 0))
    assert publisher.consume(queue, prefetch=10).get(QUIET) is None


def test_a_cancelled_consumer_gets_nothing_new_and_can_still_ack_what_it_holds(
    broker: BrokerUnderTest,
) -> None:
    publisher = broker.connect("publisher")
    worker = broker.connect("worker")
    queue = broker.queue(publisher)
    publish_all(publisher, queue, [b"m0", b"m1", b"m2", b"m3"])
    consumer = worker.consume(queue, prefetch=2)
    first, second = get(consumer), get(consumer)
    consumer.cancel()
    # Cancelling hands nothing back (RabbitMQ's quorum queues keep counting a cancelled
    # consumer until what it holds is settled, so only the ready count is checked here).
    eventually(lambda: publisher.queue_depth(queue)[0], 2)
    assert consumer.get(QUIET) is None
    consumer.ack(first)
    consumer.ack(second)
    eventually(lambda: publisher.queue_depth(queue), (2, 0))
    assert consumer.get(QUIET) is None
    worker.close()  # the acks held: nothing comes back
    eventually(lambda: publisher.queue_depth(queue), (2, 0))
    remaining = publisher.consume(queue, prefetch=5)
    bodies = [get(remaining).body, get(remaining).body]
    assert bodies == [b"m2", b"m3"]
    assert remaining.get(QUIET) is None


def test_acking_a_delivery_twice_leaves_the_other_held_deliveries_alone(
    broker: BrokerUnderTest,
) -> None:
    publisher = broker.connect("publisher")
    worker = broker.connect("worker")
    queue = broker.queue(publisher)
    publish_all(publisher, queue, [b"m0", b"m1", b"m2"])
    consumer = worker.consume(queue, prefetch=2)
    first, second = get(consumer), get(consumer)
    consumer.ack(first)
    time.sleep(0.2)  # let the first ack reach the broker on its own
    consumer.ack(first)
    third = get(consumer)
    assert (third.body, third.redelivered) == (b"m2", False)
    # The second delivery is still held: it must not come back as a redelivery.
    assert consumer.get(QUIET) is None
    consumer.ack(second)
    consumer.ack(third)
    worker.close()
    eventually(lambda: publisher.queue_depth(queue), (0, 0))


def test_asking_the_depth_of_a_missing_queue_fails_at_once_as_a_broker_error(
    broker: BrokerUnderTest,
) -> None:
    conn = broker.connect()
    missing = f"contract-missing-{uuid.uuid4().hex[:12]}"
    error = returns_within(WAIT, lambda: conn.queue_depth(missing))
    assert isinstance(error, BrokerError)
    assert not isinstance(error, BrokerUnavailable)  # a missing queue is not worth retrying
    queue = broker.queue(conn)  # the connection is still usable
    assert conn.queue_depth(queue) == (0, 0)


def test_consuming_a_missing_queue_fails_at_once_as_a_broker_error(
    broker: BrokerUnderTest,
) -> None:
    conn = broker.connect()
    missing = f"contract-missing-{uuid.uuid4().hex[:12]}"
    error = returns_within(WAIT, lambda: conn.consume(missing, prefetch=1))
    assert isinstance(error, BrokerError)
    assert not isinstance(error, BrokerUnavailable)
    queue = broker.queue(conn)
    publish_all(conn, queue, [b"fine"])
    consumer = conn.consume(queue, prefetch=1)
    consumer.ack(get(consumer))
