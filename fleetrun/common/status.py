"""What the daemons tell each other and the CLI: submissions, worker heartbeats, job status.

Workers broadcast what they hold every few seconds (``<ns>.workers``); coordinators answer
status and cancel requests broadcast on ``<ns>.rpc``, each for the jobs it runs or has queued.
These messages describe; they decide nothing: the durable record stays in the job's state.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field

from fleetrun.common.messages import _Message

HEARTBEAT_S = 5.0  # how often a worker says what it holds
JobState = Literal["queued", "running", "succeeded", "aborted", "failed", "cancelled"]


class JobSubmission(_Message):
    """A job queued by ``fleetrun submit``: its state (spec, code) is already in storage."""

    job_id: str
    state_uri: str
    storage_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    submitted_at: float = Field(default_factory=time.time)
    submitter: str = ""


class HeldBatch(_Message):
    job_id: str
    batch: int
    attempt: int
    since: float  # wall clock, when the try started


class WorkerStatus(_Message):
    """A worker's heartbeat: who it is and what each of its runners holds."""

    worker: str
    host: str
    pid: int
    runners: int
    held: list[HeldBatch] = Field(default_factory=list)
    sent_at: float = Field(default_factory=time.time)


class InFlight(_Message):
    batch: int
    attempt: int
    worker: str
    age_s: float


class JobStatus(_Message):
    job_id: str
    name: str
    state: JobState
    reason: str = ""
    output: str = ""
    batches_total: int | None = None  # None while the listing goes on
    batches_planned: int = 0
    batches_done: int = 0
    batches_failed: int = 0
    batches_retried: int = 0
    items_succeeded: int = 0
    items_failed: int = 0
    rate: float = 0.0  # batches per second since the job started
    eta_s: float | None = None
    queued: int = 0  # planned, not finished and not held by a worker
    in_flight: list[InFlight] = Field(default_factory=list)
    coordinator: str = ""

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "aborted", "failed", "cancelled")


class StatusRequest(_Message):
    action: Literal["status", "cancel"] = "status"
    job_id: str | None = None
    reply_to: str
    requester: str = ""


class StatusReply(_Message):
    coordinator: str
    jobs: list[JobStatus] = Field(default_factory=list)
    workers: list[WorkerStatus] = Field(default_factory=list)
    message: str = ""
