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

import structlog

logger: Any = structlog.get_logger("fleetrun.user")
job_id: str = ""
attempt: int = 0
minibatch_index: int = -1
output_dir: Path = Path.cwd()
worker: str = ""


def _set(**values: Any) -> None:
    """Called by the runner; not for entry scripts."""
    globals().update(values)
    globals()["logger"] = structlog.get_logger("fleetrun.user").bind(
        job_id=job_id, batch=minibatch_index, attempt=attempt, worker=worker
    )
