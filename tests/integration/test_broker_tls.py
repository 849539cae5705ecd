"""amqps:// with a CA file: the connection verifies the broker's certificate.

The broker here listens without TLS, so the test puts a TLS terminator of its own in front
of it (a self-signed CA and a server certificate for ``localhost``, made with openssl).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from services import unavailable

from fleetrun.common.broker import connect
from fleetrun.common.broker.base import TlsFiles
from fleetrun.common.errors import BrokerUnavailable


def _make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    if shutil.which("openssl") is None:
        unavailable("openssl is not installed (Debian package openssl)")
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem")
    )
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "1",
        "-subj",
        "/CN=fleetrun test CA",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=localhost",
    )
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "1",
        "-extfile",
        str(ext),
    )
    return ca, cert, key


@pytest.fixture
def tls_front(tmp_path: Path, rabbitmq_url: str) -> Iterator[tuple[int, Path]]:
    """A TLS listener on a free port that forwards to the broker; yields (port, CA file)."""
    ca, cert, key = _make_certificates(tmp_path)
    target = urlsplit(rabbitmq_url)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    loop = asyncio.new_event_loop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection(target.hostname, target.port or 5672)
        await asyncio.gather(pipe(client_r, broker_w), pipe(broker_r, client_w))

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", port, ssl=context))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port, ca
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _amqps(rabbitmq_url: str, port: int) -> str:
    parts = urlsplit(rabbitmq_url)
    credentials = parts.netloc.rsplit("@", 1)[0]
    return f"amqps://{credentials}@localhost:{port}{parts.path or '/%2F'}"


@pytest.mark.timeout(60)
def test_amqps_with_the_ca_file_reaches_the_broker(
    tls_front: tuple[int, Path], rabbitmq_url: str
) -> None:
    port, ca = tls_front
    with connect(_amqps(rabbitmq_url, port), name="tls-test", tls=TlsFiles(ca_file=ca)) as conn:
        queue = f"tls-test-{uuid.uuid4().hex[:8]}"
        conn.declare_queue(queue)
        conn.publish(queue, b"over tls").result(10)
        assert conn.queue_depth(queue) == (1, 0)
        conn.delete_queue(queue)


@pytest.mark.timeout(60)
def test_amqps_refuses_a_certificate_it_cannot_verify(
    tls_front: tuple[int, Path], rabbitmq_url: str
) -> None:
    port, _ca = tls_front
    # No CA file: the system's CAs do not know the test CA, so the handshake must fail.
    with pytest.raises(BrokerUnavailable, match="cannot connect"):
        connect(_amqps(rabbitmq_url, port), name="tls-test", tls=TlsFiles())
