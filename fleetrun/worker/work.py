"""One delivered batch on its way through a worker: what it is, its try, its staged inputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fleetrun.common.broker import Consumer, Delivery
from fleetrun.common.messages import BatchMessage, ErrorInfo
from fleetrun.worker.jobs import LoadedJob
from fleetrun.worker.staging import StagedBatch


@dataclass
class Work:
    consumer: Consumer
    delivery: Delivery
    message: BatchMessage
    job: LoadedJob
    attempt: int
    staged: StagedBatch | None = None
    staging_error: ErrorInfo | None = None
    triaged_at: float = field(default_factory=time.monotonic)  # when its part was looked for

    @property
    def index(self) -> int:
        return self.message.index

    @property
    def items(self) -> list[str]:
        return self.message.items

    def cleanup(self) -> None:
        if self.staged is not None:
            self.staged.cleanup()
            self.staged = None
