"""The entry-script contract as runner processes keep it: init, shutdown, argv, env, context."""

from __future__ import annotations

import json

import pytest
from helpers import Harness

pytestmark = pytest.mark.timeout(120)

LIFECYCLE = """\
import json
import os
import sys


def init():
    with open(os.environ["LOGS"] + "/init.log", "a") as log:
        log.write(f"{os.getpid()}\\n")
    with open(os.environ["LOGS"] + f"/argv-{os.getpid()}.json", "w") as out:
        json.dump({"argv": sys.argv, "env": os.environ.get("GREETING")}, out)


def run(mini_batch):
    with open(os.environ["LOGS"] + "/run.log", "a") as log:
        log.write(f"{os.getpid()}\\n")
    return [f"{os.environ['GREETING']} {os.path.basename(p)}" for p in mini_batch]


def shutdown():
    with open(os.environ["LOGS"] + "/shutdown.log", "a") as log:
        log.write(f"{os.getpid()}\\n")
"""


def test_init_runs_once_per_runner_and_shutdown_when_it_stops(harness: Harness) -> None:
    harness.make_inputs(60)
    logs = harness.root / "script-logs"
    logs.mkdir()
    harness.write_job(
        LIFECYCLE,
        mini_batch_size=3,
        process_count_per_node=2,
        arguments=["--alpha", "1", "two words"],
        environment_variables={"LOGS": str(logs), "GREETING": "hello"},
    )

    result = harness.run()

    assert result.returncode == 0, result.stderr
    inits = (logs / "init.log").read_text().split()
    runs = (logs / "run.log").read_text().split()
    assert 1 <= len(inits) <= 2
    assert len(set(inits)) == len(inits), "init() ran twice in one runner"
    assert set(runs) <= set(inits), "a runner ran batches without init()"
    assert len(runs) == 20
    assert sorted((logs / "shutdown.log").read_text().split()) == sorted(inits)
    for pid in inits:
        seen = json.loads((logs / f"argv-{pid}.json").read_text())
        assert seen == {"argv": ["score.py", "--alpha", "1", "two words"], "env": "hello"}
    assert harness.output_lines() == [f"hello {p.name}" for p in harness.inputs]


CONTEXT = """\
import os

from fleetrun import context


def run(mini_batch, mini_batch_context):
    assert mini_batch_context.minibatch_index == context.minibatch_index
    return [
        f"{context.job_id} {context.attempt} {mini_batch_context.minibatch_index} "
        f"{context.output_dir} {os.path.basename(p)}"
        for p in mini_batch
    ]
"""


def test_the_script_sees_fleetrun_context_and_the_mini_batch_context(harness: Harness) -> None:
    harness.make_inputs(14)
    harness.write_job(CONTEXT, mini_batch_size=4)

    result = harness.run()

    assert result.returncode == 0, result.stderr
    job_id = harness.summary()["job_id"]
    expected = [
        f"{job_id} 1 {i // 4} {harness.out_dir} {p.name}" for i, p in enumerate(harness.inputs)
    ]
    assert harness.output_lines() == expected


OWN_MODULES = """\
import os

import common
import worker
from fleetrun import context


def run(mini_batch):
    assert context.job_id
    return [f"{common.TAG} {worker.double(len(os.path.basename(p)))}" for p in mini_batch]
"""


def test_a_script_imports_its_own_common_and_worker_modules(harness: Harness) -> None:
    harness.make_inputs(6)
    harness.write_job(
        OWN_MODULES,
        mini_batch_size=4,
        files={"common.py": 'TAG = "mine"\n', "worker.py": "def double(x):\n    return 2 * x\n"},
    )

    result = harness.run()

    assert result.returncode == 0, result.stderr
    assert harness.output_lines() == ["mine 18"] * 6


NESTED = """\
import os

from helpers_of_mine.text import shout


def run(mini_batch):
    return [shout(os.path.basename(p)) for p in mini_batch]
"""


def test_an_entry_script_in_a_subfolder_imports_its_neighbours(harness: Harness) -> None:
    harness.make_inputs(3)
    harness.write_job(
        "",
        files={
            "src/main.py": NESTED,
            "src/helpers_of_mine/__init__.py": "",
            "src/helpers_of_mine/text.py": "def shout(s):\n    return s.upper()\n",
        },
        entry_script="src/main.py",
    )

    result = harness.run()

    assert result.returncode == 0, result.stderr
    assert harness.output_lines() == [p.name.upper() for p in harness.inputs]
