"""The messages that cross the broker, and the records kept in a job's state folder.

Messages carry references (URIs, ids, batch indexes), never file contents. A batch's result
part starts with its :class:`BatchResult` as a JSON line, so the part alone is the durable
record that the batch finished: a result message is only the fast signal of it.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetrun.common.slices import TableSlice


@functools.cache
def _hostname() -> str:
    """Asked once per process: every result and error record names its host."""
    return socket.gethostname()


@dataclass(frozen=True)
class Topology:
    """The broker's queue and exchange names.

    A namespace keeps several fleets (or test runs) on one broker apart; the vhost of the
    broker URL does the same with stronger walls.
    """

    namespace: str = "fleetrun"

    @property
    def batches(self) -> str:
        """The one queue every job's batches go to; every worker consumes it."""
        return f"{self.namespace}.batches"

    @property
    def control(self) -> str:
        """The fanout exchange that tells every worker a job's run ended or was stopped."""
        return f"{self.namespace}.control"

    def results(self, job_id: str) -> str:
        """A job's results queue, read by its coordinator: each message holds one or more
        :class:`BatchResult`, a JSON object per line (see :func:`results_from_bytes`)."""
        return f"{self.namespace}.results.{job_id}"

    @property
    def jobs(self) -> str:
        """Submitted jobs, taken by coordinator daemons."""
        return f"{self.namespace}.jobs"

    @property
    def workers(self) -> str:
        """The fanout exchange of worker heartbeats."""
        return f"{self.namespace}.workers"

    @property
    def rpc(self) -> str:
        """The fanout exchange of status and cancel requests to coordinators."""
        return f"{self.namespace}.rpc"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, body: bytes) -> Any:
        return cls.model_validate_json(body)


class BatchMessage(_Message):
    """One mini-batch to run: which job, which inputs, and the tries already spent on it.

    ``attempt`` counts the tries that fleetrun itself recorded when it republished the batch
    after a failed try; tries lost to a dead holder are added from the broker's delivery count.
    """

    job_id: str
    run_id: str
    state_uri: str
    reply_to: str  # the job's results queue
    index: int
    items: list[str]  # the batch's files (for a tabular batch: the files its slice reads)
    slice: TableSlice | None = None  # tabular batches: the part of the table to read
    attempt: int = 1
    storage_options: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ErrorInfo(BaseModel):
    """One failed try, or one short return, as written to ``errors.jsonl``."""

    model_config = ConfigDict(extra="ignore")

    batch: int
    attempt: int
    items: list[str]
    kind: str  # "exception", "timeout", "runner_died", "holder_lost", "short_return", ...
    type: str
    message: str
    traceback: str = ""
    rows: int | None = None  # tabular: the rows of the batch, when they were read
    host: str = Field(default_factory=_hostname)
    pid: int = Field(default_factory=os.getpid)
    time: float = Field(default_factory=time.time)


class BatchResult(_Message):
    """How one batch ended, once and for all: the header of its result part."""

    job_id: str
    run_id: str
    index: int
    status: Literal["succeeded", "failed"]
    items: int
    succeeded: int
    failed: int
    attempt: int
    failed_items: list[str] = Field(default_factory=list)
    error: ErrorInfo | None = None
    columns: list[str] = Field(default_factory=list)  # typed output: name:dtype per column
    host: str = Field(default_factory=_hostname)
    pid: int = Field(default_factory=os.getpid)


def results_to_bytes(results: list[bytes]) -> bytes:
    """One results message from several encoded :class:`BatchResult` (JSON never holds a raw
    newline, so a line is a result)."""
    return b"\n".join(results)


def results_from_bytes(body: bytes) -> list[BatchResult]:
    return [BatchResult.from_bytes(line) for line in body.split(b"\n") if line]


class StopJob(_Message):
    """Broadcast to every worker: this run of a job has ended (``finished``: every batch has
    its result) or was stopped early. Either way its remaining batches are dropped, and the
    runners bound to the job are free for other jobs (their ``shutdown()`` runs now)."""

    job_id: str
    run_id: str
    reason: str
    finished: bool = False
