"""The job's outputs: the append_row file, failed_items.txt, errors.jsonl and summary.json.

Everything is written whole or not at all, and only from the durable record (parts, error
records, the ledger), so writing the outputs again after a crash gives the same files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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


def write_output_file(spec: JobSpec, ledger: Ledger, total_batches: int) -> str:
    """Stream every batch's rows, in batch order, into the append_row file."""
    uri = spec.output_file_uri

    def bodies() -> Iterator[tuple[int, list[str], Iterator[bytes]]]:
        for index in range(total_batches):
            result = ledger.results[index]
            if result.status == "succeeded" and result.succeeded > 0:
                part = part_uri(spec.state_uri, index)
                yield index, result.columns, iter_part_body(part, spec.storage_options)

    with storage.atomic_writer(uri, spec.storage_options) as out:
        write_joined(spec.append_row_format, bodies(), out)
    return uri


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
