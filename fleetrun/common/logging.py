"""structlog set up once per process: JSON lines in daemons, readable lines in a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


class _PikaNoise(logging.Filter):
    """pika logs every connection step at INFO and expected disconnects at ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "connection_workflow" not in record.name


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog and the standard library's logging for this process."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_PikaNoise())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.WARNING)


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("fleetrun").bind(**bound)
