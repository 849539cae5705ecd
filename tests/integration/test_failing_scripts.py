"""Scripts that raise, return short, hang, die or do not load; bad specs; error thresholds."""

from __future__ import annotations

import subprocess
import time

import pytest
from helpers import LINE_PER_FILE, Harness, pid_alive, tagged_pids

pytestmark = pytest.mark.timeout(120)

RAISES_ON_ONE = """\
import os


def run(mini_batch):
    for p in mini_batch:
        if p.endswith("00007.txt"):
            raise ValueError(f"bad input {os.path.basename(p)}")
    return [f"{os.path.basename(p)} {open(p).read()}" for p in mini_batch]
"""


def test_a_batch_that_raises_fails_alone_and_is_reported(harness: Harness) -> None:
    harness.make_inputs(20)
    harness.write_job(RAISES_ON_ONE, mini_batch_size=5, run_max_try=2)

    result = harness.run()

    assert result.returncode == 0, result.stderr
    summary = harness.summary()
    assert summary["status"] == "succeeded"
    assert summary["items"] == {"total": 20, "succeeded": 15, "failed": 5}
    assert summary["mini_batches"] == {"total": 4, "succeeded": 3, "failed": 1, "retried": 1}
    batch_1 = [str(p) for p in harness.inputs[5:10]]
    assert harness.failed_items() == batch_1
    errors = harness.errors()
    assert [(e["batch"], e["attempt"], e["kind"], e["type"]) for e in errors] == [
        (1, 1, "exception", "ValueError"),
        (1, 2, "exception", "ValueError"),
    ]
    for error in errors:
        assert error["message"] == "bad input 00007.txt"
        assert error["items"] == batch_1
        assert "score.py" in error["traceback"]
        assert "ValueError: bad input 00007.txt" in error["traceback"]
    expected = harness.expected_lines()
    assert harness.output_lines() == expected[:5] + expected[10:]


SHORT_RETURN = """\
import os


def run(mini_batch):
    lines = [f"{os.path.basename(p)} {open(p).read()}" for p in mini_batch]
    if any(p.endswith("00007.txt") for p in mini_batch):
        return lines[:3]
    return lines
"""


def test_a_short_return_counts_the_shortfall_as_failed(harness: Harness) -> None:
    harness.make_inputs(20)
    harness.write_job(SHORT_RETURN, mini_batch_size=5)

    result = harness.run()

    assert result.returncode == 0, result.stderr
    summary = harness.summary()
    assert summary["items"] == {"total": 20, "succeeded": 18, "failed": 2}
    assert summary["mini_batches"]["failed"] == 1
    assert summary["mini_batches"]["retried"] == 0
    errors = harness.errors()
    assert len(errors) == 1
    assert errors[0]["kind"] == "short_return"
    assert errors[0]["batch"] == 1
    assert "returned 3 of 5" in errors[0]["message"]
    assert harness.failed_items() == [], "which items of a short list return failed is unknown"
    expected = harness.expected_lines()
    assert harness.output_lines() == expected[:8] + expected[10:]


DICT_RETURN = """\
import os

MISSING = ("00007.txt", "00012.txt")


def run(mini_batch):
    return {
        p: f"{os.path.basename(p)} {open(p).read()}"
        for p in reversed(mini_batch)
        if os.path.basename(p) not in MISSING
    }
"""


def test_a_dict_return_names_exactly_the_missing_items(harness: Harness) -> None:
    harness.make_inputs(20)
    harness.write_job(DICT_RETURN, mini_batch_size=5)

    result = harness.run()

    assert result.returncode == 0, result.stderr
    assert harness.failed_items() == [str(harness.inputs[7]), str(harness.inputs[12])]
    summary = harness.summary()
    assert summary["items"] == {"total": 20, "succeeded": 18, "failed": 2}
    assert summary["mini_batches"]["failed"] == 2
    kept = [line for line in harness.expected_lines() if line.split()[0] not in DICT_MISSING]
    assert harness.output_lines() == kept, "dict returns are written in input order"
    assert [e["kind"] for e in harness.errors()] == ["short_return", "short_return"]


DICT_MISSING = ("00007.txt", "00012.txt")

FAILS_ALL = """\
def run(mini_batch):
    raise RuntimeError("nothing works")
"""


@pytest.mark.parametrize(
    ("threshold", "reason_names"),
    [
        ({"error_threshold": 5}, "error_threshold=5"),
        ({"allowed_failed_count": 5}, "allowed_failed_count=5"),
        ({"allowed_failed_percent": 10}, "allowed_failed_percent=10"),
    ],
)
def test_a_job_past_its_failure_threshold_is_aborted_early(
    harness: Harness, threshold: dict[str, int], reason_names: str
) -> None:
    harness.make_inputs(100)
    harness.write_job(
        FAILS_ALL, mini_batch_size=1, run_max_try=1, process_count_per_node=1, **threshold
    )

    result = harness.run()

    assert result.returncode == 1, result.stderr
    summary = harness.summary()
    assert summary["status"] == "aborted"
    assert reason_names in summary["reason"]
    assert reason_names in result.stderr
    assert summary["output"] is None
    assert not (harness.out_dir / "parallel_run_step.txt").exists()
    assert len(harness.parts()) <= 50, f"{len(harness.parts())} of 100 batches ran after abort"
    assert summary["mini_batches"]["failed"] > 5
    assert summary["mini_batches"]["total"] == 100


HANGS = """\
import os
import subprocess
import subprocess
import time


def run(mini_batch):
    for p in mini_batch:
        if p.endswith("00003.txt"):
            child = subprocess.Popen(["sleep", "1000"])
            with open(os.environ["PIDS"], "a") as out:
                out.write(f"{os.getpid()} {child.pid}\\n")
            time.sleep(1000)
    return [os.path.basename(p) for p in mini_batch]
"""


def test_a_hanging_run_is_killed_at_the_timeout_with_what_it_started(harness: Harness) -> None:
    harness.make_inputs(12)
    pids_file = harness.root / "pids.txt"
    harness.write_job(
        HANGS,
        mini_batch_size=2,
        run_invocation_timeout=2,
        run_max_try=2,
        environment_variables={"PIDS": str(pids_file)},
    )
    started = time.monotonic()

    result = harness.run(timeout=60)

    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert took < 20, f"the job took {took:.1f} s"
    errors = harness.errors()
    assert [(e["batch"], e["attempt"], e["kind"]) for e in errors] == [
        (1, 1, "timeout"),
        (1, 2, "timeout"),
    ]
    assert "run_invocation_timeout" in errors[0]["message"]
    assert harness.failed_items() == [str(p) for p in harness.inputs[2:4]]
    pids = [int(pid) for line in pids_file.read_text().splitlines() for pid in line.split()]
    assert len(pids) == 4, "two tries, each a runner and its child"
    time.sleep(0.5)
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert tagged_pids(harness.namespace) == []
    expected = [p.name for p in harness.inputs]
    assert harness.output_lines() == expected[:2] + expected[4:]


DIES_ONCE = """\
import os
import signal


def run(mini_batch):
    for p in mini_batch:
        marker = os.environ["MARKER"]
        if p.endswith("00007.txt") and not os.path.exists(marker):
            open(marker, "w").close()
            if os.environ["HOW"] == "exit":
                os._exit(3)
            os.kill(os.getpid(), signal.SIGKILL)
    return [f"{os.path.basename(p)} {open(p).read()}" for p in mini_batch]
"""


@pytest.mark.parametrize(
    ("how", "said"), [("exit", "exited with code 3"), ("kill", "was killed by SIGKILL")]
)
def test_a_runner_that_dies_costs_its_batch_one_try_and_no_rows(
    harness: Harness, how: str, said: str
) -> None:
    harness.make_inputs(30)
    harness.write_job(
        DIES_ONCE,
        mini_batch_size=4,
        process_count_per_node=2,
        environment_variables={"MARKER": str(harness.root / "died"), "HOW": how},
    )

    result = harness.run()

    assert result.returncode == 0, result.stderr
    assert harness.output_lines() == harness.expected_lines()
    summary = harness.summary()
    assert summary["items"] == {"total": 30, "succeeded": 30, "failed": 0}
    assert summary["mini_batches"] == {"total": 8, "succeeded": 8, "failed": 0, "retried": 1}
    errors = harness.errors()
    assert [(e["batch"], e["attempt"], e["kind"]) for e in errors] == [(1, 1, "runner_died")]
    assert said in errors[0]["message"]


def test_an_unknown_key_in_the_spec_exits_2_and_names_it(harness: Harness) -> None:
    harness.make_inputs(3)
    harness.write_job(LINE_PER_FILE, mini_batch_sise=3)

    result = harness.run(timeout=60)

    assert result.returncode == 2
    assert "mini_batch_sise" in result.stderr
    assert not harness.out_dir.exists()


def test_a_bad_value_exits_2_and_names_the_key(harness: Harness) -> None:
    harness.make_inputs(3)
    harness.write_job(LINE_PER_FILE)

    result = harness.run(sets={"run_max_try": 0}, timeout=60)

    assert result.returncode == 2
    assert "run_max_try" in result.stderr


def test_a_missing_entry_script_exits_2(harness: Harness) -> None:
    harness.make_inputs(3)
    harness.write_job(LINE_PER_FILE, entry_script="nowhere.py")

    result = harness.run(timeout=60)

    assert result.returncode == 2
    assert "nowhere.py" in result.stderr
    assert "entry_script" in result.stderr


@pytest.mark.parametrize(
    ("script", "said", "kind"),
    [
        ("def run(mini_batch)\n    return mini_batch\n", "SyntaxError", "script_invalid"),
        ("def init():\n    pass\n", "defines no run(mini_batch) function", "script_invalid"),
        (
            "def init():\n    raise OSError('model file missing')\n\n"
            "def run(mini_batch):\n    return mini_batch\n",
            "model file missing",
            "init_failed",
        ),
    ],
    ids=["syntax-error", "no-run", "init-raises"],
)
def test_a_script_that_cannot_start_fails_the_job_with_a_clear_reason(
    harness: Harness, script: str, said: str, kind: str
) -> None:
    harness.make_inputs(10)
    harness.write_job(script, mini_batch_size=5, run_max_try=2)
    started = time.monotonic()

    result = harness.run(timeout=60)

    assert time.monotonic() - started < 30
    assert result.returncode == 1, result.stderr
    summary = harness.summary()
    assert summary["status"] == "failed"
    assert said in summary["reason"]
    assert said in result.stderr
    assert summary["items"]["total"] == 10
    assert summary["items"]["succeeded"] == 0
    # A script that cannot load stops the job at its first failed batch (both batches may
    # have failed by then, on two runners); init() failures use their tries.
    assert summary["items"]["failed"] in ((10,) if kind == "init_failed" else (5, 10))
    assert {e["kind"] for e in harness.errors()} == {kind}


def test_a_script_that_cannot_load_fails_a_big_job_quickly(harness: Harness) -> None:
    """A script that does not compile is a poison failure: it must not be retried per batch.

    Starting a runner to find the same SyntaxError takes about half a second; doing it
    run_max_try times for every batch makes a 10,000-batch job take hours to say so.
    """
    harness.make_inputs(100)
    harness.write_job(
        "def run(mini_batch)\n    return mini_batch\n", mini_batch_size=1, process_count_per_node=2
    )
    run = harness.start_run()

    try:
        code = run.wait(20)
    except subprocess.TimeoutExpired:
        done = len(harness.parts())
        pytest.fail(f"after 20 s the job was still trying the script: {done} of 100 batches done")
    assert code == 1, harness.log_of(run)
    assert harness.summary()["status"] in ("failed", "aborted")
