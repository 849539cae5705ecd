"""Planning: inputs in order, cut into consecutive mini-batches; the job's output never an input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fleetrun.common.errors import SpecError
from fleetrun.common.spec import load_spec
from fleetrun.coordinator.planner import describe_plan, plan_batches

JobWriter = Callable[..., Path]  # the write_job fixture of conftest.py


def test_batches_are_consecutive_runs_of_the_mini_batch_size_in_input_order(
    write_job: JobWriter, data_dir: Path
) -> None:
    batches = list(plan_batches(load_spec(write_job(mini_batch_size=10))))
    assert [len(b) for b in batches] == [10, 10, 3]
    flat = [uri for batch in batches for uri in batch]
    assert flat == [str(data_dir / f"img_{i:03d}.txt") for i in range(23)]


def test_a_mini_batch_size_of_one_gives_one_batch_per_file(
    write_job: JobWriter, data_dir: Path
) -> None:
    batches = list(plan_batches(load_spec(write_job(mini_batch_size=1))))
    assert batches == [[str(data_dir / f"img_{i:03d}.txt")] for i in range(23)]


def test_a_mini_batch_size_larger_than_the_inputs_gives_one_batch(
    write_job: JobWriter, data_dir: Path
) -> None:
    batches = list(plan_batches(load_spec(write_job(mini_batch_size=100))))
    assert [len(b) for b in batches] == [23]


def test_the_jobs_own_output_folder_inside_an_input_folder_is_not_listed(
    write_job: JobWriter, data_dir: Path
) -> None:
    out = data_dir / "out"
    (out / "_fleetrun" / "parts").mkdir(parents=True)
    (out / "_fleetrun" / "parts" / "000000000.part").write_text("{}\n")
    (out / "parallel_run_step.txt").write_text("old output\n")
    (data_dir / "out-extra.txt").write_text("a real input beside the output folder\n")
    spec = load_spec(write_job(inputs=["../data"], output="../data/out", mini_batch_size=50))
    (batch,) = plan_batches(spec)
    assert len(batch) == 24
    assert str(data_dir / "out-extra.txt") in batch
    assert not [uri for uri in batch if uri.startswith(str(out) + "/")]


def test_inputs_without_any_file_are_a_spec_error(write_job: JobWriter, tmp_path: Path) -> None:
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    spec = load_spec(write_job(inputs=["../empty"]))
    with pytest.raises(SpecError, match="matched no files"):
        list(plan_batches(spec))


def test_a_glob_that_matches_nothing_is_a_spec_error(write_job: JobWriter, data_dir: Path) -> None:
    spec = load_spec(write_job(inputs=["../data/*.png"]))
    with pytest.raises(SpecError, match="matched no files"):
        list(plan_batches(spec))


def test_a_missing_input_is_a_spec_error_naming_it(write_job: JobWriter, data_dir: Path) -> None:
    spec = load_spec(write_job(inputs=["../data", "../missing"]))
    with pytest.raises(SpecError, match="missing"):
        list(plan_batches(spec))


def test_the_plan_report_counts_inputs_batches_and_files_per_input(
    write_job: JobWriter, data_dir: Path, tmp_path: Path
) -> None:
    more = tmp_path / "more"
    more.mkdir()
    for name in ("x.txt", "y.txt"):
        (more / name).write_text(name)
    spec = load_spec(write_job(inputs=["../data", "../more"], mini_batch_size=10))
    report = describe_plan(spec)
    assert (report.inputs, report.batches) == (25, 3)
    assert report.per_input == {str(data_dir): 23, str(more): 2}
    assert report.render().splitlines()[0] == (
        "25 input files in 3 mini-batches (2 of 10 files, 1 of 5 files)"
    )
