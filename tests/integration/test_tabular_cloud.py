"""Tabular inputs on object stores: CSV and Parquet on moto's S3 and Azurite, read by slices.

Real ``fleetrun run`` processes on the embedded broker; the credentials reach them only through
their environment (``s3_env``/``azure_env``). CSV slices are fetched by byte range, Parquet
slices by row group; the output, written to the same store, must hold exactly the rows pandas
reads from the same files in one go, in the same order.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from emulators import Azurite, S3Server, azure_filesystem, s3_filesystem
from helpers import (
    ROWS_WITH_BATCH,
    Harness,
    assert_same_rows,
    object_text,
    read_table,
    tricky_frame,
)

pytestmark = [pytest.mark.timeout(180)]

OUTPUT_FILE = "parallel_run_step.txt"


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def parquet_bytes(frame: pd.DataFrame, group_rows: list[int]) -> bytes:
    """A Parquet file whose row groups hold ``group_rows`` rows."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, table.schema) as writer:
        start = 0
        for rows in group_rows:
            writer.write_table(table.slice(start, rows), row_group_size=rows)
            start += rows
    return buffer.getvalue()


def run_on_store(
    harness: Harness, fs: Any, files: dict[str, bytes], base: str, fmt: str, **spec: Any
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Upload ``files`` under ``<base>/in``, run the job into ``<base>/out``; the output frame
    and the summary, both read back from the store."""
    fs.pipe({f"{base}/in/{name}": data for name, data in files.items()})
    output = f"{base}/out"
    harness.write_job(
        ROWS_WITH_BATCH,
        inputs=f"{base}/in",
        output=output,
        append_row_format=fmt,
        process_count_per_node=2,
        **spec,
    )
    result = harness.run()
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(object_text(fs, f"{output}/summary.json"))
    assert json.loads(result.stdout) == summary
    out = read_table(bytes(fs.cat_file(f"{output}/{OUTPUT_FILE}")), fmt)
    assert object_text(fs, f"{output}/failed_items.txt") == ""
    assert object_text(fs, f"{output}/errors.jsonl") == ""
    return out, summary


def assert_every_row_once(
    out: pd.DataFrame, expected: pd.DataFrame, summary: dict[str, Any], min_batches: int
) -> None:
    assert_same_rows(out.drop(columns="batch"), expected)
    rows = len(expected)
    assert summary["status"] == "succeeded", summary
    assert summary["items"] == {"total": rows, "succeeded": rows, "failed": 0}
    assert summary["mini_batches"]["failed"] == 0
    assert summary["mini_batches"]["total"] >= min_batches
    assert out["batch"].is_monotonic_increasing
    assert out["batch"].nunique() == summary["mini_batches"]["total"]


def test_csv_files_on_s3_split_by_byte_ranges_give_every_row_once(
    harness: Harness, s3_env: dict[str, str], s3_server: S3Server, s3_bucket: str
) -> None:
    frames = {"a.csv": tricky_frame(1500), "b.csv": tricky_frame(1000, start=1500)}
    files = {name: csv_bytes(frame) for name, frame in frames.items()}

    out, summary = run_on_store(
        harness,
        s3_filesystem(s3_server),
        files,
        s3_bucket,
        "csv",
        input_format="csv",
        mini_batch_size="8KB",
    )

    expected = pd.concat([pd.read_csv(io.BytesIO(files[n])) for n in sorted(files)])
    assert_every_row_once(out, expected, summary, min_batches=8)


def test_a_parquet_file_on_s3_split_into_row_groups_and_row_ranges_gives_every_row_once(
    harness: Harness, s3_env: dict[str, str], s3_server: S3Server, s3_bucket: str
) -> None:
    rng = np.random.default_rng(11)
    rows = 6000
    frame = pd.DataFrame(
        {"row": np.arange(rows), "x": rng.random(rows), "label": [f"r{i}" for i in range(rows)]}
    )
    data = parquet_bytes(frame, [500, 500, 4000, 1000])  # the 4000-row group is cut in rows

    out, summary = run_on_store(
        harness,
        s3_filesystem(s3_server),
        {"table.parquet": data},
        s3_bucket,
        "parquet",
        input_format="parquet",
        mini_batch_rows=1000,
    )

    # [0, 1], four ranges of the 4000-row group, [3]: six batches of 1000 rows.
    assert_every_row_once(out, pd.read_parquet(io.BytesIO(data)), summary, min_batches=6)
    assert out.groupby("batch").size().tolist() == [1000] * 6


def test_a_csv_file_on_azurite_split_by_byte_ranges_gives_every_row_once(
    harness: Harness, azure_env: dict[str, str], azurite: Azurite, azure_container: str
) -> None:
    files = {"table.csv": csv_bytes(tricky_frame(2500))}

    out, summary = run_on_store(
        harness,
        azure_filesystem(azurite),
        files,
        azure_container,
        "parquet",
        input_format="csv",
        mini_batch_size="16KB",
    )

    assert_every_row_once(out, pd.read_csv(io.BytesIO(files["table.csv"])), summary, 5)
