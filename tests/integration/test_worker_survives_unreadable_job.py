"""One job a worker cannot read must cost that job its batches, not the fleet its workers.

A worker meets a job it cannot load when the job's ``spec.json`` was written by a newer
fleetrun (a key this version does not know) or was damaged. Found while benchmarking: a worker
that took such a batch logged "Cannot take batches any more; stopping." and exited, and the
batch went back to the queue for the next worker to take, and stop on, in turn.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest

import fleetrun
from fleetrun.common.broker.embedded import EmbeddedBroker
from fleetrun.common.messages import BatchMessage, Topology
from fleetrun.common.spec import JobSpec
from fleetrun.worker.supervisor import Supervisor, WorkerSettings

NOOP = """\
import os


def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


@pytest.mark.timeout(120)
def test_a_batch_of_a_job_with_an_unreadable_spec_does_not_stop_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETRUN_CACHE_DIR", str(tmp_path / "cache"))
    data, job, out = tmp_path / "data", tmp_path / "job", tmp_path / "out"
    data.mkdir()
    job.mkdir()
    (data / "a.txt").write_text("a")
    (job / "score.py").write_text(NOOP)
    # A real job's state folder (spec.json, code.zip), then a spec this version cannot read.
    summary = fleetrun.run(
        JobSpec(
            name="unreadable",
            inputs=[str(data)],
            output=str(out),
            entry_script="score.py",
            source_directory=str(job),
        )
    )
    state = out / "_fleetrun"
    spec = json.loads((state / "spec.json").read_text())
    spec["a_key_from_a_newer_fleetrun"] = True
    (state / "spec.json").write_text(json.dumps(spec))

    broker = EmbeddedBroker()
    topology = Topology(f"test-{uuid.uuid4().hex[:8]}")
    supervisor = Supervisor(
        broker.connect(),
        WorkerSettings(
            processes=1, cache_dir=tmp_path / "worker-cache", namespace=topology.namespace
        ),
    )
    worker = threading.Thread(target=supervisor.run, name="worker", daemon=True)
    worker.start()
    assert supervisor.wait_started(30)
    client = broker.connect()
    client.declare_queue(topology.results(summary.job_id))
    batch = BatchMessage(
        job_id=summary.job_id,
        run_id="run-1",
        state_uri=str(state),
        reply_to=topology.results(summary.job_id),
        index=1,
        items=[str(data / "a.txt")],
    )
    try:
        client.publish(topology.batches, batch.to_bytes()).result(10)
        time.sleep(3)  # the worker takes the batch at once; give it time to react
        assert worker.is_alive(), (
            "the worker stopped serving every job because one job's spec.json could not be "
            "read; it should fail or drop that job's batch and go on"
        )
    finally:
        supervisor.stop()
        worker.join(30)
