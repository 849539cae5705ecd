"""How fleetrun's pika connections are set up: parameters, TLS, and errors people can read."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit, urlunsplit

import pika

from fleetrun.common.broker.base import TlsFiles

DEFAULT_HEARTBEAT = 15  # seconds; a hung or cut-off peer is noticed after 2-3 of these
CONNECT_TIMEOUT = 15.0
QUORUM_ARGS = {
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


def describe(error: BaseException) -> str:
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


def parameters(url: str, name: str, tls: TlsFiles | None = None) -> pika.URLParameters:
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
