"""Joining the parts' Parquet bodies into one output file.

Large parts are copied row group by row group with their footers rewritten; small ones are
decoded and joined. Either way the file must read back, with pyarrow and with an independent
reader (fastparquet), as the parts' rows in order.
"""

from __future__ import annotations

import io
from pathlib import Path

import fastparquet
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fleetrun.common import output_formats
from fleetrun.common.output_formats import OutputSchemaError, write_joined


def frame(index: int, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(index)
    return pd.DataFrame(
        {
            "id": np.arange(rows, dtype=np.int64) + index * 1_000_000,
            "label": [None if j % 5 == 0 else f"label-{j % 7}" for j in range(rows)],
            "score": rng.random(rows),
        }
    )


def part(df: pd.DataFrame, **options: object) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buffer, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def join(parts: list[bytes]) -> bytes:
    out = io.BytesIO()
    # Each body arrives in pieces, as it is read from a part file.
    bodies = ((i, [], iter([body[:7], body[7:]])) for i, body in enumerate(parts))
    write_joined("parquet", bodies, out)
    return out.getvalue()


def assert_reads_back(data: bytes, expected: pd.DataFrame, tmp_path: Path) -> None:
    pd.testing.assert_frame_equal(pq.read_table(io.BytesIO(data)).to_pandas(), expected)
    path = tmp_path / "joined.parquet"
    path.write_bytes(data)
    other = fastparquet.ParquetFile(str(path)).to_pandas()
    assert other["id"].tolist() == expected["id"].tolist()
    assert other["score"].tolist() == expected["score"].tolist()
    assert other["label"].isna().tolist() == expected["label"].isna().tolist()


def test_large_parts_are_copied_row_group_by_row_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output_formats, "SMALL_PART_ROWS", 1)
    frames = [frame(i, 1000 * (i + 1)) for i in range(5)]
    # Different row group sizes, and a page index on some parts: offsets of every kind move.
    parts = [part(f, row_group_size=700, write_page_index=i % 2 == 0) for i, f in enumerate(frames)]

    data = join(parts)

    groups = [pq.ParquetFile(io.BytesIO(p)).metadata.num_row_groups for p in parts]
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    assert metadata.num_row_groups == sum(groups)
    assert metadata.num_rows == 15_000
    # The statistics travel with the row groups: the first row group's ids are 0..699.
    stats = metadata.row_group(0).column(0).statistics
    assert (stats.min, stats.max) == (0, 699)
    assert_reads_back(data, pd.concat(frames, ignore_index=True), tmp_path)


def test_small_parts_are_joined_into_one_row_group(tmp_path: Path) -> None:
    frames = [frame(i, 10) for i in range(300)]

    data = join([part(f) for f in frames])

    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    assert metadata.num_row_groups == 1
    assert_reads_back(data, pd.concat(frames, ignore_index=True), tmp_path)


def test_small_and_large_parts_mixed_keep_their_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output_formats, "SMALL_PART_ROWS", 100)
    frames = [frame(i, rows) for i, rows in enumerate([5, 7, 400, 3, 500, 60, 60, 2])]

    data = join([part(f) for f in frames])

    assert_reads_back(data, pd.concat(frames, ignore_index=True), tmp_path)


def test_a_part_with_castable_types_is_cast_to_the_first_parts_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output_formats, "SMALL_PART_ROWS", 1)
    first = frame(0, 50)
    second = frame(1, 50).astype({"id": "int32"})

    data = join([part(first), part(second)])

    expected = pd.concat([first, second.astype({"id": "int64"})], ignore_index=True)
    assert_reads_back(data, expected, tmp_path)


def test_a_part_whose_columns_do_not_fit_is_a_clear_error() -> None:
    other = pd.DataFrame({"something": ["else"]})
    with pytest.raises(OutputSchemaError, match="batch 1 returned a schema"):
        join([part(frame(0, 5)), part(other)])


def test_no_rows_at_all_is_still_a_parquet_file() -> None:
    data = join([])
    assert pq.read_table(io.BytesIO(data)).num_rows == 0
