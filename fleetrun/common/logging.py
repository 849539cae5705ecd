"""structlog set up once per process: JSON lines in daemons, readable lines in a terminal."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


class _PikaNoise(logging.Filter):
    """pika logs every connection step, and each failed attempt at ERROR; fleetrun reports
    connection failures itself, in one sentence with the fix, so those records are dropped."""

    _CONNECTION_LOGGERS = (
        "pika.adapters.utils.connection_workflow",
        "pika.adapters.base_connection",
        "pika.adapters.utils.io_services_utils",
        "pika.adapters.select_connection",
        "pika.connection",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("pika"):
            return True
        return record.levelno >= logging.WARNING and record.name not in self._CONNECTION_LOGGERS


class _FileAndConsole:
    """The last processor when logging to a file: every event to the file, warnings on."""

    def __init__(self, path: str, console_level: int) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's life
        self._console_level = console_level

    def write(self, line: str, level: str) -> None:
        self._file.write(line + "\n")
        if logging.getLevelName(level.upper()) >= self._console_level:
            print(line, file=sys.stderr, flush=True)


def configure(
    level: str = "INFO", *, json: bool | None = None, log_file: str | None = None
) -> None:
    """Configure structlog and the standard library's logging for this process.

    With ``log_file`` every event goes to that file (as JSON lines) and only warnings and
    errors to the console: how runners keep a user's per-item logging out of the terminal.
    """
    import structlog  # here: a runner imports this module before it needs structlog

    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json or log_file
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    if log_file:
        tee = _FileAndConsole(log_file, logging.WARNING)

        def render_and_write(logger: Any, method: str, event: Any) -> Any:
            level_name = str(event.get("level", "info"))
            tee.write(renderer(logger, method, event), level_name)
            raise structlog.DropEvent

        processors.append(render_and_write)
    else:
        processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=factory,
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
    import structlog

    return structlog.get_logger("fleetrun").bind(**bound)
