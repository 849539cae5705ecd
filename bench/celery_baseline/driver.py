"""Drive the Celery baseline: start its worker, send a task per mini-batch, gather in order."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from celery import Celery  # type: ignore[import-untyped]

from bench.celery_baseline.app import TASK_NAME, make_app
from bench.common import REPO_ROOT, delete_broker_objects, stop_process

RESULT_TIMEOUT_S = 600.0


class CeleryBaseline:
    """A warm Celery worker (prefork, 2 processes) on its own queue, and a client app."""

    def __init__(self, broker: str, queue: str, log_file: Path) -> None:
        self.broker = broker
        self.queue = queue
        env = dict(os.environ, BENCH_CELERY_BROKER=broker, BENCH_CELERY_QUEUE=queue)
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_baseline.app",
            "worker",
            "-c",
            "2",
            "-P",
            "prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            queue,
            "--loglevel",
            "WARNING",
        ]
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
            )
        self.app: Celery = make_app(broker, queue)

    def run_job(self, batches: Sequence[list[str]], output: Path) -> float:
        """Seconds from the first ``apply_async`` to the output file written, in batch order."""
        task = self.app.tasks[TASK_NAME]
        started = time.perf_counter()
        pending = [task.apply_async((batch,)) for batch in batches]
        with open(output, "w") as handle:
            for result in pending:
                names = result.get(timeout=RESULT_TIMEOUT_S)
                handle.write("".join(f"{name}\n" for name in names))
        return time.perf_counter() - started

    def close(self) -> None:
        stop_process(self.process)
        self.app.close()
        delete_broker_objects(self.broker, queues=[self.queue], exchanges=[self.queue])
