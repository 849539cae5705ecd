"""tabular: rows per second through a CSV with a cheap vectorised ``run()``.

The issue: "A 2 GB CSV (generated) scored with a cheap vectorised run(): rows per second
through the fleet with 2 runners, against pandas.read_csv(chunksize=...) + the same function
in one process, same run. Target: >= 1.5x the single process on 2 cores."

One CSV (an ``id`` and eight numeric columns, 82 bytes a row) is generated in a temporary
folder: 2 GB, or 200 MB with ``--quick``. Both sides run the very same ``score()`` (a weighted
sum of the columns, as numpy does it) and write the same Parquet output, ``id`` and ``score``
per input row, in input order, and the very same scores:

- ``pandas``: ``pd.read_csv(path, chunksize=CHUNK_ROWS)``, ``score()`` per chunk, each chunk
  written to one ``pq.ParquetWriter``; one process.
- ``embedded``: ``fleetrun.run(spec)`` with ``process_count_per_node=2``, ``input_format:
  csv``, ``mini_batch_size`` of about one chunk's bytes, ``append_row_format: parquet``: the
  file is cut by byte ranges and two runners parse and score the slices.

Reported: rows per second for both (rows / wall time of the whole call, including fleetrun's
planning, runner start-up and the joining of the parts into one file) and their ratio. Both
outputs are compared after each round (same ids in the same order, same scores); the check is
not timed. The broker carries a few dozen messages here, so only the embedded one is measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import fleetrun
from bench.common import Side, interleave, table, timeline, write_job_folder
from fleetrun.common.spec import JobSpec

NAME = "tabular"
TARGET_RATIO = 1.5
RUNNERS = 2
COLUMNS = [f"x{i}" for i in range(8)]
ID_DIGITS = 9
# id, then eight ",0.dddddd" fields, then a newline: every row is as long as every other.
ROW_BYTES = ID_DIGITS + 9 * len(COLUMNS) + 1
CHUNK_ROWS = 800_000  # the baseline's chunksize: about 64 MB of CSV
MINI_BATCH_SIZE = "64MB"  # fleetrun's slices: the same amount of CSV
GENERATE_ROWS = 1_000_000  # rows generated (and written) at a time

SCRIPT = f"""\
import numpy as np
import pandas as pd

COLUMNS = {COLUMNS!r}
WEIGHTS = np.array([0.5, -1.25, 2.0, 0.75, -0.5, 1.5, -2.25, 1.0])


def score(df):
    # Column by column rather than a matrix product: BLAS may round a row differently
    # depending on where it falls in a chunk, and both sides must give the very same scores.
    total = np.zeros(len(df))
    for column, weight in zip(COLUMNS, WEIGHTS):
        total += df[column].to_numpy(dtype=np.float64) * weight
    return pd.DataFrame({{"id": df["id"].to_numpy(), "score": total}})


def run(df):
    return score(df)
"""


def generate_csv(path: Path, size_bytes: int, seed: int = 1) -> int:
    """A CSV of about ``size_bytes``: zero-padded ids and random numbers in [0, 1) with six
    decimals, made as fixed-width rows of bytes by numpy (fast: no float formatting). Returns
    the number of rows."""
    rows = max(1, size_bytes // ROW_BYTES)
    rng = np.random.default_rng(seed)
    header = ("id," + ",".join(COLUMNS) + "\n").encode()
    powers = 10 ** np.arange(ID_DIGITS - 1, -1, -1, dtype=np.int64)
    with open(path, "wb") as handle:
        handle.write(header)
        for start in range(0, rows, GENERATE_ROWS):
            count = min(GENERATE_ROWS, rows - start)
            block = np.empty((count, ROW_BYTES), dtype=np.uint8)
            ids = np.arange(start, start + count, dtype=np.int64)
            block[:, :ID_DIGITS] = 48 + (ids[:, None] // powers) % 10
            fields = np.empty((count, len(COLUMNS), 9), dtype=np.uint8)
            fields[:, :, 0] = ord(",")
            fields[:, :, 1] = ord("0")
            fields[:, :, 2] = ord(".")
            fields[:, :, 3:] = rng.integers(48, 58, size=(count, len(COLUMNS), 6), dtype=np.uint8)
            block[:, ID_DIGITS:-1] = fields.reshape(count, -1)
            block[:, -1] = ord("\n")
            handle.write(block.tobytes())
    return rows


def load_script(path: Path) -> ModuleType:
    """The entry script as a module, so the baseline runs the very same ``score()``."""
    spec = importlib.util.spec_from_file_location("bench_tabular_score", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Tabular:
    def __init__(self, root: Path, size_bytes: int) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True)
        self.csv = self.data / "table.csv"
        started = time.perf_counter()
        self.rows = generate_csv(self.csv, size_bytes)
        self.generate_s = time.perf_counter() - started
        self.size = self.csv.stat().st_size
        self.job = write_job_folder(root / "job", SCRIPT)
        self.module = load_script(self.job / "score.py")
        self.reference: Path | None = None  # the first output, which the others must equal

    def spec(self, output: Path) -> JobSpec:
        return JobSpec(
            name="bench-tabular",
            inputs=[str(self.csv)],
            input_format="csv",
            output=str(output),
            entry_script="score.py",
            source_directory=str(self.job),
            mini_batch_size=MINI_BATCH_SIZE,
            process_count_per_node=RUNNERS,
            append_row_format="parquet",
            append_row_file_name="scores.parquet",
            allow_reuse=False,
        )

    # -- the sides -----------------------------------------------------------------------------

    def pandas_once(self, round_: int) -> dict[str, Any]:
        output = self.root / "out" / f"pandas-{round_}.parquet"
        output.parent.mkdir(parents=True, exist_ok=True)
        writer: Any = None
        started = time.perf_counter()
        try:
            for chunk in pd.read_csv(self.csv, chunksize=CHUNK_ROWS):
                table_ = pa.Table.from_pandas(self.module.score(chunk), preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(output, table_.schema)
                writer.write_table(table_)
        finally:
            if writer is not None:
                writer.close()
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "rows_per_s": self.rows / seconds,
            "output": self.check(output),
        }

    def fleetrun_once(self, round_: int) -> dict[str, Any]:
        output = self.root / "out" / f"embedded-{round_}"
        spec = self.spec(output)
        called, started = time.time(), time.perf_counter()
        summary = fleetrun.run(spec)
        seconds = time.perf_counter() - started
        record = {
            "status": summary.status,
            "seconds": seconds,
            "rows_per_s": self.rows / seconds,
            "batches": summary.mini_batches.total,
            **timeline(output, summary.mini_batches.total, called, called + seconds),
            "output": self.check(output / spec.append_row_file_name),
        }
        record.pop("batches_per_s_after_first", None)
        shutil.rmtree(output / "_fleetrun", ignore_errors=True)  # the parts: as large again
        return record

    def check(self, path: Path) -> str:
        """``"ok"`` when ``path`` holds a score per input row, ids in order, equal to the first
        output of the run; else what differs. Keeps one output as the reference."""
        table_ = pq.read_table(path)
        if table_.num_rows != self.rows:
            return f"{table_.num_rows} rows, expected {self.rows}"
        ids = table_.column("id").to_numpy()
        if not np.array_equal(ids, np.arange(self.rows)):
            first = int(np.argmax(ids != np.arange(self.rows)))
            return f"row {first} has id {ids[first]}"
        if self.reference is None:
            self.reference = path
            return "ok"
        scores = pq.read_table(self.reference, columns=["score"]).column("score").to_numpy()
        if not np.array_equal(scores, table_.column("score").to_numpy()):
            return f"scores differ from {self.reference.name}"
        path.unlink()  # equal to the reference: no need to keep it on disk
        return "ok"


def main(args: argparse.Namespace) -> dict[str, Any]:
    size_bytes = (200 if args.quick else 2048) * 1024**2
    rounds = args.rounds or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="fleetrun-bench-") as tmp:
        os.environ["FLEETRUN_CACHE_DIR"] = str(Path(tmp) / "cache")
        bench = Tabular(Path(tmp), size_bytes)
        print(
            f"tabular: a {bench.size / 1024**2:,.0f} MB CSV of {bench.rows:,} rows "
            f"(generated in {bench.generate_s:.1f} s), {RUNNERS} runners, mini_batch_size "
            f"{MINI_BATCH_SIZE}, pandas chunksize {CHUNK_ROWS:,} rows"
        )
        sides = [Side("pandas", bench.pandas_once), Side("embedded", bench.fleetrun_once)]
        interleave(sides, rounds, getattr(args, "quiet_wait", 0.0) or 0.0)
        return report(sides, bench, rounds)


MEDIAN_KEYS = (
    "rows_per_s",
    "seconds",
    "to_first_s",
    "teardown_s",
    "cpu.ours",
    "cpu.total",
    "cpu.others",
)


def report(sides: list[Side], bench: Tabular, rounds: int) -> dict[str, Any]:
    pandas_side, fleet = sides
    ratio = fleet.median("rows_per_s") / pandas_side.median("rows_per_s")
    per_round = [
        a["rows_per_s"] / b["rows_per_s"] for a, b in zip(fleet.runs, pandas_side.runs, strict=True)
    ]
    rows = []
    for side in sides:
        is_fleet = side is fleet
        rows.append(
            [
                side.name,
                side.median("seconds"),
                side.median("rows_per_s"),
                ratio if is_fleet else 1.0,
                ", ".join(f"{r:.2f}" for r in per_round) if is_fleet else "-",
                side.median("to_first_s") if is_fleet else float("nan"),
                side.median("cpu.ours"),
                side.median("cpu.others"),
                ("met" if ratio >= TARGET_RATIO else "NOT met") if is_fleet else "-",
                ", ".join(sorted({str(r["output"]) for r in side.runs})),
            ]
        )
    print()
    print(
        table(
            f"tabular: {bench.size / 1024**2:,.0f} MB CSV, {bench.rows:,} rows, "
            f"{RUNNERS} runners; medians of {rounds} interleaved rounds; "
            "ratio = fleet rows/s / pandas rows/s",
            [
                "side",
                "wall s",
                "rows/s",
                "ratio",
                "per round",
                "to 1st batch s",
                "our cores",
                "others' cores",
                ">= 1.5",
                "output",
            ],
            rows,
        )
    )
    print()
    return {
        "benchmark": NAME,
        "params": {
            "csv_bytes": bench.size,
            "rows": bench.rows,
            "runners": RUNNERS,
            "mini_batch_size": MINI_BATCH_SIZE,
            "chunksize_rows": CHUNK_ROWS,
            "output_format": "parquet",
            "rounds": rounds,
            "generate_s": round(bench.generate_s, 2),
        },
        "medians": {
            side.name: {
                key: value for key in MEDIAN_KEYS if not math.isnan(value := side.median(key))
            }
            for side in sides
        },
        "ratios": {"embedded_over_pandas": ratio, "embedded_over_pandas_per_round": per_round},
        "targets": {"embedded_over_pandas": TARGET_RATIO},
        "runs": {side.name: side.runs for side in sides},
    }
