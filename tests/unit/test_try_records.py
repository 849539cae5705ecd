"""The record of started tries: appended logs on a local disk, marker objects elsewhere."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from fleetrun.worker import try_records
from fleetrun.worker.try_records import TryRecords


@pytest.fixture(params=["local", "memory"])
def state_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "out" / "_fleetrun")
    return f"memory://t-{uuid.uuid4().hex[:8]}/out/_fleetrun"


def test_a_try_marked_by_any_worker_is_found_and_no_other(state_uri: str) -> None:
    first, second = TryRecords(), TryRecords()  # two worker processes
    first.mark(state_uri, "run1", 7, 1, {})
    second.mark(state_uri, "run1", 7, 2, {})
    second.mark(state_uri, "run1", 12, 1, {})

    assert first.started(state_uri, 7, 1, {})
    assert first.started(state_uri, 7, 2, {})
    assert second.started(state_uri, 12, 1, {})
    assert not first.started(state_uri, 7, 3, {})
    assert not first.started(state_uri, 17, 1, {})  # "17" must not match inside "...7-001"
    assert not first.started(state_uri, 1, 1, {})
    first.close()
    second.close()


def test_nothing_marked_yet_is_not_started(state_uri: str) -> None:
    assert not TryRecords().started(state_uri, 0, 1, {})


def test_local_logs_are_appended_one_per_worker_and_run(tmp_path: Path) -> None:
    state = str(tmp_path / "_fleetrun")
    records = TryRecords()
    for index in range(100):
        records.mark(state, "runA", index, 1, {})
    records.mark(state, "runB", 0, 1, {})
    records.close()

    logs = sorted((tmp_path / "_fleetrun" / "tries").iterdir())
    assert len(logs) == 2  # no file per try
    lines = [line for log in logs for line in log.read_text().splitlines()]
    assert sorted(lines) == sorted([f"{i:09d}-001" for i in range(100)] + ["000000000-001"])


def test_a_worker_of_many_runs_keeps_few_files_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(try_records, "OPEN_LOGS", 2)
    state = str(tmp_path / "_fleetrun")
    records = TryRecords()
    for run in ("r1", "r2", "r3", "r1"):  # r1 is closed, then reopened and appended to
        records.mark(state, run, 5, 1, {})
        records.mark(state, run, 6, 1, {})
    assert len(records._open) == 2
    records.close()

    logs = {
        p.name.rsplit("-", 1)[1]: p.read_text()
        for p in (tmp_path / "_fleetrun" / "tries").iterdir()
    }
    assert logs["r1.log"] == "000000005-001\n000000006-001\n" * 2
    assert records.started(state, 6, 1, {})
