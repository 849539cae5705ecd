"""The daemons: ``fleetrun worker`` and ``fleetrun coordinator``.

SIGTERM (or Ctrl-C) asks for a graceful stop: a worker drains (takes no new batch, finishes
the ones it runs, hands back the others) and a coordinator stops taking jobs and leaves its
running ones to be resumed. A second signal stops at once. Signal handlers only set flags.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from fleetrun.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED_NOW,
    add_broker_options,
    add_config_option,
)
from fleetrun.common.broker import Connection, connect
from fleetrun.common.errors import FleetrunError, SpecError
from fleetrun.common.gc_pauses import fewer_pauses
from fleetrun.common.logging import configure
from fleetrun.common.messages import Topology
from fleetrun.common.settings import CoordinatorDaemonSettings, DaemonSettings, WorkerDaemonSettings

WORKER_CONFIG = Path("/etc/fleetrun/worker.toml")
COORDINATOR_CONFIG = Path("/etc/fleetrun/coordinator.toml")


def add_commands(commands: Any) -> None:
    worker = commands.add_parser(
        "worker",
        help="Serve every job sent to a RabbitMQ broker until stopped.",
        description="Serve every job sent to a RabbitMQ broker until stopped. SIGTERM or "
        "Ctrl-C drains (no new batches; the held ones finish or go back; exit 0); a second "
        "signal stops at once (exit 130). Settings: flags, then FLEETRUN_* variables, .env, "
        f"then {WORKER_CONFIG}.",
    )
    add_broker_options(worker)
    add_config_option(worker, WORKER_CONFIG)
    worker.add_argument(
        "--processes", type=int, help="runner processes (default: the number of CPUs)"
    )
    worker.add_argument(
        "--prefetch",
        type=int,
        help="batches held at once (default: set from the tries' durations, 2-32 per runner)",
    )
    worker.add_argument("--cache-dir", type=Path, help="local cache for code and staged inputs")
    worker.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING"])
    worker.add_argument(
        "--check", action="store_true", help="check the broker and the cache folder, exit 0 or 1"
    )
    worker.set_defaults(handler=cmd_worker)

    coordinator = commands.add_parser(
        "coordinator",
        help="Run the jobs submitted with `fleetrun submit`, several at once.",
        description="Run the jobs submitted with `fleetrun submit`. SIGTERM stops taking jobs; "
        "running ones go back to the queue and resume in the next coordinator. Settings: "
        f"flags, then FLEETRUN_* variables, .env, then {COORDINATOR_CONFIG}.",
    )
    add_broker_options(coordinator)
    add_config_option(coordinator, COORDINATOR_CONFIG)
    coordinator.add_argument("--max-jobs", type=int, help="jobs run at once (default: 4)")
    coordinator.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING"])
    coordinator.add_argument("--check", action="store_true", help="check the broker, exit 0 or 1")
    coordinator.set_defaults(handler=cmd_coordinator)


def _connect(settings: DaemonSettings, role: str) -> Connection:
    if not settings.broker_urls:
        raise SpecError(
            f"fleetrun {role} needs a broker: --broker amqp://user:pass@host:5672/vhost, "
            "FLEETRUN_BROKER, or `broker = ...` in its settings file"
        )
    return connect(settings.broker_urls, f"fleetrun-{role}-{settings.name}", tls=settings.tls)


def _check(settings: DaemonSettings, role: str, extra: Callable[[], None] | None = None) -> int:
    """For health checks: the broker answers (and ``extra`` passes)."""
    try:
        with _connect(settings, role) as conn:
            topology = Topology(settings.namespace)
            conn.declare_queue(topology.batches)
            ready, consumers = conn.queue_depth(topology.batches)
        if extra is not None:
            extra()
    except (FleetrunError, OSError) as exc:
        print(f"check failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"ok: {conn.description} answers; {ready} batches waiting, {consumers} workers")
    return EXIT_OK


def _on_signals(graceful: Callable[[], None], immediate: Callable[[], None]) -> None:
    count = {"n": 0}

    def handle(signum: int, frame: FrameType | None) -> None:
        count["n"] += 1
        if count["n"] == 1:
            graceful()
            return
        try:
            immediate()
        finally:
            os._exit(EXIT_STOPPED_NOW)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def cmd_worker(args: argparse.Namespace) -> int:
    from fleetrun.worker.supervisor import Supervisor, WorkerSettings

    settings: WorkerDaemonSettings = WorkerDaemonSettings.load(
        args.config,
        WORKER_CONFIG,
        broker=args.broker,
        namespace=args.namespace,
        processes=args.processes,
        prefetch=args.prefetch,
        cache_dir=args.cache_dir,
        log_level=args.log_level,
    )
    configure(settings.log_level)

    def cache_is_writable() -> None:
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.cache_dir / f".check-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()

    if args.check:
        return _check(settings, "worker", cache_is_writable)
    conn = _connect(settings, "worker")
    supervisor = Supervisor(
        conn,
        WorkerSettings(
            processes=settings.processes,
            prefetch=settings.prefetch,
            cache_dir=settings.cache_dir,
            name=settings.name,
            idle_runner_timeout=settings.idle_runner_timeout,
            gpu_count=settings.gpu_count,
            namespace=settings.namespace,
            drain_timeout=settings.drain_timeout,
        ),
    )
    _on_signals(supervisor.stop, supervisor.kill_runners)
    try:
        with fewer_pauses():
            return supervisor.run()
    finally:
        conn.close()


def cmd_coordinator(args: argparse.Namespace) -> int:
    from fleetrun.coordinator.daemon import CoordinatorDaemon

    settings: CoordinatorDaemonSettings = CoordinatorDaemonSettings.load(
        args.config,
        COORDINATOR_CONFIG,
        broker=args.broker,
        namespace=args.namespace,
        max_jobs=args.max_jobs,
        log_level=args.log_level,
    )
    configure(settings.log_level)
    if args.check:
        return _check(settings, "coordinator")
    conn = _connect(settings, "coordinator")
    daemon = CoordinatorDaemon(conn, Topology(settings.namespace), settings.name, settings.max_jobs)
    _on_signals(daemon.stop, lambda: None)
    try:
        with fewer_pauses():
            return daemon.run()
    finally:
        conn.close()
