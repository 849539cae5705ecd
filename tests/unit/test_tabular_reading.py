"""Reading tables by slices: line snapping of byte ranges, and the plan of slices.

``slice_lines`` must give every line exactly once over ANY cutting of a file into consecutive
byte ranges, reading little more than its own range; the plan must cover every byte of a
line-based file and every row of a Parquet file exactly once, in order.
"""

from __future__ import annotations

import gzip
import itertools
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fleetrun.common.errors import SpecError
from fleetrun.common.listing import InputFile
from fleetrun.common.slices import TableSlice
from fleetrun.common.spec import JobSpec
from fleetrun.coordinator.tabular_plan import Warnings, parquet_metadata, plan_slices
from fleetrun.worker import tabular
from fleetrun.worker.tabular import TabularInputError, load_frame, slice_bytes, slice_lines

Read = Callable[[int, int], bytes]


# -- helpers ------------------------------------------------------------------------------------


def reader(data: bytes) -> tuple[Read, list[tuple[int, int]]]:
    """``read(start, end)`` over ``data``, and the list of ranges it was asked for."""
    calls: list[tuple[int, int]] = []

    def read(start: int, end: int) -> bytes:
        calls.append((start, end))
        return data[start:end]

    return read, calls


def byte_slice(size: int, start: int, end: int, fmt: str = "csv", uri: str = "t.csv") -> TableSlice:
    return TableSlice(kind="bytes", format=fmt, uri=uri, size=size, start=start, end=end)  # type: ignore[arg-type]


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """``slice_lines`` of each range between consecutive cut points (0 and the size added)."""
    bounds = [0, *sorted(cuts), len(data)]
    result = []
    for start, end in itertools.pairwise(bounds):
        read, _ = reader(data)
        result.append(slice_lines(read, byte_slice(len(data), start, end)))
    return result


def assert_every_line_once(data: bytes, cuts: list[int]) -> None:
    parts = pieces(data, cuts)
    assert b"".join(parts) == data, (data, sorted(cuts), parts)
    # Whole lines only: every part but the file's last line ends at a newline.
    for part in parts[:-1]:
        assert not part or part.endswith(b"\n") or data.endswith(part), (part, sorted(cuts))


def random_lines(rng: random.Random) -> bytes:
    """Lines of mixed lengths: empty ones, short ones, ones longer than most slices; with or
    without a newline at the end, LF or CRLF."""
    newline = rng.choice([b"\n", b"\r\n"])
    lines = []
    for _ in range(rng.randint(0, 40)):
        kind = rng.random()
        if kind < 0.15:
            length = 0
        elif kind < 0.9:
            length = rng.randint(1, 12)
        else:
            length = rng.randint(30, 200)
        lines.append(bytes(rng.choice(b'abc,;" 0123456789') for _ in range(length)))
    data = newline.join(lines)
    if lines and rng.random() < 0.5:
        data += newline
    return data


def spec_for(path: str | Path, **fields: Any) -> JobSpec:
    return JobSpec(
        name="unit",
        inputs=[str(path)],
        output="/nonexistent/out",
        entry_script="score.py",
        **fields,
    )


def planned(spec: JobSpec, *files: InputFile) -> tuple[list[TableSlice], Warnings]:
    warnings = Warnings()
    return list(plan_slices(spec, files, warnings)), warnings


def local_file(path: Path) -> InputFile:
    return InputFile(str(path), path.stat().st_size)


# -- slice_lines: every line exactly once -------------------------------------------------------


def test_every_line_is_read_once_over_any_single_or_double_cut_of_a_small_file() -> None:
    for data in [
        b"h\n\nab\n\n\ncde\nf",
        b"h\n\nab\n\n\ncde\nf\n",
        b"\n\n\n",
        b"no newline at all",
        b"x",
        b"",
    ]:
        size = len(data)
        for first in range(size + 1):
            assert_every_line_once(data, [first])
            for second in range(first, size + 1):
                assert_every_line_once(data, [first, second])


def test_every_line_is_read_once_over_random_cuts_of_random_files() -> None:
    rng = random.Random(20240611)
    for _ in range(400):
        data = random_lines(rng)
        size = len(data)
        for _ in range(5):
            count = rng.randint(0, max(1, size // 3))
            cuts = [rng.randint(0, size) for _ in range(count)]
            assert_every_line_once(data, cuts)


def test_even_slices_like_the_planners_give_every_line_once() -> None:
    rng = random.Random(7)
    for _ in range(200):
        data = random_lines(rng)
        size = len(data)
        if size < 2:
            continue
        count = rng.randint(2, max(2, size))
        step = math.ceil(size / count)
        assert_every_line_once(data, list(range(step, size, step)))


def test_a_line_longer_than_several_slices_belongs_to_the_slice_it_starts_in() -> None:
    long = b"x" * (3 * tabular._CHUNK + 17)
    data = b"head\n" + long + b"\nlast\n"
    cuts = [10, 1000, tabular._CHUNK + 5, 2 * tabular._CHUNK, len(data) - 3]
    parts = pieces(data, cuts)
    assert parts[0] == b"head\n" + long + b"\n"
    assert parts[1:-2] == [b"", b"", b""]
    assert parts[-2] == b"last\n"
    assert parts[-1] == b""
    assert b"".join(parts) == data


def test_a_slice_reads_its_range_and_no_more_than_the_line_that_crosses_its_end() -> None:
    rng = random.Random(99)
    for _ in range(200):
        data = random_lines(rng) * 20
        size = len(data)
        if size < 4:
            continue
        start = rng.randint(0, size - 1)
        end = rng.randint(start + 1, size)
        read, calls = reader(data)
        slice_lines(read, byte_slice(size, start, end))
        assert min(a for a, _ in calls) >= max(0, start - 1)
        next_newline = data.find(b"\n", end - 1)
        line_end = size if next_newline < 0 else next_newline + 1
        assert max(b for _, b in calls) <= min(size, max(end, line_end) + tabular._CHUNK)
        assert sum(b - a for a, b in calls) <= (end - start + 1) + (line_end - end) + 2 * 1024**2


# -- slice_bytes and load_frame: CSV and JSON Lines ---------------------------------------------


def quoted_frame(rows: int) -> pd.DataFrame:
    texts = ["comma, inside", 'a "quoted" word', "plain", "naïve", " padded "]
    return pd.DataFrame(
        {
            "row": range(rows),
            "text": [f"{texts[i % len(texts)]} {i}" for i in range(rows)],
            "value": [i * 0.5 for i in range(rows)],
        }
    )


@pytest.mark.parametrize(
    ("rows", "target"), [(12, 1), (400, 50), (400, 333), (400, 1024), (400, 4096), (400, 10**9)]
)
def test_csv_slices_read_back_as_pandas_reads_the_whole_file(
    tmp_path: Path, rows: int, target: int
) -> None:
    path = tmp_path / "table.csv"
    quoted_frame(rows).to_csv(path, index=False)
    slices, _ = planned(spec_for(path, mini_batch_size=target), local_file(path))
    assert len(slices) == math.ceil(path.stat().st_size / target)

    frames = [load_frame(piece, [], {}) for piece in slices]

    whole = pd.concat([f for f in frames if len(f)], ignore_index=True)
    pd.testing.assert_frame_equal(whole, pd.read_csv(path), check_exact=True)


@pytest.mark.parametrize(("rows", "target"), [(8, 1), (300, 100), (300, 2048), (300, 10**9)])
def test_jsonl_slices_read_back_as_pandas_reads_the_whole_file(
    tmp_path: Path, rows: int, target: int
) -> None:
    path = tmp_path / "table.jsonl"
    path.write_text(quoted_frame(rows).to_json(orient="records", lines=True))
    slices, _ = planned(spec_for(path, mini_batch_size=target), local_file(path))

    frames = [load_frame(piece, [], {}) for piece in slices]

    whole = pd.concat([f for f in frames if len(f)], ignore_index=True)
    pd.testing.assert_frame_equal(whole, pd.read_json(path, lines=True), check_exact=True)


def test_every_csv_slice_after_the_first_gets_the_header_line(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_bytes(b"a,b\n1,2\n3,4\n5,6\n")
    size = path.stat().st_size
    assert slice_bytes(byte_slice(size, 0, 6, uri=str(path)), {}) == b"a,b\n1,2\n"
    assert slice_bytes(byte_slice(size, 6, 12, uri=str(path)), {}) == b"a,b\n3,4\n"
    assert slice_bytes(byte_slice(size, 12, size, uri=str(path)), {}) == b"a,b\n5,6\n"
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_bytes(b'{"a":1}\n{"a":2}\n')
    assert slice_bytes(byte_slice(16, 4, 16, fmt="jsonl", uri=str(jsonl)), {}) == b'{"a":2}\n'


def test_a_quoted_newline_is_an_error_in_a_split_csv_and_fine_in_a_whole_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "notes.csv"
    frame = pd.DataFrame({"row": range(60), "note": ["x"] * 60})
    frame.loc[40, "note"] = "two\nlines"
    frame.to_csv(path, index=False)
    size = path.stat().st_size

    whole = load_frame(byte_slice(size, 0, size, uri=str(path)), [], {})
    pd.testing.assert_frame_equal(whole, frame)

    slices, _ = planned(spec_for(path, mini_batch_size=64), local_file(path))
    outcomes = []
    for piece in slices:
        try:
            load_frame(piece, [], {})
            outcomes.append("ok")
        except TabularInputError as exc:
            assert "newline inside a quoted field" in str(exc)
            assert str(path) in str(exc)
            outcomes.append("error")
    assert "error" in outcomes and "ok" in outcomes


def test_doubled_quotes_in_a_split_csv_are_not_taken_for_a_quoted_newline(tmp_path: Path) -> None:
    path = tmp_path / "quotes.csv"
    frame = pd.DataFrame({"row": range(200), "text": ['say ""hi"", "bye"'] * 200})
    frame.to_csv(path, index=False)
    slices, _ = planned(spec_for(path, mini_batch_size=100), local_file(path))
    whole = pd.concat([load_frame(p, [], {}) for p in slices], ignore_index=True)
    pd.testing.assert_frame_equal(whole, frame)


# -- the plan: byte ranges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "target"),
    [
        (size, target)
        for size in [1, 99, 100, 101, 4096, 12_345, 1_000_003]
        for target in [1, 7, 100, 1024, 50_000]
        if size // target <= 2000  # enough slices to show the rule
    ],
)
def test_byte_ranges_cover_the_file_exactly_in_slices_no_larger_than_the_target(
    size: int, target: int
) -> None:
    uri = "/nonexistent/table.csv"
    slices, warnings = planned(spec_for(uri, mini_batch_size=target), InputFile(uri, size))

    assert not warnings
    assert len(slices) == max(1, math.ceil(size / target))
    assert slices[0].start == 0 and slices[-1].end == size
    for before, after in itertools.pairwise(slices):
        assert before.end == after.start
    assert all(0 < s.end - s.start <= target for s in slices)
    assert all(s.kind == "bytes" and s.uri == uri and s.size == size for s in slices)
    if len(slices) == 1:
        assert slices[0].whole_file and slices[0].describe() == uri
    else:
        assert slices[1].describe() == f"{uri}#bytes={slices[1].start}-{slices[1].end}"


def test_an_empty_file_is_one_whole_slice() -> None:
    uri = "/nonexistent/empty.jsonl"
    slices, _ = planned(spec_for(uri, mini_batch_size=10), InputFile(uri, 0))
    assert [(s.start, s.end, s.whole_file) for s in slices] == [(0, 0, True)]


def test_a_compressed_file_is_one_slice_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "table.csv.gz"
    path.write_bytes(gzip.compress(quoted_frame(2000).to_csv(index=False).encode()))
    slices, warnings = planned(
        spec_for(path, input_format="csv", mini_batch_size=100), local_file(path)
    )
    assert len(slices) == 1 and slices[0].whole_file
    assert warnings == [f"{path} is compressed and cannot be split: one mini-batch"]
    pd.testing.assert_frame_equal(load_frame(slices[0], [], {}), quoted_frame(2000))


def test_mini_batch_rows_sizes_csv_slices_from_the_first_rows(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    lines = ["id,text"] + [f"{i:06d},{'abcdefghij'}" for i in range(5000)]
    path.write_text("\n".join(lines) + "\n")  # 18 bytes a row
    slices, _ = planned(spec_for(path, mini_batch_rows=500), local_file(path))
    assert len(slices) in (10, 11)  # an estimate: the sample ends inside a line
    rows = [len(load_frame(p, [], {})) for p in slices]
    assert sum(rows) == 5000 and all(440 <= r <= 510 for r in rows), rows


# -- the plan: Parquet --------------------------------------------------------------------------


def parquet_file(path: Path, group_rows: list[int], text: int = 8) -> pd.DataFrame:
    """A Parquet file whose row groups hold ``group_rows`` rows; its rows as a DataFrame."""
    rng = np.random.default_rng(len(group_rows))
    total = sum(group_rows)
    frame = pd.DataFrame(
        {
            "row": np.arange(total),
            "x": rng.random(total),
            "s": ["".join(rng.choice(list("abcdef"), text)) for _ in range(total)],
        }
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with pq.ParquetWriter(path, table.schema) as writer:
        start = 0
        for rows in group_rows:
            writer.write_table(table.slice(start, rows), row_group_size=rows)
            start += rows
    assert [
        pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(len(group_rows))
    ] == group_rows
    return frame


def read_all(slices: list[TableSlice]) -> pd.DataFrame:
    return pd.concat([load_frame(p, [], {}) for p in slices], ignore_index=True)


def shape(slices: list[TableSlice]) -> list[tuple[str, list[int], int, int]]:
    return [(s.kind, s.row_groups, s.start, s.end) for s in slices]


def test_parquet_row_groups_are_grouped_in_runs_up_to_mini_batch_rows(tmp_path: Path) -> None:
    path = tmp_path / "groups.parquet"
    frame = parquet_file(path, [100] * 10)

    for rows, runs in [
        (100, [[i] for i in range(10)]),
        (250, [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]),
        (300, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]),
        (10_000, [list(range(10))]),
    ]:
        slices, _ = planned(spec_for(path, mini_batch_rows=rows), local_file(path))
        assert [s.row_groups for s in slices] == runs
        assert all(s.kind == "row_groups" for s in slices)
        assert [s.rows for s in slices] == [100 * len(r) for r in runs]
        pd.testing.assert_frame_equal(read_all(slices), frame)
    assert slices[0].describe() == f"{path}#row_groups=0-9"


def test_parquet_row_groups_are_grouped_greedily_up_to_mini_batch_size(tmp_path: Path) -> None:
    path = tmp_path / "groups.parquet"
    frame = parquet_file(path, [200, 50, 300, 100, 120, 80, 400, 10])
    meta = parquet_metadata(str(path), {})
    weights = [
        sum(meta.row_group(i).column(j).total_compressed_size for j in range(meta.num_columns))
        for i in range(meta.num_row_groups)
    ]
    target = int(sum(weights) / 3)
    slices, _ = planned(spec_for(path, mini_batch_size=target), local_file(path))

    runs = [s.row_groups for s in slices]
    assert [g for run in runs for g in run] == list(range(8))
    for index, run in enumerate(runs):
        weight = sum(weights[g] for g in run)
        assert weight <= target or len(run) == 1
        if index + 1 < len(runs):  # greedy: the next group would not have fitted
            assert weight + weights[runs[index + 1][0]] > target
    pd.testing.assert_frame_equal(read_all(slices), frame)


def test_a_row_group_far_larger_than_the_target_is_split_into_row_ranges(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mixed.parquet"
    frame = parquet_file(path, [50, 1000, 50])

    slices, _ = planned(spec_for(path, mini_batch_rows=100), local_file(path))

    assert shape(slices) == (
        [("row_groups", [0], 0, 0)]
        + [("rows", [1], start, start + 100) for start in range(0, 1000, 100)]
        + [("row_groups", [2], 0, 0)]
    )
    assert slices[1].describe() == f"{path}#row_group=1&rows=0-100"
    assert [s.rows for s in slices] == [50] + [100] * 10 + [50]
    pd.testing.assert_frame_equal(read_all(slices), frame)

    uneven, _ = planned(spec_for(path, mini_batch_rows=300), local_file(path))
    assert [(s.start, s.end) for s in uneven if s.kind == "rows"] == [
        (0, 250),
        (250, 500),
        (500, 750),
        (750, 1000),
    ]
    pd.testing.assert_frame_equal(read_all(uneven), frame)


def test_only_a_row_group_over_twice_the_size_is_split(tmp_path: Path) -> None:
    path = tmp_path / "one.parquet"
    frame = parquet_file(path, [3000], text=30)
    meta = parquet_metadata(str(path), {})
    weight = sum(meta.row_group(0).column(j).total_compressed_size for j in range(3))

    whole, _ = planned(spec_for(path, mini_batch_size=weight // 2 + 1), local_file(path))
    assert shape(whole) == [("row_groups", [0], 0, 0)]

    split, _ = planned(spec_for(path, mini_batch_size=weight // 5), local_file(path))
    assert len(split) >= 5 and all(s.kind == "rows" for s in split)
    assert split[0].start == 0 and split[-1].end == 3000
    for before, after in itertools.pairwise(split):
        assert before.end == after.start
    pd.testing.assert_frame_equal(read_all(split), frame)


def test_a_one_row_group_of_one_row_is_never_split(tmp_path: Path) -> None:
    path = tmp_path / "single.parquet"
    frame = parquet_file(path, [1], text=50_000)
    slices, _ = planned(spec_for(path, mini_batch_size=100), local_file(path))
    assert shape(slices) == [("row_groups", [0], 0, 0)]
    pd.testing.assert_frame_equal(read_all(slices), frame)


# -- the plan: partitions -----------------------------------------------------------------------


def test_partitions_are_one_slice_per_combination_in_listing_order() -> None:
    base = "/nonexistent/data"
    names = [
        "store=1/brand=a/p0.csv",
        "store=1/brand=a/p1.csv",
        "store=1/brand=b/p0.csv",
        "store=10/brand=a/p0.csv",
        "store=2/brand=a/p0.csv",
    ]
    files = [InputFile(f"{base}/{name}", 10) for name in names]
    spec = spec_for(base, input_format="csv", partition_keys=["store", "brand"])

    slices, _ = planned(spec, *files)

    assert [(s.kind, s.partition, len(s.files)) for s in slices] == [
        ("partition", {"store": "1", "brand": "a"}, 2),
        ("partition", {"store": "1", "brand": "b"}, 1),
        ("partition", {"store": "10", "brand": "a"}, 1),
        ("partition", {"store": "2", "brand": "a"}, 1),
    ]
    assert slices[0].files == [f"{base}/{names[0]}", f"{base}/{names[1]}"]
    assert slices[0].describe() == "partition store=1,brand=a (2 files)"


def test_a_file_outside_the_partition_folders_is_a_spec_error() -> None:
    base = "/nonexistent/data"
    spec = spec_for(base, input_format="csv", partition_keys=["store"])
    with pytest.raises(SpecError, match=r"stray\.csv has no store=\.\.\. folder"):
        planned(spec, InputFile(f"{base}/store=1/a.csv", 1), InputFile(f"{base}/stray.csv", 1))


def test_a_partition_reads_all_its_files_and_adds_its_values_as_strings(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "store=7" / "brand=x"
    folder.mkdir(parents=True)
    quoted_frame(5).to_csv(folder / "a.csv", index=False)
    quoted_frame(3).to_csv(folder / "b.csv", index=False)
    spec = spec_for(tmp_path, input_format="csv", partition_keys=["store", "brand"])
    slices, _ = planned(spec, local_file(folder / "a.csv"), local_file(folder / "b.csv"))

    frame = load_frame(slices[0], [], {})

    expected = pd.concat([quoted_frame(5), quoted_frame(3)], ignore_index=True)
    expected["store"] = "7"
    expected["brand"] = "x"
    pd.testing.assert_frame_equal(frame, expected)
