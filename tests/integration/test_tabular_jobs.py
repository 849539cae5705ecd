"""Tabular jobs end to end: CSV, JSON Lines and Parquet inputs read by slices, typed outputs.

Real ``fleetrun run`` processes on the embedded broker, local files. The reference is always
pandas reading the same files in one go: the output must hold exactly its rows, in its order,
however the files were cut into mini-batches.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROWS_WITH_BATCH, Harness, assert_same_rows, read_table, tricky_frame

pytestmark = [pytest.mark.timeout(120)]

OUTPUT_FILE = "parallel_run_step.txt"
FAILING_BATCH_ONE = """\
def run(df, ctx):
    if ctx.minibatch_index == 1:
        raise ValueError("batch one is rejected")
    return df
"""


# -- helpers ------------------------------------------------------------------------------------


def write_csv(harness: Harness, frames: dict[str, pd.DataFrame]) -> list[Path]:
    """``data/<name>`` for each frame, written by pandas; their paths, sorted."""
    paths = []
    for name, frame in frames.items():
        path = harness.data_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        paths.append(path)
    return sorted(paths)


def write_parquet(path: Path, frame: pd.DataFrame, row_group_size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=row_group_size
    )
    return path


def run_job(harness: Harness, script: str, **spec: Any) -> subprocess.CompletedProcess[str]:
    """Write the job (one runner unless told: a runner's start costs a second) and run it."""
    harness.write_job(script, **spec)
    return harness.run()


def output_frame(harness: Harness, fmt: str) -> pd.DataFrame:
    frame: pd.DataFrame = read_table(harness.out_dir / OUTPUT_FILE, fmt)
    return frame


def read_all_csv(paths: list[Path]) -> pd.DataFrame:
    """pandas reading the files in one go, one after the other, in fleetrun's (name) order."""
    return pd.concat([pd.read_csv(p) for p in sorted(paths)], ignore_index=True)


def assert_batched(out: pd.DataFrame, summary: dict[str, Any], rows: int) -> int:
    """Every row succeeded, the batches came in order, each batch numbered once; their count."""
    assert summary["status"] == "succeeded", summary
    assert summary["items"] == {"total": rows, "succeeded": rows, "failed": 0}
    assert summary["mini_batches"]["failed"] == 0
    assert out["batch"].is_monotonic_increasing
    batches = int(summary["mini_batches"]["total"])
    assert out["batch"].nunique() <= batches
    return batches


def plan_output(harness: Harness) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "fleetrun", "plan", str(harness.job_file)],
        env=harness.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def planned_batches(harness: Harness) -> int:
    """The mini-batch count ``fleetrun plan`` announces."""
    match = re.match(r"\d+ input files in (\d+) mini-batches", plan_output(harness))
    assert match, plan_output(harness)
    return int(match.group(1))


# -- CSV ----------------------------------------------------------------------------------------


def test_a_csv_with_quoted_commas_and_quotes_split_into_many_batches_gives_every_row_once(
    harness: Harness,
) -> None:
    paths = write_csv(
        harness, {"a.csv": tricky_frame(2000), "b.csv": tricky_frame(1500, start=2000)}
    )
    assert '"a ""quoted"" word' in paths[0].read_text()

    result = run_job(
        harness,
        ROWS_WITH_BATCH,
        input_format="csv",
        mini_batch_size="8KB",
        append_row_format="csv",
        process_count_per_node=2,
    )

    assert result.returncode == 0, result.stderr
    out = output_frame(harness, "csv")
    assert_same_rows(out.drop(columns="batch"), read_all_csv(paths))
    batches = assert_batched(out, harness.summary(), 3500)
    assert batches >= 10
    assert out["batch"].nunique() == batches
    # No batch crosses a file.
    assert set(out["batch"][:2000]).isdisjoint(out["batch"][2000:])


def test_csv_files_without_a_trailing_newline_keep_their_last_row(harness: Harness) -> None:
    paths = []
    for name, newline, start in [("a.csv", "\n", 0), ("b.csv", "\r\n", 1200)]:
        text = tricky_frame(1200, start).to_csv(index=False, lineterminator=newline)
        path = harness.data_dir / name
        path.write_bytes(text.rstrip("\r\n").encode())
        assert not path.read_bytes().endswith(b"\n")
        paths.append(path)

    result = run_job(
        harness, ROWS_WITH_BATCH, input_format="csv", mini_batch_size="5KB", append_row_format="csv"
    )

    assert result.returncode == 0, result.stderr
    out = output_frame(harness, "csv")
    assert_same_rows(out.drop(columns="batch"), read_all_csv(paths))
    assert out["row"].iloc[1199] == 1199 and out["row"].iloc[-1] == 2399
    assert assert_batched(out, harness.summary(), 2400) >= 10


def quoted_newline_frame(rows: int) -> pd.DataFrame:
    """Rows whose ``note`` holds a newline inside its quoted field now and then."""
    notes = [f"first line {i}\nsecond, line" if i % 50 == 7 else f"note {i}" for i in range(rows)]
    return pd.DataFrame({"row": range(rows), "note": notes})


def test_a_quoted_newline_in_a_csv_read_whole_is_kept(harness: Harness) -> None:
    paths = write_csv(harness, {"notes.csv": quoted_newline_frame(300)})
    assert paths[0].stat().st_size < 64 * 1024

    result = run_job(
        harness,
        ROWS_WITH_BATCH,
        inputs=str(paths[0]),
        mini_batch_size="64KB",
        append_row_format="csv",
    )

    assert result.returncode == 0, result.stderr
    out = output_frame(harness, "csv")
    assert_same_rows(out.drop(columns="batch"), pd.read_csv(paths[0]))
    assert out["note"][7] == "first line 7\nsecond, line"
    assert assert_batched(out, harness.summary(), 300) == 1


def test_a_quoted_newline_in_a_split_csv_fails_its_batch_with_a_clear_error(
    harness: Harness,
) -> None:
    frame = quoted_newline_frame(2000)
    frame.loc[frame["row"] % 50 == 7, "note"] = "no newline"
    frame.loc[1500, "note"] = "first line\nsecond line"  # one, in the last quarter of the file
    paths = write_csv(harness, {"notes.csv": frame})
    uri = str(paths[0])

    result = run_job(
        harness,
        ROWS_WITH_BATCH,
        inputs=uri,
        mini_batch_size="4KB",
        append_row_format="csv",
        run_max_try=1,
    )

    summary = harness.summary()
    assert summary["mini_batches"]["total"] >= 4
    assert summary["mini_batches"]["failed"] == 1, (summary, result.stderr)
    errors = harness.errors()
    assert [e["type"] for e in errors] == ["TabularInputError"]
    assert "newline inside a quoted field" in errors[0]["message"]
    assert uri in errors[0]["message"]
    failed = harness.failed_items()
    assert len(failed) == 1 and re.fullmatch(re.escape(uri) + r"#bytes=\d+-\d+", failed[0])
    # The other batches' rows are there, exact and in order; no row was made of half lines.
    out = output_frame(harness, "csv").drop(columns="batch")
    assert 1500 not in set(out["row"])
    assert out["row"].is_monotonic_increasing
    expected = pd.read_csv(paths[0]).set_index("row").loc[out["row"]].reset_index()
    assert_same_rows(out, expected)


def test_lines_longer_than_a_slice_are_read_once_by_the_slice_they_start_in(
    harness: Harness,
) -> None:
    # Slices that hold no row give empty frames: their columns must not upset a typed output.
    output_format = "parquet"
    frame = pd.DataFrame(
        {"row": range(40), "text": ["x" * 9000 if i % 5 == 2 else f"short {i}" for i in range(40)]}
    )
    paths = write_csv(harness, {"long.csv": frame})

    result = run_job(
        harness,
        ROWS_WITH_BATCH,
        inputs=str(paths[0]),
        mini_batch_size="2KB",
        append_row_format=output_format,
    )

    assert result.returncode == 0, result.stderr
    out = output_frame(harness, output_format)
    assert_same_rows(out.drop(columns="batch"), pd.read_csv(paths[0]))
    # Some slices start and end inside a long line: they hold no row at all.
    assert assert_batched(out, harness.summary(), 40) > out["batch"].nunique()


# -- JSON Lines and Parquet ---------------------------------------------------------------------


def test_a_split_jsonl_file_gives_every_record_once_in_order(harness: Harness) -> None:
    path = harness.data_dir / "records.jsonl"
    path.write_text(tricky_frame(2500).to_json(orient="records", lines=True))

    result = run_job(
        harness, ROWS_WITH_BATCH, inputs=str(path), mini_batch_size="8KB", append_row_format="csv"
    )

    assert result.returncode == 0, result.stderr
    out = output_frame(harness, "csv")
    assert_same_rows(out.drop(columns="batch"), pd.read_json(path, lines=True))
    assert assert_batched(out, harness.summary(), 2500) >= 10


def test_a_one_row_group_parquet_file_larger_than_the_size_splits_into_row_ranges(
    harness: Harness,
) -> None:
    rng = np.random.default_rng(7)
    rows = 30_000
    frame = pd.DataFrame({"row": np.arange(rows), "x": rng.random(rows), "y": rng.random(rows)})
    path = write_parquet(harness.data_dir / "one_group.parquet", frame, row_group_size=rows)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    assert path.stat().st_size > 4 * 128 * 1024

    result = run_job(
        harness,
        ROWS_WITH_BATCH,
        inputs=str(path),
        mini_batch_size="128KB",
        append_row_format="parquet",
        process_count_per_node=2,
    )

    assert result.returncode == 0, result.stderr
    out = output_frame(harness, "parquet")
    assert_same_rows(out.drop(columns="batch"), pd.read_parquet(path))
    batches = assert_batched(out, harness.summary(), rows)
    assert batches >= 4
    assert out["batch"].nunique() == batches


def test_mini_batch_rows_cuts_parquet_into_exactly_that_many_rows(harness: Harness) -> None:
    frame = pd.DataFrame({"row": np.arange(2000), "x": np.arange(2000) * 0.5})
    one = write_parquet(harness.data_dir / "a.parquet", frame[:1000], row_group_size=1000)
    many = write_parquet(harness.data_dir / "b.parquet", frame[1000:], row_group_size=100)

    result = run_job(
        harness,
        ROWS_WITH_BATCH,
        inputs=str(harness.data_dir / "*.parquet"),
        mini_batch_size="1GB",
        mini_batch_rows=100,
        append_row_format="parquet",
    )

    assert result.returncode == 0, result.stderr
    out = output_frame(harness, "parquet")
    expected = pd.concat([pd.read_parquet(one), pd.read_parquet(many)], ignore_index=True)
    assert_same_rows(out.drop(columns="batch"), expected)
    assert assert_batched(out, harness.summary(), 2000) == 20
    assert out.groupby("batch").size().tolist() == [100] * 20


def test_mini_batch_rows_cuts_a_csv_into_about_that_many_rows(harness: Harness) -> None:
    paths = write_csv(harness, {"table.csv": tricky_frame(3000)})

    result = run_job(
        harness,
        ROWS_WITH_BATCH,
        inputs=str(paths[0]),
        mini_batch_rows=500,
        append_row_format="csv",
    )

    assert result.returncode == 0, result.stderr
    out = output_frame(harness, "csv")
    assert_same_rows(out.drop(columns="batch"), pd.read_csv(paths[0]))
    assert 5 <= assert_batched(out, harness.summary(), 3000) <= 7
    sizes = out.groupby("batch").size()
    assert sizes.between(350, 650).all(), sizes.tolist()


# -- partitions ---------------------------------------------------------------------------------

PARTITION_CONTEXT = """\
def run(df, ctx):
    out = df.copy()
    out["batch"] = ctx.minibatch_index
    out["ctx_store"] = ctx.partition_key_value["store"]
    out["ctx_brand"] = ctx.partition_key_value["brand"]
    return out
"""


def test_partitions_give_one_batch_per_combination_with_its_key_values(
    harness: Harness,
) -> None:
    # Listing order is lexicographic: store=1/, then store=10/, then store=2/.
    layout = {
        "store=1/brand=a/part-0.csv": 30,
        "store=1/brand=a/part-1.csv": 20,
        "store=1/brand=b/part-0.csv": 25,
        "store=10/brand=c/part-0.csv": 15,
        "store=2/brand=a/part-0.csv": 40,
    }
    frames: dict[str, pd.DataFrame] = {}
    start = 0
    for name, rows in layout.items():
        frames[name] = tricky_frame(rows, start=start)
        start += rows
    write_csv(harness, frames)

    result = run_job(
        harness,
        PARTITION_CONTEXT,
        input_format="csv",
        partition_keys=["store", "brand"],
        mini_batch_size="1KB",  # partitions are not cut by size
        append_row_format="parquet",
        process_count_per_node=2,
    )

    assert result.returncode == 0, result.stderr
    expected_parts = []
    combinations = ["1/a", "1/b", "10/c", "2/a"]
    for name, frame in frames.items():
        store, brand = (part.split("=")[1] for part in name.split("/")[:2])
        batch = combinations.index(f"{store}/{brand}")
        expected_parts.append(
            frame.assign(store=store, brand=brand, batch=batch, ctx_store=store, ctx_brand=brand)
        )
    expected = pd.concat(expected_parts, ignore_index=True)
    out = output_frame(harness, "parquet")
    assert_same_rows(out, expected)
    assert assert_batched(out, harness.summary(), sum(layout.values())) == 4


# -- typed outputs ------------------------------------------------------------------------------

DERIVED_COLUMNS = """\
import pandas as pd


def derive(df):
    return pd.DataFrame(
        {
            "row": df["row"],
            "label": "r" + df["row"].astype(str),
            "half": df["value"] / 2,
            "big": df["count"] > 500,
            "text": df["text"],
        }
    )


def run(df):
    return derive(df)
"""


@pytest.mark.parametrize("output_format", ["csv", "jsonl", "parquet"])
def test_a_typed_output_reads_back_as_the_expected_frame(
    harness: Harness, output_format: str
) -> None:
    paths = write_csv(harness, {"a.csv": tricky_frame(1500), "b.csv": tricky_frame(900, 1500)})

    result = run_job(
        harness,
        DERIVED_COLUMNS,
        input_format="csv",
        mini_batch_size="6KB",
        append_row_format=output_format,
    )

    assert result.returncode == 0, result.stderr
    namespace: dict[str, Any] = {}
    exec(DERIVED_COLUMNS, namespace)
    expected = namespace["derive"](read_all_csv(paths))
    assert_same_rows(output_frame(harness, output_format), expected)
    assert harness.summary()["mini_batches"]["total"] >= 10
    if output_format == "csv":
        lines = (harness.out_dir / OUTPUT_FILE).read_text().splitlines()
        assert lines[0] == "row,label,half,big,text"
        assert sum(line.startswith("row,") for line in lines) == 1


def test_the_text_output_is_parallel_run_steps_space_separated_rows(harness: Harness) -> None:
    paths = write_csv(harness, {"a.csv": tricky_frame(800)})

    result = run_job(
        harness, "def run(df):\n    return df\n", inputs=str(paths[0]), mini_batch_size="4KB"
    )

    assert result.returncode == 0, result.stderr
    expected = pd.read_csv(paths[0]).to_csv(sep=" ", header=False, index=False, lineterminator="\n")
    assert harness.output_lines() == expected.splitlines()
    assert harness.summary()["mini_batches"]["total"] >= 5


def test_a_jsonl_output_keeps_every_float_exactly(harness: Harness) -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"row": range(500), "x": rng.random(500), "tiny": rng.random(500) * 1e-12})
    paths = write_csv(harness, {"floats.csv": frame})
    assert_same_rows(pd.read_csv(paths[0]), frame)  # CSV keeps them exactly

    result = run_job(
        harness,
        "def run(df):\n    return df\n",
        inputs=str(paths[0]),
        mini_batch_size="8KB",
        append_row_format="jsonl",
    )

    assert result.returncode == 0, result.stderr
    out = output_frame(harness, "jsonl")
    for column in ("x", "tiny"):
        change = (out[column] - frame[column]).abs().max()
        assert change == 0, f"{column}: the jsonl output changed floats by up to {change:.3g}"
    assert_same_rows(out, frame)


OTHER_COLUMNS_IN_BATCH_TWO = """\
def run(df, ctx):
    out = df[["row", "count"]].copy()
    if ctx.minibatch_index == 2:
        {change}
    return out
"""


@pytest.mark.parametrize(
    ("output_format", "change", "named"),
    [
        ("csv", 'out["extra"] = 1', "extra"),
        ("parquet", 'out["count"] = out["count"].astype(str) + "!"', "count"),
    ],
    ids=["csv-extra-column", "parquet-other-type"],
)
def test_a_batch_returning_other_columns_stops_the_job_with_a_reason_naming_them(
    harness: Harness, output_format: str, change: str, named: str
) -> None:
    write_csv(harness, {"a.csv": tricky_frame(2000)})

    result = run_job(
        harness,
        OTHER_COLUMNS_IN_BATCH_TWO.format(change=change),
        input_format="csv",
        mini_batch_size="8KB",
        append_row_format=output_format,
    )

    assert result.returncode == 1, result.stdout
    summary = harness.summary()
    assert summary["status"] in ("aborted", "failed"), summary
    assert named in summary["reason"] and "columns" in summary["reason"], summary["reason"]
    assert summary["reason"] in result.stderr


def test_a_batch_returning_no_rows_counts_its_rows_as_failed_not_as_a_schema_conflict(
    harness: Harness,
) -> None:
    output_format = "csv"
    paths = write_csv(harness, {"a.csv": tricky_frame(2000)})
    script = (
        "def run(df, ctx):\n"
        "    if ctx.minibatch_index == 1:\n"
        "        return []\n"
        "    out = df.copy()\n"
        "    out['batch'] = ctx.minibatch_index\n"
        "    return out\n"
    )

    result = run_job(
        harness,
        script,
        inputs=str(paths[0]),
        mini_batch_size="8KB",
        append_row_format=output_format,
    )

    summary = harness.summary()
    assert summary["status"] == "succeeded", summary
    assert result.returncode == 0, result.stderr
    out = output_frame(harness, output_format)
    assert 1 not in set(out["batch"])
    failed = summary["items"]["failed"]
    assert failed > 0 and summary["items"]["total"] == 2000 == len(out) + failed
    expected = pd.read_csv(paths[0]).set_index("row").loc[out["row"]].reset_index()
    assert_same_rows(out.drop(columns="batch"), expected)


def test_an_empty_csv_file_among_the_inputs_does_not_stop_a_typed_output_job(
    harness: Harness,
) -> None:
    paths = write_csv(harness, {"a.csv": tricky_frame(300), "c.csv": tricky_frame(200, 300)})
    (harness.data_dir / "b.csv").write_bytes(b"")  # e.g. an empty part file of a Spark job

    result = run_job(
        harness,
        ROWS_WITH_BATCH,
        input_format="csv",
        append_row_format="csv",
    )

    assert result.returncode == 0, (result.stderr, harness.summary())
    out = output_frame(harness, "csv")
    assert_same_rows(out.drop(columns="batch"), read_all_csv(paths))


# -- keep_columns -------------------------------------------------------------------------------


def test_keep_columns_puts_the_input_ids_in_front_of_each_output_row(harness: Harness) -> None:
    frame = tricky_frame(1500).rename(columns={"row": "id"})[["text", "id", "value"]]
    paths = write_csv(harness, {"a.csv": frame})

    result = run_job(
        harness,
        "def run(df):\n    return [v * 10 for v in df['value']]\n",
        inputs=str(paths[0]),
        mini_batch_size="6KB",
        append_row_format="csv",
        keep_columns=["id"],
    )

    assert result.returncode == 0, result.stderr
    out = output_frame(harness, "csv")
    source = pd.read_csv(paths[0])
    expected = pd.DataFrame({"id": source["id"], "result": source["value"] * 10})
    assert_same_rows(out, expected)
    assert harness.summary()["mini_batches"]["total"] >= 5


def test_keep_columns_follows_the_index_of_a_frame_that_answers_some_rows(
    harness: Harness,
) -> None:
    paths = write_csv(harness, {"a.csv": tricky_frame(1500)})
    script = (
        "def run(df):\n"
        "    ok = df[df['count'] % 3 != 0]\n"
        "    return ok[['value']].assign(double=ok['value'] * 2)\n"
    )

    result = run_job(
        harness,
        script,
        inputs=str(paths[0]),
        mini_batch_size="6KB",
        append_row_format="parquet",
        keep_columns=["row", "text"],
    )

    assert result.returncode == 0, result.stderr
    source = pd.read_csv(paths[0])
    ok = source[source["count"] % 3 != 0]
    expected = pd.DataFrame(
        {"row": ok["row"], "text": ok["text"], "value": ok["value"], "double": ok["value"] * 2}
    )
    assert_same_rows(output_frame(harness, "parquet"), expected)
    summary = harness.summary()
    assert summary["items"] == {
        "total": 1500,
        "succeeded": len(ok),
        "failed": 1500 - len(ok),
    }


# -- failures counted in rows -------------------------------------------------------------------

SHORT_BY_THREE = """\
def run(df, ctx):
    out = df.copy()
    out["batch"] = ctx.minibatch_index
    return out.iloc[:-3]
"""


def test_a_short_return_counts_the_missing_rows_as_failed(harness: Harness) -> None:
    paths = write_csv(harness, {"a.csv": tricky_frame(2000)})
    uri = str(paths[0])
    harness.write_job(
        SHORT_BY_THREE,
        inputs=uri,
        mini_batch_size="8KB",
        append_row_format="csv",
    )
    planned = planned_batches(harness)

    # error_threshold is a number of rows: exactly as many as fail is still tolerated.
    result = harness.run(sets={"error_threshold": 3 * planned})

    assert result.returncode == 0, result.stderr
    summary = harness.summary()
    assert summary["mini_batches"]["total"] == planned >= 5
    assert summary["items"] == {
        "total": 2000,
        "succeeded": 2000 - 3 * planned,
        "failed": 3 * planned,
    }
    out = output_frame(harness, "csv")
    assert len(out) == 2000 - 3 * planned
    assert (out.groupby("batch").size() > 0).all()
    expected = pd.read_csv(paths[0]).set_index("row").loc[out["row"]].reset_index()
    assert_same_rows(out.drop(columns="batch"), expected)
    # The missing rows are the three that follow the last row kept of each batch.
    missing = set(pd.read_csv(paths[0])["row"]) - set(out["row"])
    after_each_batch = {last + k for last in out.groupby("batch")["row"].max() for k in (1, 2, 3)}
    assert missing == after_each_batch
    errors = harness.errors()
    assert [e["kind"] for e in errors] == ["short_return"] * planned
    for error in errors:
        assert error["message"].startswith("run() returned ")
        assert re.fullmatch(re.escape(uri) + r"(#bytes=\d+-\d+)?", error["items"][0])


def test_error_threshold_counts_failed_rows_and_aborts_the_job(harness: Harness) -> None:
    write_csv(harness, {"a.csv": tricky_frame(3000)})

    result = run_job(
        harness,
        SHORT_BY_THREE,
        input_format="csv",
        mini_batch_size="8KB",
        append_row_format="csv",
        error_threshold=5,
    )

    assert result.returncode == 1
    summary = harness.summary()
    assert summary["status"] == "aborted", summary
    assert re.fullmatch(r"\d+ items failed, more than error_threshold=5", summary["reason"])
    assert summary["items"]["failed"] >= 6
    assert summary["mini_batches"]["total"] > summary["mini_batches"]["succeeded"]


def layout_csv(harness: Harness) -> str:
    path = write_csv(harness, {"a.csv": tricky_frame(1500)})[0]
    harness.write_job(
        FAILING_BATCH_ONE, inputs=str(path), mini_batch_size="8KB", append_row_format="csv"
    )
    return re.escape(str(path)) + r"#bytes=\d+-\d+"


def layout_parquet_row_groups(harness: Harness) -> str:
    frame = pd.DataFrame({"row": np.arange(1000), "x": np.arange(1000) * 2})
    path = write_parquet(harness.data_dir / "a.parquet", frame, row_group_size=100)
    harness.write_job(
        FAILING_BATCH_ONE, inputs=str(path), mini_batch_rows=200, append_row_format="parquet"
    )
    return re.escape(f"{path}#row_groups=2-3")


def layout_parquet_rows(harness: Harness) -> str:
    frame = pd.DataFrame({"row": np.arange(1000), "x": np.arange(1000) * 2})
    path = write_parquet(harness.data_dir / "a.parquet", frame, row_group_size=1000)
    harness.write_job(
        FAILING_BATCH_ONE, inputs=str(path), mini_batch_rows=250, append_row_format="parquet"
    )
    return re.escape(f"{path}#row_group=0&rows=250-500")


def layout_partitions(harness: Harness) -> str:
    for i, name in enumerate(["k=a/part-0.csv", "k=b/part-0.csv", "k=b/part-1.csv", "k=c/x.csv"]):
        write_csv(harness, {name: tricky_frame(10, start=10 * i)})
    harness.write_job(
        FAILING_BATCH_ONE, input_format="csv", partition_keys=["k"], append_row_format="csv"
    )
    return re.escape("partition k=b (2 files)")


@pytest.mark.parametrize(
    "layout",
    [layout_csv, layout_parquet_row_groups, layout_parquet_rows, layout_partitions],
    ids=["csv-bytes", "parquet-row-groups", "parquet-rows", "partition"],
)
def test_failed_items_name_the_slice_of_a_failed_batch(harness: Harness, layout: Any) -> None:
    pattern = layout(harness)

    result = harness.run(sets={"run_max_try": 1})

    assert result.returncode == 0, result.stderr
    failed = harness.failed_items()
    assert len(failed) == 1 and re.fullmatch(pattern, failed[0]), failed
    errors = harness.errors()
    assert [(e["batch"], e["type"]) for e in errors] == [(1, "ValueError")]
    assert harness.summary()["mini_batches"]["failed"] == 1


@pytest.mark.parametrize("input_format", ["csv", "parquet"])
def test_a_batch_whose_run_raises_counts_every_row_it_read_as_failed(
    harness: Harness, input_format: str
) -> None:
    frame = tricky_frame(2000)
    path = harness.data_dir / f"table.{input_format}"
    if input_format == "csv":
        frame.to_csv(path, index=False)
    else:
        write_parquet(path, frame, row_group_size=250)
    script = FAILING_BATCH_ONE.replace(
        "return df", "out = df.copy()\n    out['batch'] = ctx.minibatch_index\n    return out"
    )

    result = run_job(
        harness,
        script,
        inputs=str(path),
        mini_batch_size="16KB",
        append_row_format="parquet",
        run_max_try=1,
    )

    assert result.returncode == 0, result.stderr
    out = output_frame(harness, "parquet")
    summary = harness.summary()
    assert summary["mini_batches"]["total"] >= 3 and summary["mini_batches"]["failed"] == 1
    # Batch one's rows are neither in the output nor lost from the counts.
    missing = 2000 - len(out)
    assert missing > 1
    assert summary["items"] == {"total": 2000, "succeeded": len(out), "failed": missing}


# -- fleetrun plan ------------------------------------------------------------------------------


def test_fleetrun_plan_prints_the_mini_batches_of_each_file_and_runs_as_planned(
    harness: Harness,
) -> None:
    big, small = tricky_frame(2000), tricky_frame(50, start=2000)
    zipped = tricky_frame(1000, start=2050)
    paths = write_csv(harness, {"a.csv": big, "b.csv": small})
    gz = harness.data_dir / "c.csv.gz"
    gz.write_bytes(gzip.compress(zipped.to_csv(index=False).encode()))
    size = paths[0].stat().st_size
    expected_a = math.ceil(size / (8 * 1024))
    harness.write_job(
        ROWS_WITH_BATCH, input_format="csv", mini_batch_size="8KB", append_row_format="csv"
    )

    lines = plan_output(harness).splitlines()

    assert lines == [
        f"3 input files in {expected_a + 2} mini-batches",
        f"  {paths[0]}: {expected_a} mini-batches",
        f"  {paths[1]}: 1 mini-batches",
        f"  {gz}: 1 mini-batches",
        f"warning: {gz} is compressed and cannot be split: one mini-batch",
    ]
    result = harness.run()
    assert result.returncode == 0, result.stderr
    out = output_frame(harness, "csv")
    assert_same_rows(out.drop(columns="batch"), pd.concat([big, small, zipped], ignore_index=True))
    assert assert_batched(out, harness.summary(), 3050) == expected_a + 2
    assert json.loads(result.stdout)["mini_batches"]["total"] == expected_a + 2
