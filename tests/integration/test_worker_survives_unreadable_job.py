"""One job a worker cannot read must cost that job its batches, not the fleet its workers.

A worker meets a job it cannot load when the job's ``spec.json`` was written by a newer
fleetrun (a key this version does not know) or was damaged. Found while benchmarking: first a
worker that took such a batch stopped ("Cannot take batches any more; stopping."), and the
batch went back for the next worker to stop on; then, once the worker survived it, it handed
the batch back and took it again in a tight loop (14,000 times in 3 s on the embedded broker),
a busy core and a traceback per loop. DESIGN.md: after ``run_max_try`` failed tries a batch is
recorded as failed, with the last error.
"""

from __future__ import annotations

import json
import re
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

# An error-level line in either of structlog's renderings (console or JSON).
ERROR_LINE = re.compile(r'\[error\s*\]|"level": ?"error"')
NOOP = """\
import os


def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


@pytest.mark.timeout(120)
def test_a_job_whose_spec_cannot_be_read_neither_stops_the_worker_nor_spins_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
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
        capfd.readouterr()  # only what the worker logs from here on
        client.publish(topology.batches, batch.to_bytes()).result(10)
        time.sleep(3)  # the worker takes the batch at once; give it time to react
        alive = worker.is_alive()
    finally:
        supervisor.stop()
        worker.join(30)
    logged = capfd.readouterr()
    errors = ERROR_LINE.findall(logged.out + logged.err)
    assert alive, (
        "the worker stopped serving every job because one job's spec.json could not be read"
    )
    assert len(errors) <= 10, (
        f"the worker logged {len(errors)} errors in 3 s for one batch: it keeps handing the "
        "batch back and taking it again instead of failing it after run_max_try tries"
    )
