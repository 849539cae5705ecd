"""Two jobs at once on one worker: both finish exact, and runners do not thrash between them.

A runner runs one job's init() once; the worker's dispatcher keeps each runner on its job and
switches only when its job has nothing waiting, so two interleaved jobs cost a few init()
calls, not one per batch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from helpers import Harness

SCRIPT = """\
import os, time

def init():
    with open(os.environ["INITS"], "a") as log:
        log.write(f"{os.getpid()}\\n")

def run(mini_batch):
    time.sleep(0.02 * len(mini_batch))
    return [os.path.basename(p) for p in mini_batch]
"""


@pytest.mark.timeout(180)
def test_two_jobs_share_a_worker_without_thrashing(harness: Harness, rabbitmq_url: str) -> None:
    jobs = []
    for name in ("alpha", "beta"):
        data = harness.root / f"data-{name}"
        data.mkdir()
        for i in range(120):
            (data / f"{name}-{i:04d}.txt").write_text(str(i))
        job_dir = harness.root / f"job-{name}"
        job_dir.mkdir()
        (job_dir / "score.py").write_text(SCRIPT)
        inits = harness.root / f"inits-{name}.txt"
        spec = {
            "name": name,
            "inputs": str(data),
            "output": str(harness.root / f"out-{name}"),
            "entry_script": "score.py",
            "mini_batch_size": 2,
            "environment_variables": {"INITS": str(inits)},
        }
        (job_dir / "job.yaml").write_text(yaml.safe_dump(spec))
        jobs.append((name, data, job_dir / "job.yaml", inits))

    worker = harness.start_worker(rabbitmq_url, processes=2)
    harness.wait_ready(worker)
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetrun",
                "run",
                str(job_file),
                "--quiet",
                "--broker",
                rabbitmq_url,
                "--namespace",
                harness.namespace,
            ],
            env=harness.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _name, _data, job_file, _inits in jobs
    ]
    for run in runs:
        _out, err = run.communicate(timeout=150)
        assert run.returncode == 0, err.decode(errors="replace")

    for name, data, _job_file, inits in jobs:
        output = (harness.root / f"out-{name}" / "parallel_run_step.txt").read_text().split()
        assert output == sorted(p.name for p in data.iterdir())
        calls = inits.read_text().split()
        # 60 batches each, interleaved on one queue: a thrashing worker would run init() per
        # switch (tens of times); this one keeps each runner on a job.
        assert 1 <= len(calls) <= 4, f"{name}: init() ran {len(calls)} times"
    assert os.path.exists(harness.cache_dir)
