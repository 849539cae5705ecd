"""The result outbox on each broker: every result arrives once, several to a message when
they come faster than confirms, and each result's callback hears how its message fared."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from fleetrun.common.broker import Connection, connect
from fleetrun.common.broker.embedded import EmbeddedBroker, EmbeddedConnection
from fleetrun.common.errors import Unroutable
from fleetrun.common.messages import BatchResult, results_from_bytes
from fleetrun.worker.result_outbox import ResultOutbox

WAIT = 30.0


@pytest.fixture(params=["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def conn(request: pytest.FixtureRequest) -> Iterator[Connection]:
    if request.param == "embedded":
        connection: Connection = EmbeddedBroker().connect()
    else:
        connection = connect(request.getfixturevalue("rabbitmq_url"), name="outbox-test")
    yield connection
    connection.close()


def result(index: int) -> bytes:
    return BatchResult(
        job_id="job",
        run_id="run",
        index=index,
        status="succeeded",
        items=1,
        succeeded=1,
        failed=0,
        attempt=1,
    ).to_bytes()


def test_every_result_arrives_once_and_every_callback_hears_it_was_confirmed(
    conn: Connection,
) -> None:
    queue = f"outbox-{uuid.uuid4().hex[:12]}"
    conn.declare_queue(queue)
    outbox = ResultOutbox(conn.publish)
    settled: dict[int, BaseException | None] = {}
    lock = threading.Lock()

    def send(indexes: range) -> None:
        for index in indexes:

            def settle(error: BaseException | None, index: int = index) -> None:
                with lock:
                    settled[index] = error

            outbox.send(queue, result(index), settle)

    threads = [threading.Thread(target=send, args=(range(i, 900, 3),)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outbox.wait_idle(WAIT)

    assert settled == dict.fromkeys(range(900))
    consumer = conn.consume(queue, prefetch=1000)
    indexes, messages = [], 0
    while len(indexes) < 900:
        delivery = consumer.get(WAIT)
        assert delivery is not None, f"only {len(indexes)} of 900 results arrived"
        messages += 1
        indexes += [r.index for r in results_from_bytes(delivery.body)]
        consumer.ack(delivery)
    assert sorted(indexes) == list(range(900))
    assert consumer.get(0.5) is None
    conn.delete_queue(queue)
    if not isinstance(conn, EmbeddedConnection):
        # A RabbitMQ confirm takes a while: the results sent meanwhile share messages. (The
        # embedded broker confirms at once, so results share a message only when another
        # thread sends while one is being settled.)
        assert messages < 300, f"{messages} messages for 900 results sent faster than confirms"


def test_results_for_a_queue_that_is_gone_are_settled_as_unroutable(conn: Connection) -> None:
    outbox = ResultOutbox(conn.publish)
    errors: list[BaseException | None] = []
    for index in range(50):
        outbox.send(f"outbox-gone-{uuid.uuid4().hex[:8]}", result(index), errors.append)
    assert outbox.wait_idle(WAIT)
    assert len(errors) == 50
    assert all(isinstance(error, Unroutable) for error in errors)
