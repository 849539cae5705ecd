"""The job spec: validation messages that name the key and the fix, paths, overrides, job id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fleetrun.common import snapshot
from fleetrun.common.errors import SpecError
from fleetrun.common.spec import JobSpec, infer_input_format, load_spec, parse_overrides

JobWriter = Callable[..., Path]  # the write_job fixture of conftest.py


def spec_error(job_file: Path, **overrides: object) -> str:
    with pytest.raises(SpecError) as error:
        load_spec(job_file, overrides)
    return str(error.value)


def test_an_unknown_key_is_named_with_the_list_of_valid_keys(write_job: JobWriter) -> None:
    message = spec_error(write_job(mini_batch_sise=5))
    assert "mini_batch_sise" in message
    for valid in ("mini_batch_size", "run_max_try", "error_threshold", "inputs", "output"):
        assert valid in message


def test_a_value_of_the_wrong_type_names_its_key(write_job: JobWriter) -> None:
    message = spec_error(write_job(run_max_try="x"))
    assert "run_max_try" in message
    assert "'x'" in message


def test_a_value_out_of_range_names_its_key(write_job: JobWriter) -> None:
    assert "process_count_per_node" in spec_error(write_job(process_count_per_node=0))


def test_a_missing_required_key_is_named(write_job: JobWriter) -> None:
    message = spec_error(write_job(output=None))
    assert "'output' is required" in message


def test_a_missing_entry_script_names_the_path_and_the_fix(
    write_job: JobWriter, job_dir: Path
) -> None:
    message = spec_error(write_job(entry_script="scorer.py"))
    assert str(job_dir / "scorer.py") in message
    assert "source_directory" in message
    assert "fix the path" in message


def test_relative_paths_are_resolved_against_the_job_files_folder(
    write_job: JobWriter,
    job_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_file = write_job(inputs=["../data", "../more/*.png"], output="../out")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(job_file)
    assert spec.inputs == [str(tmp_path / "data"), str(tmp_path / "more" / "*.png")]
    assert spec.output == str(tmp_path / "out")
    assert spec.source_directory == str(job_dir)


def test_uris_are_kept_as_they_are(write_job: JobWriter) -> None:
    spec = load_spec(write_job(inputs=["s3://bucket/images/"], output="az://container/out"))
    assert spec.inputs == ["s3://bucket/images"]
    assert spec.output == "az://container/out"


def test_set_overrides_are_parsed_as_yaml_values() -> None:
    overrides = parse_overrides(
        ["mini_batch_size=5", "inputs=[a, b]", "allow_reuse=false", "name=x=y", "arguments="]
    )
    assert overrides == {
        "mini_batch_size": 5,
        "inputs": ["a", "b"],
        "allow_reuse": False,
        "name": "x=y",
        "arguments": "",
    }


def test_a_set_override_without_an_equals_sign_is_refused_with_an_example() -> None:
    with pytest.raises(SpecError, match="key=value"):
        parse_overrides(["mini_batch_size"])


def test_set_overrides_replace_the_files_values(write_job: JobWriter, tmp_path: Path) -> None:
    job_file = write_job()
    overrides = parse_overrides(["mini_batch_size=3", "inputs=[../a, ../b]", "run_max_try=7"])
    spec = load_spec(job_file, overrides)
    assert spec.batch_size == 3
    assert spec.run_max_try == 7
    assert spec.inputs == [str(tmp_path / "a"), str(tmp_path / "b")]


def job_id(spec: JobSpec) -> str:
    _code, digest = snapshot.build(Path(spec.source_directory))
    return spec.resolved_job_id(digest)


def test_the_job_id_is_stable_for_the_same_spec_and_code(write_job: JobWriter) -> None:
    job_file = write_job()
    first = job_id(load_spec(job_file))
    assert first.startswith("unit-")
    assert job_id(load_spec(job_file)) == first


def test_the_job_id_changes_when_the_code_changes(write_job: JobWriter, job_dir: Path) -> None:
    job_file = write_job()
    before = job_id(load_spec(job_file))
    (job_dir / "helper.py").write_text("FACTOR = 2\n")
    assert job_id(load_spec(job_file)) != before


def test_the_job_id_does_not_change_when_a_file_is_only_touched(
    write_job: JobWriter, job_dir: Path
) -> None:
    job_file = write_job()
    before = job_id(load_spec(job_file))
    script = job_dir / "score.py"
    script.write_text(script.read_text())  # a new mtime, the same bytes
    assert job_id(load_spec(job_file)) == before


@pytest.mark.parametrize(
    "override",
    [
        {"error_threshold": 5},
        {"allowed_failed_count": 2},
        {"allowed_failed_percent": 10},
        {"run_max_try": 9},
        {"run_invocation_timeout": 600},
        {"process_count_per_node": 4},
        {"node_count": 3},
        {"logging_level": "DEBUG"},
        {"allow_reuse": False},
    ],
)
def test_settings_that_do_not_change_the_results_keep_the_job_id(
    write_job: JobWriter, override: dict[str, object]
) -> None:
    job_file = write_job()
    assert job_id(load_spec(job_file, override)) == job_id(load_spec(job_file))


@pytest.mark.parametrize(
    "override",
    [
        {"mini_batch_size": 11},
        {"inputs": ["../data", "../more"]},
        {"output": "../other-out"},
        {"arguments": ["--threshold", "0.5"]},
        {"append_row_file_name": "labels.txt"},
        {"environment_variables": {"MODE": "fast"}},
    ],
)
def test_settings_that_change_the_results_change_the_job_id(
    write_job: JobWriter, override: dict[str, object]
) -> None:
    job_file = write_job()
    assert job_id(load_spec(job_file, override)) != job_id(load_spec(job_file))


def test_a_fixed_job_id_is_used_as_given(write_job: JobWriter) -> None:
    assert job_id(load_spec(write_job(job_id="nightly-2024-06-01"))) == "nightly-2024-06-01"


@pytest.mark.parametrize("bad_name", ["out/put.txt", "a:b.txt", "", "what?.txt"])
def test_an_output_file_name_that_is_not_a_plain_name_is_refused(
    write_job: JobWriter, bad_name: str
) -> None:
    assert "append_row_file_name" in spec_error(write_job(append_row_file_name=bad_name))


@pytest.mark.parametrize(
    ("size", "expected"),
    [("1024", 1024), ("512KB", 512 * 1024), ("10MB", 10 * 1024**2), ("1GB", 1024**3), (2048, 2048)],
)
def test_a_tabular_mini_batch_size_is_a_1024_based_size(
    write_job: JobWriter, size: object, expected: int
) -> None:
    spec = load_spec(write_job(input_format="csv", mini_batch_size=size))
    assert spec.batch_size == expected


def test_a_tabular_job_defaults_to_one_megabyte_batches(write_job: JobWriter) -> None:
    assert load_spec(write_job(input_format="parquet", mini_batch_size=None)).batch_size == 1024**2


def test_a_tabular_size_that_is_not_a_size_names_the_key(write_job: JobWriter) -> None:
    message = spec_error(write_job(input_format="csv", mini_batch_size="lots"))
    assert "mini_batch_size" in message
    assert "512KB" in message


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (["s3://b/x.csv"], "csv"),
        (["a/*.parquet", "b/c.parquet"], "parquet"),
        (["d/e.jsonl"], "jsonl"),
        (["folder"], "files"),
        (["a.csv", "b.parquet"], "files"),
    ],
)
def test_the_input_format_is_inferred_from_the_input_extensions(
    inputs: list[str], expected: str
) -> None:
    assert infer_input_format(inputs) == expected


@pytest.mark.parametrize("key", ["partition_keys", "mini_batch_rows", "keep_columns"])
def test_tabular_keys_are_refused_for_file_inputs(write_job: JobWriter, key: str) -> None:
    value = 10 if key == "mini_batch_rows" else ["a"]
    assert key in spec_error(write_job(input_format="files", **{key: value}))


def test_an_unreadable_job_file_is_a_spec_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=r"nope\.yaml"):
        load_spec(missing)


def test_a_job_file_that_is_not_a_mapping_is_refused(job_dir: Path) -> None:
    job_file = job_dir / "job.yaml"
    job_file.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(job_file)


def test_a_mini_batch_size_in_bytes_is_refused_for_file_inputs(write_job: JobWriter) -> None:
    message = spec_error(write_job(mini_batch_size="1MB"))
    assert "mini_batch_size" in message
