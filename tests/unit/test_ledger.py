"""The ledger: each batch counted once, durable across coordinators, caught up from parts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from fleetrun.common import storage
from fleetrun.common.messages import BatchResult
from fleetrun.common.parts import encode_part, part_uri
from fleetrun.coordinator.ledger import Counts, Ledger


def result(
    index: int,
    *,
    items: int = 10,
    failed: int = 0,
    attempt: int = 1,
    status: str = "succeeded",
    failed_items: list[str] | None = None,
) -> BatchResult:
    return BatchResult(
        job_id="unit-0123456789",
        run_id="run-a",
        index=index,
        status=status,  # type: ignore[arg-type]
        items=items,
        succeeded=items - failed,
        failed=failed,
        attempt=attempt,
        failed_items=failed_items or [],
    )


# A clean batch, a short return (succeeded, 3 items failed), a batch whose tries all failed,
# and a batch that succeeded on its second try.
MIXED = [
    result(0),
    result(1, failed=3),
    result(2, failed=10, attempt=3, status="failed", failed_items=[f"f{i}" for i in range(10)]),
    result(3, attempt=2),
]
MIXED_COUNTS = Counts(items=40, items_failed=13, batches=4, batches_failed=2, batches_retried=2)


@pytest.fixture(params=["local", "memory"])
def state_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A job's state folder on a local disk or on memory:// (standing in for an object store)."""
    if request.param == "local":
        yield str(tmp_path / "out" / "_fleetrun")
        return
    uri = f"memory://{uuid.uuid4().hex}/out/_fleetrun"
    yield uri
    fs = fsspec.filesystem("memory")
    root = uri.split("://", 1)[1].split("/", 1)[0]
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_a_batch_is_recorded_once_however_often_its_result_arrives(state_uri: str) -> None:
    ledger = Ledger(state_uri, {})
    assert ledger.add(result(5)) is True
    assert ledger.add(result(5, failed=10, status="failed", attempt=3)) is False
    assert ledger.results[5].status == "succeeded"
    assert ledger.counts == Counts(items=10, batches=1)
    assert ledger.unwritten == 1


def test_counts_take_in_failed_items_failed_and_short_batches_and_retries(
    state_uri: str,
) -> None:
    ledger = Ledger(state_uri, {})
    for r in MIXED:
        ledger.add(r)
    assert ledger.counts == MIXED_COUNTS


def test_a_written_ledger_loads_into_a_fresh_object_with_the_same_results(
    state_uri: str,
) -> None:
    ledger = Ledger(state_uri, {})
    for r in MIXED[:2]:
        ledger.add(r)
    ledger.write()
    for r in MIXED[2:]:
        ledger.add(r)
    ledger.write()
    assert ledger.unwritten == 0
    assert len(storage.list_names(ledger.folder)) == 2

    loaded = Ledger.load(state_uri, {})
    assert loaded.results == ledger.results
    assert loaded.counts == MIXED_COUNTS
    assert loaded.unwritten == 0  # already durable: nothing to write again


def test_a_ledger_write_with_nothing_new_adds_no_file(state_uri: str) -> None:
    ledger = Ledger(state_uri, {})
    ledger.add(result(0))
    ledger.write()
    ledger.write()
    assert len(storage.list_names(ledger.folder)) == 1


def test_parts_finished_after_the_last_ledger_write_are_picked_up(state_uri: str) -> None:
    ledger = Ledger(state_uri, {})
    for r in MIXED:
        ledger.add(r)
    ledger.write()
    # A worker finished batch 4 (a short return) after the coordinator's last write, and a
    # redelivered batch 0 wrote a part that the ledger already has.
    late = result(4, items=7, failed=2)
    storage.write_bytes(part_uri(state_uri, 4), encode_part(late, ["a", "b", "c", "d", "e"]))
    storage.write_bytes(part_uri(state_uri, 0), encode_part(result(0, attempt=2), ["x"] * 10))

    loaded = Ledger.load(state_uri, {})
    assert loaded.results[4] == late
    assert loaded.results[0] == MIXED[0]
    assert loaded.counts == Counts(
        items=47, items_failed=15, batches=5, batches_failed=3, batches_retried=2
    )
    assert loaded.unwritten == 1  # the part's result still has to go into the ledger


def test_a_job_with_nothing_finished_loads_an_empty_ledger(state_uri: str) -> None:
    loaded = Ledger.load(state_uri, {})
    assert loaded.results == {}
    assert loaded.counts == Counts()


def test_the_ledger_is_due_for_a_write_after_enough_records(state_uri: str) -> None:
    ledger = Ledger(state_uri, {})
    assert not ledger.due(max_records=2, max_age=3600)
    ledger.add(result(0))
    assert not ledger.due(max_records=2, max_age=3600)
    ledger.add(result(1))
    assert ledger.due(max_records=2, max_age=3600)
    ledger.write()
    assert not ledger.due(max_records=2, max_age=0)
