"""Jobs on RabbitMQ served by `fleetrun worker` daemons."""

from __future__ import annotations

import io
import json
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


RECORDS_PIDS = """\
import os, time

def init():
    with open(os.environ["INITS"], "a") as log:
        log.write(f"{os.getpid()}\\n")

def run(mini_batch):
    time.sleep(0.05)  # long enough that one runner cannot take every batch
    return [os.path.basename(p) for p in mini_batch]

def shutdown():
    with open(os.environ["SHUTDOWNS"], "a") as log:
        log.write(f"{os.getpid()}\\n")
"""


def test_jobs_one_after_another_each_get_every_runner_and_shutdown_runs_at_the_end(
    harness: Harness, rabbitmq_url: str
) -> None:
    """A finished job frees its runners at once: the next job gets both (not one of them for
    the dispatcher's 10 s switch delay, longer than this job), and the script's shutdown()
    runs when the job ends, not when the runner would idle out minutes later."""
    harness.make_inputs(40)
    inits, shutdowns = harness.root / "inits.txt", harness.root / "shutdowns.txt"
    shutdowns.write_text("")
    worker = harness.start_worker(rabbitmq_url, processes=2)
    harness.wait_ready(worker)
    for job in ("first", "second"):
        harness.write_job(
            RECORDS_PIDS,
            name=job,
            mini_batch_size=2,
            environment_variables={"INITS": str(inits), "SHUTDOWNS": str(shutdowns)},
        )
        inits.write_text("")

        result = harness.run(broker=rabbitmq_url)

        assert result.returncode == 0, result.stderr
        assert harness.output_lines() == sorted(p.name for p in harness.inputs)
        runners = set(inits.read_text().split())
        assert len(runners) == 2, f"job {job}: init() ran in {runners}, expected two runners"

        def shut_down(runners: set[str] = runners) -> bool:
            return runners <= set(shutdowns.read_text().split())

        wait_for(shut_down, 10, f"shutdown() of job {job} in both its runners")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, harness.log_of(worker)


TAKES_ITS_WORKERS_TIME = """\
import os, time

def run(mini_batch):
    time.sleep(float(os.environ["BATCH_SECONDS"]))
    return [f"{os.path.basename(p)} {os.environ['WORKER_TAG']}" for p in mini_batch]
"""


def test_a_slow_worker_holds_few_batches_so_a_fast_one_takes_the_rest(
    harness: Harness, rabbitmq_url: str
) -> None:
    """With batches of a second or so, a worker holds one running and one staged per runner
    (the adaptive prefetch), not a deep queue that a faster worker would wait on at the end
    of the job."""
    harness.make_inputs(24)
    harness.write_job(TAKES_ITS_WORKERS_TIME, mini_batch_size=1)
    workers = [
        harness.start_worker(
            rabbitmq_url, processes=1, env={"WORKER_TAG": tag, "BATCH_SECONDS": seconds}
        )
        for tag, seconds in (("slow", "1.5"), ("fast", "0.05"))
    ]
    for worker in workers:
        harness.wait_ready(worker)

    result = harness.run(broker=rabbitmq_url)

    assert result.returncode == 0, result.stderr
    lines = harness.output_lines()
    assert [line.split()[0] for line in lines] == [p.name for p in harness.inputs]
    by_slow = sum(line.endswith(" slow") for line in lines)
    # Holding 8 (the old fixed prefetch), the slow one would run 8 batches and the job would
    # wait 12 s for it; holding 2, it runs 2 or 3 while the fast one runs the rest.
    assert 1 <= by_slow <= 4, f"the slow worker ran {by_slow} of 24 batches"
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(30) == 0, harness.log_of(worker)


FAST_THEN_SLOW = """\
import os, time

def run(mini_batch):
    for path in mini_batch:
        if int(os.path.basename(path).split(".")[0]) >= 30:
            time.sleep(0.15)
    return [os.path.basename(p) for p in mini_batch]
"""


def test_a_shrinking_prefetch_hands_batches_back_at_no_cost(
    harness: Harness, rabbitmq_url: str
) -> None:
    """Instant batches raise a worker's prefetch; when they turn slow it shrinks, and the held
    batches beyond it go back to the queue: each still runs once, none counts a try."""
    harness.make_inputs(60)
    harness.write_job(FAST_THEN_SLOW, mini_batch_size=1, run_max_try=1)
    worker = harness.start_worker(rabbitmq_url, processes=1, extra=["--log-level", "DEBUG"])
    harness.wait_ready(worker)

    result = harness.run(broker=rabbitmq_url)

    assert result.returncode == 0, result.stderr
    assert harness.output_lines() == [p.name for p in harness.inputs]
    summary = harness.summary()
    assert summary["mini_batches"] == {"total": 60, "succeeded": 60, "failed": 0, "retried": 0}
    changes = [
        json.loads(line)
        for line in harness.log_of(worker).splitlines()
        if "Prefetch changed" in line
    ]
    assert changes and changes[0]["prefetch"] > 2, f"the prefetch never grew: {changes}"
    shrinks = [c for c in changes[1:] if c["prefetch"] < changes[0]["prefetch"]]
    assert shrinks and sum(c["handed_back"] for c in shrinks) > 0, changes
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, harness.log_of(worker)
