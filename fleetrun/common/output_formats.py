"""The formats of the append_row output file: a batch's body, and the parts joined into one.

``text`` is ParallelRunStep's (``str(element)`` per line; DataFrame rows space-separated, no
header). ``csv`` writes a header once and quotes properly, ``jsonl`` one JSON object per row,
``parquet`` one Parquet file whose schema is the first batch's; a later batch whose columns do
not fit is a clear error, not a mangled file.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import IO, Any

from fleetrun.common.errors import FleetrunError


class OutputSchemaError(FleetrunError):
    """A batch's output does not fit the output file's columns."""


def to_frame(values: Any) -> Any:
    """A DataFrame of a batch's successful elements (scalars become a ``result`` column)."""
    import pandas as pd

    if type(values).__name__ == "DataFrame":
        return values
    values = list(values)
    if values and all(isinstance(v, dict) for v in values):
        return pd.DataFrame(values)
    return pd.DataFrame({"result": values})


def schema_of(frame: Any) -> list[str]:
    return [f"{name}:{dtype}" for name, dtype in frame.dtypes.items()]


def encode(outcome: Any, fmt: str) -> tuple[bytes, list[str]]:
    """A batch's part body in ``fmt``, and its columns (``name:dtype``) for the typed formats.

    ``outcome`` has ``values`` (the successful elements) and ``lines`` (their text form, only
    computed for the text format).
    """
    if fmt == "text":
        return "".join(f"{line}\n" for line in outcome.lines).encode(), []
    frame = to_frame(outcome.values)
    if fmt == "csv":
        return frame.to_csv(header=False, index=False, lineterminator="\n").encode(), schema_of(
            frame
        )
    if fmt == "jsonl":
        # json.dumps writes floats exactly (DataFrame.to_json rounds to 10 digits).
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        body = "".join(
            json.dumps(r, default=_json_value, ensure_ascii=False) + "\n" for r in records
        )
        return body.encode(), schema_of(frame)
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    return buffer.getvalue(), schema_of(frame)


def _json_value(value: Any) -> Any:
    """What json.dumps cannot write by itself: numpy scalars, timestamps, bytes."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def check_columns(reference: list[str] | None, schema: list[str], batch: int, fmt: str) -> None:
    """CSV needs the same column names, Parquet the same names and types, in every batch."""
    if reference is None or fmt in ("text", "jsonl") or not schema:
        return
    names = [c.split(":", 1)[0] for c in schema]
    expected = [c.split(":", 1)[0] for c in reference]
    if names != expected or (fmt == "parquet" and not _types_compatible(reference, schema)):
        raise OutputSchemaError(
            f"batch {batch} returned columns {schema}, but the output file has {reference}: "
            "every run() must return the same columns (and, for parquet, the same types)"
        )


def _types_compatible(reference: list[str], schema: list[str]) -> bool:
    numeric = {"int64", "int32", "float64", "float32", "Int64", "Float64"}
    for a, b in zip(reference, schema, strict=True):
        ta, tb = a.split(":", 1)[1], b.split(":", 1)[1]
        if ta != tb and not (ta in numeric and tb in numeric) and "object" not in (ta, tb):
            return False
    return True


def write_joined(
    fmt: str, bodies: Iterator[tuple[int, list[str], Iterator[bytes]]], out: IO[bytes]
) -> None:
    """Join the parts' bodies, in batch order, into ``out``."""
    if fmt in ("text", "jsonl"):
        for _batch, _schema, chunks in bodies:
            for chunk in chunks:
                out.write(chunk)
        return
    if fmt == "csv":
        header_written = False
        for _batch, schema, chunks in bodies:
            if not header_written and schema:
                names = [c.split(":", 1)[0] for c in schema]
                out.write(_csv_row(names))
                header_written = True
            for chunk in chunks:
                out.write(chunk)
        return
    _write_parquet(bodies, out)


def _csv_row(names: list[str]) -> bytes:
    import csv

    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(names)
    return text.getvalue().encode()


# A part with fewer rows is decoded and joined with its neighbours into one row group, so a job
# of many small batches does not leave a file of thousands of tiny row groups.
SMALL_PART_ROWS = 65_536


def _write_parquet(
    bodies: Iterator[tuple[int, list[str], Iterator[bytes]]], out: IO[bytes]
) -> None:
    """One Parquet file from the parts' Parquet bodies, schema from the first. A large part's
    row groups are copied as they are (no decoding, no re-encoding); small parts, and parts
    whose schema differs but can be cast to the first's, are decoded and re-encoded together."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    joined: _ParquetJoin | None = None
    pending: list[Any] = []  # decoded small parts, not yet written

    def flush() -> None:
        if pending and joined is not None:
            buffer = io.BytesIO()
            pq.write_table(pa.concat_tables(pending), buffer)
            data = buffer.getvalue()
            joined.append(data, _footer(data))
            pending.clear()

    for batch, _schema, chunks in bodies:
        data = b"".join(chunks)
        if not data:
            continue
        metadata = _footer(data)
        if joined is None:
            joined = _ParquetJoin(out, data, metadata)
        if joined.fits(metadata) and metadata.num_rows >= SMALL_PART_ROWS:
            flush()
            joined.append(data, metadata)
            continue
        table = pq.read_table(io.BytesIO(data))
        if not table.schema.equals(joined.schema):
            try:
                table = table.select(joined.schema.names).cast(joined.schema)
            except (pa.ArrowInvalid, KeyError, ValueError) as exc:
                raise OutputSchemaError(
                    f"batch {batch} returned a schema that does not fit the output file's "
                    f"(from the first batch): {table.schema} vs {joined.schema}: {exc}"
                ) from exc
        pending.append(table)
        if sum(t.num_rows for t in pending) >= SMALL_PART_ROWS:
            flush()
    if joined is None:  # no batch returned a row: still a valid (empty) Parquet file
        pq.write_table(pa.table({}), out)
        return
    flush()
    joined.close()


_MAGIC = b"PAR1"


def _footer_length(data: bytes) -> int:
    return int.from_bytes(data[-8:-4], "little")


def _footer(data: bytes) -> Any:
    """A Parquet file's footer (Thrift ``FileMetaData``), as fastparquet's codec reads it."""
    from fastparquet import cencoding

    if len(data) < 12 or data[:4] != _MAGIC or data[-4:] != _MAGIC:
        raise OutputSchemaError("a batch's Parquet part is not a Parquet file")
    return cencoding.from_buffer(data[-8 - _footer_length(data) : -8], "FileMetaData")


def _schema_of(metadata: Any) -> list[bytes]:
    return [bytes(element.to_bytes()) for element in metadata.schema]


class _ParquetJoin:
    """Parquet files concatenated at the byte level. A Parquet file is ``PAR1``, its column
    chunks, then a footer (Thrift ``FileMetaData``) holding the schema and, for every row
    group, the absolute file offsets of its chunks; appending a file's chunks and shifting those
    offsets by where they now sit gives one file holding every row group, in order."""

    def __init__(self, out: IO[bytes], first: bytes, metadata: Any) -> None:
        """Start the file; ``first`` (a part, whose footer is ``metadata``) gives the schema
        and the footer's template. Its row groups are appended like any part's."""
        import pyarrow.parquet as pq

        self.out = out
        self.schema = pq.read_schema(io.BytesIO(first))
        self.metadata = metadata  # the template of the file's footer (see close())
        self._schema_bytes = _schema_of(metadata)
        self.row_groups: list[Any] = []
        self.rows = 0
        out.write(_MAGIC)
        self.offset = len(_MAGIC)

    def fits(self, metadata: Any) -> bool:
        """Whether a part with this footer can be copied as it is (the same Parquet schema)."""
        return _schema_of(metadata) == self._schema_bytes

    def append(self, data: bytes, metadata: Any) -> None:
        """Copy the part ``data`` (footer ``metadata``) behind what is written so far."""
        body_end = len(data) - 8 - _footer_length(data)
        shift = self.offset - len(_MAGIC)
        for group in metadata.row_groups:
            self._shift(group, shift)
            if group.ordinal is not None:
                group.ordinal = len(self.row_groups)
            self.row_groups.append(group)
            self.rows += group.num_rows
        self.out.write(memoryview(data)[len(_MAGIC) : body_end])
        self.offset += body_end - len(_MAGIC)

    @staticmethod
    def _shift(group: Any, shift: int) -> None:
        if group.file_offset is not None:
            group.file_offset += shift
        for chunk in group.columns:
            if chunk.file_offset:  # 0 from writers that leave this deprecated field unset
                chunk.file_offset += shift
            for name in ("column_index_offset", "offset_index_offset"):
                if getattr(chunk, name) is not None:
                    setattr(chunk, name, getattr(chunk, name) + shift)
            meta = chunk.meta_data
            for name in (
                "data_page_offset",
                "dictionary_page_offset",
                "index_page_offset",
                "bloom_filter_offset",
            ):
                if getattr(meta, name) is not None:
                    setattr(meta, name, getattr(meta, name) + shift)

    def close(self) -> None:
        metadata = self.metadata
        metadata.row_groups = self.row_groups
        metadata.num_rows = self.rows
        footer = bytes(metadata.to_bytes())
        self.out.write(footer)
        self.out.write(len(footer).to_bytes(4, "little"))
        self.out.write(_MAGIC)
