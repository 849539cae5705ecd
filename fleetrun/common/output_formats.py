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


def _write_parquet(
    bodies: Iterator[tuple[int, list[str], Iterator[bytes]]], out: IO[bytes]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer: Any = None
    reference: Any = None
    try:
        for batch, _schema, chunks in bodies:
            data = b"".join(chunks)
            if not data:
                continue
            table = pq.read_table(io.BytesIO(data))
            if writer is None:
                reference = table.schema
                writer = pq.ParquetWriter(out, reference)
            elif not table.schema.equals(reference):
                try:
                    table = table.select(reference.names).cast(reference)
                except (pa.ArrowInvalid, KeyError, ValueError) as exc:
                    raise OutputSchemaError(
                        f"batch {batch} returned a schema that does not fit the output file's "
                        f"(from the first batch): {table.schema} vs {reference}: {exc}"
                    ) from exc
            writer.write_table(table)
        if writer is None:  # no batch returned a row: still a valid (empty) Parquet file
            pq.write_table(pa.table({}), out)
    finally:
        if writer is not None:
            writer.close()
