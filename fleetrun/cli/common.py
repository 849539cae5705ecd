"""What the command modules share: exit codes, broker options, the client connection."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from fleetrun.common.broker import Connection, connect
from fleetrun.common.errors import SpecError
from fleetrun.common.messages import Topology
from fleetrun.common.settings import DaemonSettings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SPEC = 2
EXIT_STOPPED_NOW = 130


def add_broker_options(command: argparse.ArgumentParser, *, embedded_default: bool = False) -> None:
    default = "$FLEETRUN_BROKER" + (", else the embedded broker" if embedded_default else "")
    command.add_argument("--broker", help=f"RabbitMQ URL(s), comma-separated (default: {default})")
    command.add_argument(
        "--namespace",
        help="prefix of the queue names, to keep fleets on one broker apart "
        "(default: $FLEETRUN_NAMESPACE or fleetrun)",
    )


def add_config_option(command: argparse.ArgumentParser, default: Path) -> None:
    command.add_argument("--config", type=Path, help=f"settings file (default: {default})")


def client_settings(args: argparse.Namespace) -> DaemonSettings:
    """Flags, then FLEETRUN_* and .env: what a command talking to a fleet uses."""
    settings: DaemonSettings = DaemonSettings.load(
        None, None, broker=args.broker, namespace=args.namespace
    )
    return settings


def client_connection(settings: DaemonSettings) -> tuple[Connection, Topology]:
    if not settings.broker_urls:
        raise SpecError(
            "no broker: pass --broker amqp://user:pass@host:5672/vhost or set FLEETRUN_BROKER"
        )
    name = f"fleetrun-cli-{socket.gethostname()}-{os.getpid()}"
    return connect(settings.broker_urls, name, tls=settings.tls), Topology(settings.namespace)
