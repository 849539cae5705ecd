"""The command line without services: exit codes and messages for bad specs, and `plan`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fleetrun.cli import EXIT_BAD_SPEC, EXIT_OK, main

JobWriter = Callable[..., Path]  # the write_job fixture of conftest.py


def test_run_with_an_unknown_key_exits_2_and_names_the_key(
    write_job: JobWriter, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = write_job(retries=3)
    assert main(["run", str(job_file), "--quiet"]) == EXIT_BAD_SPEC
    captured = capsys.readouterr()
    assert "retries" in captured.err
    assert "run_max_try" in captured.err  # the valid keys are listed
    assert captured.out == ""
    assert not (job_file.parent.parent / "out").exists()  # nothing was started


def test_run_with_a_bad_set_override_exits_2_and_names_the_key(
    write_job: JobWriter, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", str(write_job()), "--quiet", "--set", "run_max_try=many"])
    assert code == EXIT_BAD_SPEC
    assert "run_max_try" in capsys.readouterr().err


def test_plan_with_a_missing_entry_script_exits_2_and_says_where_it_looked(
    write_job: JobWriter, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(write_job(entry_script="nope.py"))]) == EXIT_BAD_SPEC
    assert "nope.py" in capsys.readouterr().err


def test_plan_with_a_missing_input_exits_2(
    write_job: JobWriter, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(write_job(inputs=["../absent"]))]) == EXIT_BAD_SPEC
    assert "absent" in capsys.readouterr().err


def test_plan_prints_the_counts_of_inputs_and_mini_batches(
    write_job: JobWriter, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(write_job(mini_batch_size=10))]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "23 input files in 3 mini-batches (2 of 10 files, 1 of 3 files)"
    assert out[1] == f"  {data_dir}: 23 files"


def test_plan_takes_set_overrides(
    write_job: JobWriter, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(write_job()), "--set", "mini_batch_size=5"]) == EXIT_OK
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "23 input files in 5 mini-batches (4 of 5 files, 1 of 3 files)"


def test_a_command_line_without_a_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
