"""The job's outputs: the append_row file, failed_items.txt, errors.jsonl and summary.json.

Everything is written whole or not at all, and only from the durable record (parts, error
records, the ledger), so writing the outputs again after a crash gives the same files.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from fleetrun.common import storage
from fleetrun.common.messages import ErrorInfo
from fleetrun.common.output_formats import write_joined
from fleetrun.common.parts import iter_part_body, part_uri
from fleetrun.common.spec import JobSpec
from fleetrun.coordinator.ledger import Ledger

Status = Literal["succeeded", "aborted", "failed", "cancelled"]


class ItemCounts(BaseModel):
    total: int
    succeeded: int
    failed: int


class BatchCounts(BaseModel):
    total: int
    succeeded: int
    failed: int
    retried: int


class Summary(BaseModel):
    """``summary.json``: how the job ended."""

    job_id: str
    status: Status
    reason: str
    items: ItemCounts
    mini_batches: BatchCounts
    started_at: str
    finished_at: str
    duration_s: float
    output: str | None

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "succeeded" else 1


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


class _JoinStopped(Exception):
    """The job stopped early: the output file is not written."""


class OutputJoin:
    """The append_row file, joined while the job runs: a thread appends each batch's part as
    soon as every batch before it has finished, so the file is ready moments after the last
    batch rather than after a pass over every part at the end.

    The file grows at ``<state>/output.partial`` (inside the job's own folder, where a rerun
    after a crash overwrites it) and is moved into place by :meth:`finish`.
    """

    def __init__(
        self, spec: JobSpec, ledger: Ledger, total_batches: Callable[[], int | None]
    ) -> None:
        self.spec = spec
        self.uri = spec.output_file_uri
        self._ledger = ledger
        self._total_batches = total_batches  # None while the listing goes on
        self._nudge = threading.Event()
        self._awaiting = -1  # the batch whose result the join waits for
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="output-join", daemon=True)
        self._thread.start()

    def arrived(self, index: int) -> None:
        """Batch ``index`` has its result in the ledger: wake the join if it waits for it
        (only then, so a job of many small batches does not wake a thread per batch)."""
        if index == self._awaiting:
            self._nudge.set()

    def finish(self) -> str:
        """Wait for the file (every batch has finished) and return its URI."""
        self._nudge.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.uri

    def abort(self) -> None:
        """Stop joining and discard the partial file: the job writes no output."""
        self._stopped = True
        self._nudge.set()
        self._thread.join()

    def _write(self) -> None:
        spec = self.spec
        partial = storage.join(spec.state_uri, "output.partial")
        try:
            with storage.atomic_writer(self.uri, spec.storage_options, temporary=partial) as out:
                write_joined(spec.append_row_format, self._bodies(), out)
        except _JoinStopped:
            pass
        except BaseException as exc:
            self._error = exc

    def _bodies(self) -> Iterator[tuple[int, list[str], Iterator[bytes]]]:
        index = 0
        while True:
            if self._stopped:
                raise _JoinStopped
            # Say which batch is awaited before looking for it: a result added after the look
            # then sees it and wakes the join.
            self._awaiting = index
            result = self._ledger.results.get(index)
            if result is None:
                total = self._total_batches()
                if total is not None and index >= total:
                    return
                self._nudge.wait(1.0)
                self._nudge.clear()
                continue
            if result.status == "succeeded" and result.succeeded > 0:
                part = part_uri(self.spec.state_uri, index)
                yield index, result.columns, iter_part_body(part, self.spec.storage_options)
            index += 1


def collect_errors(spec: JobSpec, ledger: Ledger) -> list[ErrorInfo]:
    """Every failed try (recorded by the workers) and every short return, in batch order."""
    folder = storage.join(spec.state_uri, "errors")
    errors = [
        ErrorInfo.model_validate_json(
            storage.read_bytes(storage.join(folder, name), spec.storage_options)
        )
        for name in storage.list_names(folder, spec.storage_options)
        if name.endswith(".json")
    ]
    errors = [e for e in errors if e.batch in ledger.results]
    errors += [
        r.error
        for r in ledger.results.values()
        if r.error is not None and r.error.kind == "short_return"
    ]
    return sorted(errors, key=lambda e: (e.batch, e.attempt, e.kind))


def write_reports(spec: JobSpec, ledger: Ledger) -> list[ErrorInfo]:
    """``failed_items.txt`` and ``errors.jsonl``."""
    options = spec.storage_options
    failed = [item for i in sorted(ledger.results) for item in ledger.results[i].failed_items]
    storage.write_bytes(
        storage.join(spec.output, "failed_items.txt"),
        "".join(f"{x}\n" for x in failed).encode(),
        options,
    )
    errors = collect_errors(spec, ledger)
    storage.write_bytes(
        storage.join(spec.output, "errors.jsonl"),
        "".join(e.model_dump_json() + "\n" for e in errors).encode(),
        options,
    )
    return errors


def write_summary(spec: JobSpec, summary: Summary) -> None:
    storage.write_bytes(
        storage.join(spec.output, "summary.json"),
        (json.dumps(summary.model_dump(), indent=2) + "\n").encode(),
        spec.storage_options,
    )


def read_summary(spec: JobSpec) -> Summary | None:
    uri = storage.join(spec.output, "summary.json")
    try:
        return Summary.model_validate_json(storage.read_bytes(uri, spec.storage_options))
    except (FileNotFoundError, ValueError):
        return None


def make_summary(
    job_id: str,
    status: Status,
    reason: str,
    ledger: Ledger,
    total_items: int,
    total_batches: int,
    started: float,
    finished: float,
    output: str | None,
) -> Summary:
    c = ledger.counts
    # Items of batches never run (an aborted job) count neither as succeeded nor as failed.
    return Summary(
        job_id=job_id,
        status=status,
        reason=reason,
        items=ItemCounts(
            total=total_items, succeeded=c.items - c.items_failed, failed=c.items_failed
        ),
        mini_batches=BatchCounts(
            total=total_batches,
            succeeded=c.batches - c.batches_failed,
            failed=c.batches_failed,
            retried=c.batches_retried,
        ),
        started_at=iso(started),
        finished_at=iso(finished),
        duration_s=round(finished - started, 3),
        output=output,
    )
