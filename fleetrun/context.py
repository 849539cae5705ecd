"""What an entry script may ask about the batch it is running.

    from fleetrun import context

    def run(mini_batch):
        context.logger.info("scoring", files=len(mini_batch))
        (context.output_dir / f"extra-{context.minibatch_index}.txt").write_text("...")

Every attribute is set by the runner before ``init()`` and updated before each ``run()``:
``logger`` (a structlog logger bound to job, batch and attempt), ``job_id``, ``attempt``,
``minibatch_index`` and ``output_dir``, a local folder whose files end up in the job's output
folder (the way ``summary_only`` scripts store their own output).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

logger: Any  # made on first use (see __getattr__): structlog is a fifth of a runner's start-up
job_id: str = ""
attempt: int = 0
minibatch_index: int = -1
output_dir: Path = Path.cwd()
worker: str = ""
_bound: Any = None  # the logger bound to the values above, once asked for


def __getattr__(name: str) -> Any:
    global _bound
    if name != "logger":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _bound is None:
        import structlog

        _bound = structlog.get_logger("fleetrun.user").bind(
            job_id=job_id, batch=minibatch_index, attempt=attempt, worker=worker
        )
    return _bound


def _set(**values: Any) -> None:
    """Called by the runner; not for entry scripts."""
    global _bound
    globals().update(values)
    _bound = None
