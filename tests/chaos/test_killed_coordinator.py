"""The coordinator (`fleetrun run --broker`) killed mid-job and run again with the same command."""

from __future__ import annotations

import signal
import time

import pytest
from helpers import Harness, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(180)]

SLOW = """\
import os
import time


def run(mini_batch):
    time.sleep(0.05 * len(mini_batch))
    return [f"{os.path.basename(p)} {open(p).read()}" for p in mini_batch]
"""


def test_a_killed_coordinator_resumes_without_double_counting(
    harness: Harness, rabbitmq_url: str
) -> None:
    harness.make_inputs(200)
    harness.write_job(SLOW, mini_batch_size=5)
    workers = [harness.start_worker(rabbitmq_url), harness.start_worker(rabbitmq_url)]
    for worker in workers:
        harness.wait_ready(worker)
    first = harness.start_run(broker=rabbitmq_url)
    ledger = harness.out_dir / "_fleetrun" / "ledger"

    # Killed once some results are in its ledger and more are still coming.
    wait_for(lambda: ledger.exists() and len(harness.parts()) >= 10, 60, "ten parts")
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    time.sleep(1.0)  # results keep arriving with no coordinator to take them
    assert not (harness.out_dir / "summary.json").exists()
    assert len(harness.parts()) < 40, "the job must not be over before the re-run"

    again = harness.run(broker=rabbitmq_url)

    assert again.returncode == 0, again.stderr
    lines = harness.output_lines()
    assert len(lines) == len(set(lines)), "duplicate lines in the output"
    assert lines == harness.expected_lines()
    summary = harness.summary()
    assert summary["status"] == "succeeded"
    assert summary["items"] == {"total": 200, "succeeded": 200, "failed": 0}
    assert summary["mini_batches"] == {"total": 40, "succeeded": 40, "failed": 0, "retried": 0}
    assert harness.errors() == []
    assert all(worker.poll() is None for worker in workers)
