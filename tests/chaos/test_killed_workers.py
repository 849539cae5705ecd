"""Workers and runners killed or stopped mid-job on RabbitMQ: the output stays exact."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers import Harness, pid_alive, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(180)]

SLOW = """\
import os
import time

DELAY = float(os.environ["DELAY"])


def run(mini_batch):
    lines = []
    for p in mini_batch:
        time.sleep(DELAY)
        lines.append(f"{os.path.basename(p)} {open(p).read()}")
    return lines
"""


def assert_exact(harness: Harness, files: int, batches: int) -> dict[str, object]:
    lines = harness.output_lines()
    assert len(lines) == len(set(lines)), "duplicate lines in the output"
    assert lines == harness.expected_lines()
    summary = harness.summary()
    assert summary["status"] == "succeeded"
    assert summary["items"] == {"total": files, "succeeded": files, "failed": 0}
    counts = summary["mini_batches"]
    assert isinstance(counts, dict)
    assert (counts["total"], counts["succeeded"], counts["failed"]) == (batches, batches, 0)
    return summary


def test_a_worker_killed_mid_job_loses_no_rows_and_adds_none(
    harness: Harness, rabbitmq_url: str
) -> None:
    harness.make_inputs(300)
    harness.write_job(SLOW, mini_batch_size=5, environment_variables={"DELAY": "0.05"})
    doomed = harness.start_worker(rabbitmq_url)
    survivor = harness.start_worker(rabbitmq_url)
    harness.wait_ready(doomed)
    harness.wait_ready(survivor)
    run = harness.start_run(broker=rabbitmq_url)

    wait_for(lambda: len(harness.parts()) >= 20, 60, "a third of the parts")
    held_by_doomed = harness.runner_pids(doomed)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)

    assert run.wait(120) == 0, harness.log_of(run)
    summary = assert_exact(harness, 300, 60)
    mini_batches = summary["mini_batches"]
    assert isinstance(mini_batches, dict)
    # Only the batches the dead worker held (prefetch 4) may have cost a try.
    assert mini_batches["retried"] <= 4
    assert held_by_doomed, "the killed worker had runners"


MARKED_SLOW = """\
import os
import time


def run(mini_batch):
    for p in mini_batch:
        marker = os.environ["MARKER"]
        if p.endswith("00042.txt") and not os.path.exists(marker):
            with open(marker, "w") as out:
                out.write(str(os.getpid()))
            time.sleep(30)
        time.sleep(0.02)
    return [f"{os.path.basename(p)} {open(p).read()}" for p in mini_batch]
"""


def test_a_runner_killed_mid_batch_costs_one_try_and_no_rows(
    harness: Harness, rabbitmq_url: str
) -> None:
    harness.make_inputs(100)
    marker = harness.root / "slow-runner.pid"
    harness.write_job(MARKED_SLOW, mini_batch_size=5, environment_variables={"MARKER": str(marker)})
    worker = harness.start_worker(rabbitmq_url)
    run = harness.start_run(broker=rabbitmq_url)

    wait_for(lambda: marker.exists() and marker.read_text(), 60, "batch 8 to start")
    runner = int(marker.read_text())
    assert runner in harness.runner_pids(worker), "the marker names one of the worker's runners"
    os.kill(runner, signal.SIGKILL)

    assert run.wait(120) == 0, harness.log_of(run)
    summary = assert_exact(harness, 100, 20)
    assert summary["mini_batches"] == {"total": 20, "succeeded": 20, "failed": 0, "retried": 1}
    errors = harness.errors()
    assert [(e["batch"], e["attempt"], e["kind"]) for e in errors] == [(8, 1, "runner_died")]
    assert "SIGKILL" in errors[0]["message"]
    assert worker.poll() is None, "the worker survives its runner"


def test_sigterm_drains_the_worker_and_costs_no_try(harness: Harness, rabbitmq_url: str) -> None:
    harness.make_inputs(40)
    harness.write_job(SLOW, mini_batch_size=2, environment_variables={"DELAY": "0.25"})
    first = harness.start_worker(rabbitmq_url)
    harness.wait_ready(first)
    run = harness.start_run(broker=rabbitmq_url)

    wait_for(lambda: len(harness.parts()) >= 4, 60, "four parts")
    first.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    code = first.wait(15)
    took = time.monotonic() - stopped
    log = harness.log_of(first)

    assert code == 0, log
    assert took < 8, f"the drain took {took:.1f} s"
    assert "draining" in log
    assert len(harness.parts()) < 20, "the job must still have work for the second worker"
    assert run.poll() is None
    second = harness.start_worker(rabbitmq_url)
    assert run.wait(120) == 0, harness.log_of(run)
    summary = assert_exact(harness, 40, 20)
    assert summary["mini_batches"] == {"total": 20, "succeeded": 20, "failed": 0, "retried": 0}
    assert harness.errors() == []
    second.send_signal(signal.SIGTERM)
    assert second.wait(15) == 0


FAST = """\
import os


def run(mini_batch):
    return [f"{os.path.basename(p)} {open(p).read()}" for p in mini_batch]
"""


def test_draining_workers_never_cost_a_batch_a_try(harness: Harness, rabbitmq_url: str) -> None:
    """Drains while acks stream: the batches the broker sends just before it sees the cancel.

    With run_max_try=1 a batch charged a try by a drain fails without ever running.
    """
    harness.make_inputs(1500)
    harness.write_job(FAST, mini_batch_size=1, run_max_try=1)
    run = harness.start_run(broker=rabbitmq_url)
    for _ in range(4):
        worker = harness.start_worker(rabbitmq_url, processes=4, extra=["--prefetch", "100"])
        harness.wait_ready(worker)
        before = len(harness.parts())
        wait_for(lambda b=before: len(harness.parts()) >= b + 60, 60, "sixty more parts")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0, harness.log_of(worker)
    harness.start_worker(rabbitmq_url, processes=2)

    assert run.wait(120) == 0, harness.log_of(run)
    lost = [(e["batch"], e["attempt"], e["kind"]) for e in harness.errors()]
    assert lost == [], f"drained batches were charged a try: {lost[:5]}..."
    summary = assert_exact(harness, 1500, 1500)
    assert summary["mini_batches"] == {
        "total": 1500,
        "succeeded": 1500,
        "failed": 0,
        "retried": 0,
    }


STUCK = """\
import os
import time


def run(mini_batch):
    with open(os.environ["STARTED"], "a") as out:
        out.write(f"{os.getpid()}\\n")
    time.sleep(60)
    return [os.path.basename(p) for p in mini_batch]
"""


def test_a_second_signal_stops_the_worker_at_once(harness: Harness, rabbitmq_url: str) -> None:
    harness.make_inputs(4)
    started_file = harness.root / "started.txt"
    harness.write_job(
        STUCK, mini_batch_size=1, environment_variables={"STARTED": str(started_file)}
    )
    worker = harness.start_worker(rabbitmq_url)
    harness.start_run(broker=rabbitmq_url)
    wait_for(
        lambda: started_file.exists() and len(started_file.read_text().split()) == 2,
        60,
        "both runners to be in run()",
    )
    runners = [int(pid) for pid in started_file.read_text().split()]

    worker.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert worker.poll() is None, "one signal drains: the worker waits for its batches"
    worker.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    code = worker.wait(10)

    assert code == 130, harness.log_of(worker)
    assert time.monotonic() - stopped < 5
    time.sleep(0.3)
    assert [pid for pid in runners if pid_alive(pid)] == [], "runners die with the worker"
