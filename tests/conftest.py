"""Fixtures shared by every test suite."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pika
import pika.exceptions
import pytest
from services import unavailable

pytest_plugins = ["emulators"]  # Azurite and moto: tests/emulators.py

DEFAULT_TEST_BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The root of the fleetrun repository."""
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def examples_dir(repo_root: Path) -> Path:
    """The `examples/` folder, whose files the docs and tests use as they are."""
    return repo_root / "examples"


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The URL of a RabbitMQ broker that answers, from `FLEETRUN_TEST_BROKER`.

    Skips the test when the broker does not answer, except under `CI=true`, where the
    RabbitMQ tests must run and a missing broker fails them.
    """
    url = os.environ.get("FLEETRUN_TEST_BROKER", DEFAULT_TEST_BROKER)
    parts = urlsplit(url)
    where = f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}"  # never the password
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 5
    try:
        connection = pika.BlockingConnection(params)
    except (
        pika.exceptions.ProbableAuthenticationError,
        pika.exceptions.ProbableAccessDeniedError,
    ) as exc:
        unavailable(
            f"RabbitMQ on {where} refused the login or the vhost ({type(exc).__name__}): "
            "check the user, password and vhost in FLEETRUN_TEST_BROKER"
        )
    except (pika.exceptions.AMQPError, OSError) as exc:
        unavailable(
            f"RabbitMQ is not answering on {where} ({exc!r}): start it with "
            "`rabbitmq-server -detached`"
        )
    connection.close()
    return url
