"""Planning tabular inputs: slices of about ``mini_batch_size`` bytes (or ``mini_batch_rows``
rows) that never cross a file boundary, or one slice per partition.

CSV and JSON Lines are cut by byte ranges without reading them (the reader snaps the ends to
line boundaries); Parquet by its footer: runs of row groups, and row ranges inside a row group
far larger than the target, so a one-row-group file still splits.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

from fleetrun.common import storage
from fleetrun.common.errors import SpecError
from fleetrun.common.listing import InputFile
from fleetrun.common.slices import TableSlice
from fleetrun.common.spec import JobSpec

COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")
_SAMPLE = 64 * 1024


class Warnings(list[str]):
    """What ``fleetrun plan`` should say about files that cannot be split to size."""


def plan_slices(
    spec: JobSpec, files: Iterable[InputFile], warnings: Warnings | None = None
) -> Iterator[TableSlice]:
    warnings = warnings if warnings is not None else Warnings()
    if spec.partition_keys:
        yield from _partition_slices(spec, files)
        return
    for found in files:
        if spec.input_format == "parquet":
            yield from _parquet_slices(spec, found, warnings)
        else:
            yield from _byte_slices(spec, found, warnings)


def _size_of(spec: JobSpec, found: InputFile) -> int:
    if found.size is not None:
        return int(found.size)
    fs, path = storage.filesystem(found.uri, spec.storage_options)
    return int(storage.call(found.uri, lambda: fs.size(path)))


def _byte_slices(spec: JobSpec, found: InputFile, warnings: Warnings) -> Iterator[TableSlice]:
    fmt = spec.input_format
    assert fmt in ("csv", "jsonl")
    size = _size_of(spec, found)
    whole = TableSlice(kind="bytes", format=fmt, uri=found.uri, size=size, start=0, end=size)
    if found.uri.lower().endswith(COMPRESSED):
        warnings.append(f"{found.uri} is compressed and cannot be split: one mini-batch")
        yield whole
        return
    target = spec.batch_size
    if spec.mini_batch_rows:
        target = max(1, int(spec.mini_batch_rows * _bytes_per_row(spec, found.uri, size)))
    if size <= target:
        yield whole
        return
    count = math.ceil(size / target)
    step = math.ceil(size / count)  # even slices, rather than a stub at the end
    for start in range(0, size, step):
        yield TableSlice(
            kind="bytes",
            format=fmt,
            uri=found.uri,
            size=size,
            start=start,
            end=min(size, start + step),
        )


def _bytes_per_row(spec: JobSpec, uri: str, size: int) -> float:
    """An estimate from the first 64 KB, for row-count sizing of line-based files."""
    fs, path = storage.filesystem(uri, spec.storage_options)
    sample: bytes = storage.call(uri, lambda: fs.cat_file(path, start=0, end=min(size, _SAMPLE)))
    whole = sample[: sample.rfind(b"\n") + 1] or sample  # whole lines only
    if spec.input_format == "csv" and whole.count(b"\n") > 1:
        whole = whole[whole.find(b"\n") + 1 :]  # the header is not a row
    return len(whole) / max(1, whole.count(b"\n"))


def parquet_metadata(uri: str, options: storage.StorageOptions) -> Any:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri, options)
    with storage.call(uri, lambda: fs.open(path, "rb")) as handle:
        return pq.ParquetFile(handle).metadata


def _parquet_slices(spec: JobSpec, found: InputFile, warnings: Warnings) -> Iterator[TableSlice]:
    meta = parquet_metadata(found.uri, spec.storage_options)
    size = found.size or 0
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    by_rows = spec.mini_batch_rows is not None

    def weight(group: Any) -> int:
        if by_rows:
            return int(group.num_rows)
        return sum(group.column(j).total_compressed_size for j in range(group.num_columns))

    target = spec.mini_batch_rows or spec.batch_size
    run: list[int] = []
    run_weight = 0
    run_rows = 0
    for index, group in enumerate(groups):
        w = weight(group)
        if w > 2 * target and group.num_rows > 1:
            if run:
                yield _row_groups(found.uri, size, run, run_rows)
                run, run_weight, run_rows = [], 0, 0
            # Far larger than the target: row ranges inside the group (its columns are read
            # whole, the rows outside the range are dropped).
            pieces = min(int(group.num_rows), math.ceil(w / target))
            step = math.ceil(group.num_rows / pieces)
            for start in range(0, group.num_rows, step):
                end = min(group.num_rows, start + step)
                yield TableSlice(
                    kind="rows",
                    format="parquet",
                    uri=found.uri,
                    size=size,
                    start=start,
                    end=end,
                    row_groups=[index],
                    rows=end - start,
                )
            continue
        if run and run_weight + w > target:
            yield _row_groups(found.uri, size, run, run_rows)
            run, run_weight, run_rows = [], 0, 0
        run.append(index)
        run_weight += w
        run_rows += group.num_rows
    if run or not groups:
        yield _row_groups(found.uri, size, run, run_rows)


def _row_groups(uri: str, size: int, groups: list[int], rows: int) -> TableSlice:
    return TableSlice(
        kind="row_groups", format="parquet", uri=uri, size=size, row_groups=groups, rows=rows
    )


def partition_values(uri: str, keys: list[str]) -> dict[str, str]:
    """The hive-style ``key=value`` folders of ``uri`` for ``keys``."""
    found: dict[str, str] = {}
    for segment in posixpath.dirname(uri.split("://", 1)[-1]).split("/"):
        key, sep, value = segment.partition("=")
        if sep and key in keys:
            found[key] = value
    missing = [k for k in keys if k not in found]
    if missing:
        raise SpecError(
            f"partition_keys {keys}: {uri} has no {'/'.join(f'{k}=...' for k in missing)} folder; "
            "partitioned inputs are laid out as <key>=<value>/ folders"
        )
    return {k: found[k] for k in keys}


def _partition_slices(spec: JobSpec, files: Iterable[InputFile]) -> Iterator[TableSlice]:
    """One slice per distinct combination of the partition keys, in listing order."""
    keys = list(spec.partition_keys or [])
    fmt = spec.input_format
    assert fmt in ("csv", "parquet", "jsonl")
    groups: dict[tuple[str, ...], list[str]] = {}
    for found in files:
        values = partition_values(found.uri, keys)
        groups.setdefault(tuple(values[k] for k in keys), []).append(found.uri)
    for combination, uris in groups.items():
        yield TableSlice(
            kind="partition",
            format=fmt,
            files=uris,
            partition=dict(zip(keys, combination, strict=True)),
        )
