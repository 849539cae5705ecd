"""A slice of a table: what one tabular mini-batch reads, and never more.

A slice never crosses a file boundary, except a partition slice, which is every file of one
combination of partition-key values. CSV and JSON Lines slices are byte ranges whose ends are
snapped to line boundaries when they are read (a line belongs to the slice in which it starts);
Parquet slices are runs of row groups, or a range of rows inside one large row group.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SliceKind = Literal["bytes", "row_groups", "rows", "partition"]


class TableSlice(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: SliceKind
    format: Literal["csv", "parquet", "jsonl"]
    uri: str = ""  # the file (all kinds but partition)
    size: int = 0  # the file's size in bytes
    start: int = 0  # bytes: first byte; rows: first row of the row group
    end: int = 0  # bytes: one past the last byte; rows: one past the last row
    row_groups: list[int] = Field(default_factory=list)  # row_groups, rows (one group)
    rows: int | None = None  # the number of rows, when the plan knows it (Parquet)
    files: list[str] = Field(default_factory=list)  # partition: every file of it
    partition: dict[str, Any] = Field(default_factory=dict)  # partition: key -> value

    @property
    def whole_file(self) -> bool:
        return self.kind == "bytes" and self.start == 0 and self.end >= self.size

    def describe(self) -> str:
        """How failed_items.txt names the slice: the file and the part of it."""
        if self.kind == "bytes":
            return self.uri if self.whole_file else f"{self.uri}#bytes={self.start}-{self.end}"
        if self.kind == "row_groups":
            groups = self.row_groups
            span = f"{groups[0]}" if len(groups) == 1 else f"{groups[0]}-{groups[-1]}"
            return f"{self.uri}#row_groups={span}"
        if self.kind == "rows":
            return f"{self.uri}#row_group={self.row_groups[0]}&rows={self.start}-{self.end}"
        values = ",".join(f"{k}={v}" for k, v in self.partition.items())
        return f"partition {values} ({len(self.files)} files)"

    def input_files(self) -> list[str]:
        return self.files if self.kind == "partition" else [self.uri]
