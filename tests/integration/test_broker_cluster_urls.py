"""A cluster's URL list: a node that does not answer is skipped, and the others are tried."""

from __future__ import annotations

import socket
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from fleetrun.common.broker import connect
from fleetrun.common.errors import BrokerUnavailable


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _at_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.mark.timeout(60)
def test_a_dead_node_in_the_url_list_is_skipped(rabbitmq_url: str) -> None:
    dead = _at_port(rabbitmq_url, _dead_port())
    # Comma-separated, as FLEETRUN_BROKER takes it; the list is shuffled, so try a few times.
    for _ in range(4):
        with connect(f"{dead},{rabbitmq_url}", name="cluster-test") as conn:
            queue = f"cluster-test-{uuid.uuid4().hex[:8]}"
            conn.declare_queue(queue)
            conn.publish(queue, b"hello").result(10)
            assert conn.queue_depth(queue) == (1, 0)
            conn.delete_queue(queue)


@pytest.mark.timeout(60)
def test_a_list_of_dead_nodes_says_which_and_how_to_fix_it(rabbitmq_url: str) -> None:
    dead = [_at_port(rabbitmq_url, _dead_port()) for _ in range(2)]
    with pytest.raises(BrokerUnavailable) as error:
        connect(dead, name="cluster-test")
    message = str(error.value)
    assert "cannot connect to RabbitMQ" in message
    assert "Connection refused" in message
    assert "guest:***@" in message  # the password is never shown
