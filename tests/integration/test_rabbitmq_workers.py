"""Jobs on RabbitMQ served by `fleetrun worker` daemons."""

from __future__ import annotations

import io
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import DEAD_BROKER, LINE_PER_FILE, Harness, wait_for

import fleetrun
import fleetrun.coordinator.job
from fleetrun.coordinator.progress import Progress

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(120)]


def test_two_worker_daemons_give_the_sequential_output(harness: Harness, rabbitmq_url: str) -> None:
    harness.make_inputs(120)
    harness.write_job(LINE_PER_FILE, mini_batch_size=5)
    workers = [harness.start_worker(rabbitmq_url), harness.start_worker(rabbitmq_url)]

    result = harness.run(broker=rabbitmq_url)

    assert result.returncode == 0, result.stderr
    assert harness.output_lines() == harness.expected_lines()
    summary = harness.summary()
    assert summary["items"] == {"total": 120, "succeeded": 120, "failed": 0}
    assert summary["mini_batches"] == {"total": 24, "succeeded": 24, "failed": 0, "retried": 0}
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(30) == 0, harness.log_of(worker)


def test_a_worker_without_a_broker_exits_quickly_and_says_why(harness: Harness) -> None:
    started = time.monotonic()
    worker = harness.start_worker(DEAD_BROKER)

    code = worker.wait(30)

    assert time.monotonic() - started < 25
    assert code != 0
    log = harness.log_of(worker)
    assert "cannot connect to RabbitMQ" in log
    assert "127.0.0.1:1" in log
    assert "Traceback" not in log


def test_run_without_a_broker_exits_1_and_says_why(harness: Harness) -> None:
    harness.make_inputs(3)
    harness.write_job(LINE_PER_FILE)

    result = harness.run(broker=DEAD_BROKER, timeout=60)

    assert result.returncode == 1
    assert "cannot connect to RabbitMQ" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_says_plainly_when_no_worker_takes_a_batch_and_keeps_waiting(
    harness: Harness, rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleetrun.coordinator.job, "STALL_NOTICE_S", 1.0)
    harness.make_inputs(20)
    harness.write_job(LINE_PER_FILE, mini_batch_size=5)
    harness.broker_urls.add(rabbitmq_url)
    spec = fleetrun.load_spec(harness.job_file)
    stream = io.StringIO()

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            fleetrun.run,
            spec,
            broker=rabbitmq_url,
            namespace=harness.namespace,
            progress=Progress(stream, enabled=False),
        )
        wait_for(lambda: "No worker has taken a batch" in stream.getvalue(), 30, "the notice")
        notice = stream.getvalue()
        assert "4 batches are waiting" in notice
        assert "no worker is connected" in notice
        assert "fleetrun worker --broker" in notice
        assert "Still waiting" in notice
        assert not future.done()
        harness.start_worker(rabbitmq_url)
        summary = future.result(timeout=60)

    assert summary.status == "succeeded"
    assert harness.output_lines() == harness.expected_lines()
