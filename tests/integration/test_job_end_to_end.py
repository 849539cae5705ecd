"""A job from the command line and from Python, on the embedded broker: outputs, plan, reuse."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from helpers import LINE_PER_FILE, Harness, wait_for

import fleetrun
from fleetrun.coordinator.progress import Progress

pytestmark = pytest.mark.timeout(120)

WITH_INIT = """\
import os

PREFIX = None


def init():
    global PREFIX
    PREFIX = "scored"
    with open(os.environ["INIT_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")


def run(mini_batch):
    return [f"{PREFIX} {os.path.basename(p)} {open(p).read()}" for p in mini_batch]
"""


def test_a_job_gives_the_sequential_output_line_for_line(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.make_inputs(45)
    init_log = harness.root / "init.log"
    harness.write_job(
        WITH_INIT,
        mini_batch_size=4,
        process_count_per_node=2,
        environment_variables={"INIT_LOG": str(init_log)},
    )

    result = harness.run()

    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("INIT_LOG", str(harness.root / "sequential-init.log"))
    expected = harness.sequential_run(4)
    assert harness.output_lines() == expected
    assert len(expected) == 45 and expected[0].startswith("scored 00000.txt ")
    summary = harness.summary()
    assert summary["status"] == "succeeded"
    assert summary["items"] == {"total": 45, "succeeded": 45, "failed": 0}
    assert summary["mini_batches"] == {"total": 12, "succeeded": 12, "failed": 0, "retried": 0}
    assert summary["output"] == str(harness.out_dir / "parallel_run_step.txt")
    assert summary["job_id"].startswith("itest-")
    assert harness.failed_items() == []
    assert harness.errors() == []
    assert len(harness.parts()) == 12


def test_plan_prints_the_input_and_mini_batch_counts(harness: Harness) -> None:
    harness.make_inputs(45)
    harness.write_job(LINE_PER_FILE, mini_batch_size=4)
    command = [sys.executable, "-m", "fleetrun", "plan", str(harness.job_file)]

    plain = subprocess.run(command, env=harness.env(), capture_output=True, text=True, timeout=60)
    overridden = subprocess.run(
        [*command, "--set", "mini_batch_size=5"],
        env=harness.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert plain.returncode == 0, plain.stderr
    assert "45 input files in 12 mini-batches (11 of 4 files, 1 of 1 file)" in plain.stdout
    assert f"{harness.data_dir}: 45 files" in plain.stdout
    assert overridden.returncode == 0, overridden.stderr
    assert "45 input files in 9 mini-batches (9 of 5 files)" in overridden.stdout
    assert not harness.out_dir.exists(), "plan must not run or write anything"


def test_set_overrides_reach_the_spec_and_the_plan(harness: Harness) -> None:
    harness.make_inputs(45)
    harness.write_job(LINE_PER_FILE, mini_batch_size=4)

    result = harness.run(sets={"mini_batch_size": 5, "run_max_try": 1})

    assert result.returncode == 0, result.stderr
    spec = harness.effective_spec()
    assert spec["mini_batch_size"] == 5
    assert spec["run_max_try"] == 1
    assert harness.summary()["mini_batches"]["total"] == 9
    assert len(harness.parts()) == 9
    assert harness.output_lines() == harness.expected_lines()


def test_fleetrun_run_from_python_returns_the_summary(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETRUN_CACHE_DIR", str(harness.cache_dir))
    monkeypatch.setenv("FLEETRUN_TEST_TAG", harness.namespace)
    monkeypatch.delenv("FLEETRUN_BROKER", raising=False)
    harness.make_inputs(30)
    harness.write_job(LINE_PER_FILE, mini_batch_size=7, process_count_per_node=2)
    stream = io.StringIO()

    summary = fleetrun.run(fleetrun.load_spec(harness.job_file), progress=Progress(stream))

    assert isinstance(summary, fleetrun.Summary)
    assert summary.status == "succeeded"
    assert summary.exit_code == 0
    assert summary.items.total == 30 and summary.items.succeeded == 30
    assert summary.mini_batches.total == 5
    assert summary.model_dump() == harness.summary()
    assert harness.output_lines() == harness.expected_lines()
    report = fleetrun.plan(fleetrun.load_spec(harness.job_file))
    assert (report.inputs, report.batches) == (30, 5)


def test_a_finished_job_is_reused_unless_allow_reuse_is_false(harness: Harness) -> None:
    harness.make_inputs(20)
    init_log = harness.root / "init.log"
    harness.write_job(
        WITH_INIT, mini_batch_size=5, environment_variables={"INIT_LOG": str(init_log)}
    )
    first = harness.run()
    assert first.returncode == 0, first.stderr
    summary = harness.summary()
    output = harness.output_lines()
    inits = init_log.read_text().splitlines()
    ledger_files = sorted(p.name for p in (harness.out_dir / "_fleetrun" / "ledger").iterdir())

    again = harness.run()

    assert again.returncode == 0, again.stderr
    assert "reusing its outputs" in again.stderr
    assert harness.summary() == summary, "a reused job keeps its summary"
    assert harness.output_lines() == output
    assert init_log.read_text().splitlines() == inits, "no runner started for a reused job"
    assert sorted(p.name for p in (harness.out_dir / "_fleetrun" / "ledger").iterdir()) == (
        ledger_files
    )

    forced = harness.run(sets={"allow_reuse": "false"})

    assert forced.returncode == 0, forced.stderr
    rerun = harness.summary()
    assert rerun["job_id"] == summary["job_id"]
    assert rerun["items"] == summary["items"]
    assert rerun["mini_batches"] == summary["mini_batches"]
    assert rerun["finished_at"] >= summary["finished_at"]
    assert len(init_log.read_text().splitlines()) > len(inits), "the job ran again"
    assert harness.output_lines() == output
    assert sorted(p.name for p in (harness.out_dir / "_fleetrun" / "ledger").iterdir()) != (
        ledger_files
    )


SUMMARY_ONLY = """\
import os

from fleetrun import context


def run(mini_batch):
    out = context.output_dir / "own" / f"{context.minibatch_index:04d}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{os.path.basename(p)}\\n" for p in mini_batch))
    return [True] * len(mini_batch)
"""


def test_summary_only_writes_no_output_file_but_counts_the_items(harness: Harness) -> None:
    harness.make_inputs(23)
    harness.write_job(SUMMARY_ONLY, mini_batch_size=5, output_action="summary_only")

    result = harness.run()

    assert result.returncode == 0, result.stderr
    assert not (harness.out_dir / "parallel_run_step.txt").exists()
    summary = harness.summary()
    assert summary["status"] == "succeeded"
    assert summary["output"] is None
    assert summary["items"] == {"total": 23, "succeeded": 23, "failed": 0}
    own = sorted((harness.out_dir / "own").glob("*.txt"))
    assert [p.name for p in own] == [f"{i:04d}.txt" for i in range(5)]
    names = [line for p in own for line in p.read_text().splitlines()]
    assert names == [p.name for p in harness.inputs]


HELD_BACK = """\
import os
import time


def run(mini_batch):
    # The last batches wait for the test's go-ahead, so it can look at the job mid-way.
    if any(os.path.basename(p) >= "00012.txt" for p in mini_batch):
        deadline = time.monotonic() + 60
        while not os.path.exists(os.environ["GO"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    return [f"{os.path.basename(p)} {open(p).read()}" for p in mini_batch]
"""


def test_the_output_file_is_joined_while_the_job_runs(harness: Harness) -> None:
    harness.make_inputs(20)
    go = harness.root / "go"
    harness.write_job(
        HELD_BACK,
        mini_batch_size=4,
        process_count_per_node=2,
        environment_variables={"GO": str(go)},
    )
    partial = harness.out_dir / "_fleetrun" / "output.partial"
    run = harness.start_run()
    try:
        # Batches 0-2 are done while 3 and 4 wait: the file is being joined, not yet in place.
        wait_for(lambda: len(harness.parts()) >= 3, 60, "the first three parts")
        wait_for(partial.exists, 30, "the output being joined")
        assert not (harness.out_dir / "parallel_run_step.txt").exists()
    finally:
        go.touch()
    assert run.wait(60) == 0, Harness.log_of(run)

    assert harness.output_lines() == harness.expected_lines()
    assert not partial.exists()
