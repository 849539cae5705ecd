"""Reading one table slice into a pandas DataFrame, reading only that slice.

Line-based files (CSV, JSON Lines) are read by byte range (a range request on an object store)
with the ends snapped to line boundaries: a line belongs to the slice in which it starts, so
every line is read exactly once, whatever the slicing. A CSV slice gets the file's header line
in front. A newline inside a quoted CSV field cannot be found by a byte range; a split file that
has one is reported as an error instead of being turned into broken rows.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from fleetrun.common import storage
from fleetrun.common.errors import FleetrunError
from fleetrun.common.slices import TableSlice
from fleetrun.common.storage import StorageOptions

_CHUNK = 64 * 1024
Reader = Callable[[int, int], bytes]


class TabularInputError(FleetrunError):
    """A slice cannot be read as the rows it should hold."""


def range_reader(uri: str, options: StorageOptions) -> Reader:
    """``read(start, end)`` of a file's bytes: a seek on a local file, a range request remote."""
    if storage.is_local(uri):
        path = storage.local_path(uri)

        def read_local(start: int, end: int) -> bytes:
            with open(path, "rb") as handle:
                handle.seek(start)
                return handle.read(max(0, end - start))

        return read_local
    fs, path = storage.filesystem(uri, options)

    def read_remote(start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return bytes(storage.call(uri, lambda: fs.cat_file(path, start=start, end=end)))

    return read_remote


def _through_newline(read: Reader, start: int, size: int) -> bytes:
    """The bytes from ``start`` up to and including the next newline (or the end of file)."""
    parts: list[bytes] = []
    position = start
    while position < size:
        chunk = read(position, min(size, position + _CHUNK))
        if not chunk:
            break
        cut = chunk.find(b"\n")
        if cut >= 0:
            parts.append(chunk[: cut + 1])
            break
        parts.append(chunk)
        position += len(chunk)
    return b"".join(parts)


def slice_lines(read: Reader, piece: TableSlice) -> bytes:
    """The whole lines that start inside ``[piece.start, piece.end)``."""
    start, end, size = piece.start, min(piece.end, piece.size), piece.size
    if start >= size:
        return b""
    low = max(0, start - 1)
    data = read(low, end)
    if start > 0:
        cut = data.find(b"\n")
        if cut < 0:
            return b""  # no line starts in this slice: a line longer than the slice
        data = data[cut + 1 :]
    if not data:
        return b""
    if end < size and not data.endswith(b"\n"):
        data += _through_newline(read, end, size)
    return data


def header_line(read: Reader, size: int) -> bytes:
    return _through_newline(read, 0, size)


def _check_quotes(data: bytes, piece: TableSlice) -> None:
    """In a CSV without quoted newlines every line has an even number of quote characters."""
    if b'"' not in data:
        return
    for number, line in enumerate(data.split(b"\n")):
        if line.count(b'"') % 2:
            raise TabularInputError(
                f"{piece.uri} has a newline inside a quoted field (near line {number + 1} of "
                f"bytes {piece.start}-{piece.end}); such a file cannot be split by byte range. "
                "Set mini_batch_size above the file's size so it is read whole, or remove the "
                "newlines from quoted fields."
            )


def slice_bytes(piece: TableSlice, options: StorageOptions) -> bytes:
    """The rows of a CSV or JSON Lines slice as a small self-contained file (CSV: with header)."""
    read = range_reader(piece.uri, options)
    if piece.whole_file:
        return read(0, piece.size)
    data = slice_lines(read, piece)
    if piece.format == "csv":
        if piece.start > 0:
            data = header_line(read, piece.size) + data
        _check_quotes(data, piece)
    return data


def parse(data: bytes | str, fmt: str, compressed_name: str = "") -> Any:
    import pandas as pd

    source: Any = data if isinstance(data, str) else io.BytesIO(data)
    compression: Any = "infer" if isinstance(data, str) else _compression(compressed_name)
    if fmt == "csv":
        if not isinstance(data, str) and not data.strip():
            return pd.DataFrame()
        return pd.read_csv(source, compression=compression)
    if fmt == "jsonl":
        if not isinstance(data, str) and not data.strip():
            return pd.DataFrame()
        return pd.read_json(source, lines=True, compression=compression)
    import pyarrow.parquet as pq

    return pq.read_table(source).to_pandas()


def _compression(name: str) -> str | None:
    for suffix, kind in (
        (".gz", "gzip"),
        (".bz2", "bz2"),
        (".xz", "xz"),
        (".zst", "zstd"),
        (".zip", "zip"),
    ):
        if name.lower().endswith(suffix):
            return kind
    return None


def _parquet_slice(piece: TableSlice, options: StorageOptions) -> Any:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(piece.uri, options)
    with storage.call(piece.uri, lambda: fs.open(path, "rb")) as handle:
        parquet = pq.ParquetFile(handle)
        if piece.kind == "rows":
            table = parquet.read_row_group(piece.row_groups[0])
            table = table.slice(piece.start, piece.end - piece.start)
        else:
            table = (
                parquet.read_row_groups(piece.row_groups)
                if piece.row_groups
                else parquet.schema_arrow.empty_table()
            )
        return table.to_pandas()


def load_frame(piece: TableSlice, local_paths: list[str], options: StorageOptions) -> Any:
    """The slice as a DataFrame; ``local_paths`` are what staging fetched, if anything."""
    import pandas as pd

    if piece.kind == "partition":
        paths = local_paths or piece.files
        frames = [parse(storage.read_bytes(p, options), piece.format, p) for p in paths]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        for key, value in piece.partition.items():
            if key not in frame.columns:
                frame[key] = value
        return frame
    if piece.format == "parquet":
        return _parquet_slice(piece, options)
    if local_paths:
        with open(local_paths[0], "rb") as handle:  # staged: exactly the slice's rows
            return parse(handle.read(), piece.format, piece.uri if piece.whole_file else "")
    return parse(slice_bytes(piece, options), piece.format, piece.uri if piece.whole_file else "")


def stage_slice(piece: TableSlice, folder: Any, options: StorageOptions) -> list[str]:
    """Fetch a remote line-based slice to one local file; other slices need no staging."""
    if piece.kind != "bytes" or piece.format == "parquet" or storage.is_local(piece.uri):
        return []
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"slice.{piece.format}"
    target.write_bytes(slice_bytes(piece, options))
    return [str(target)]
