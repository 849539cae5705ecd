"""`fleetrun status` and `fleetrun cancel` reach a foreground `fleetrun run` on the broker too."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import Harness, wait_for

SLOW = """\
import os, time

def run(mini_batch):
    time.sleep(0.2)
    return [os.path.basename(p) for p in mini_batch]
"""


def _cli(harness: Harness, rabbitmq_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetrun",
            *args,
            "--broker",
            rabbitmq_url,
            "--namespace",
            harness.namespace,
        ],
        env=harness.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(120)
def test_a_foreground_job_shows_in_status_and_stops_on_cancel(
    harness: Harness, rabbitmq_url: str
) -> None:
    harness.make_inputs(200)
    harness.write_job(SLOW, mini_batch_size=2)
    worker = harness.start_worker(rabbitmq_url, processes=2)
    harness.wait_ready(worker)
    run = harness.start_run(broker=rabbitmq_url)
    spec_file = harness.out_dir / "_fleetrun" / "spec.json"
    wait_for(lambda: spec_file.exists() and len(harness.parts()) >= 4, 60, "a few batches")
    job_id = json.loads(spec_file.read_text())["job_id"]

    status = _cli(harness, rabbitmq_url, "status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    [job] = json.loads(status.stdout)
    assert job["job_id"] == job_id
    assert job["state"] == "running"
    assert job["batches_done"] >= 4

    cancel = _cli(harness, rabbitmq_url, "cancel", job_id)
    assert cancel.returncode == 0, cancel.stderr
    assert "cancelled" in cancel.stdout

    assert run.wait(60) == 1, harness.log_of(run)
    summary = harness.summary()
    assert summary["status"] == "cancelled"
    assert summary["mini_batches"]["succeeded"] < 100
    assert not (harness.out_dir / "parallel_run_step.txt").exists()
