"""Check the output of the iris example against pandas reading the inputs in one go.

The Parquet output must hold one row per input row, with the same ids in the same order as the
CSV files read whole, one after the other in name order (fleetrun's order). Prints the summary,
the row count and the accuracy of the predicted species; exits 1 when the job did not succeed,
a row is missing, duplicated or out of order, or the accuracy is below the threshold.

    python examples/iris/check.py [OUT_DIR] [--data DIR] [--min-accuracy 0.9]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=HERE / "out")
    parser.add_argument("--data", type=Path, default=HERE / "data", help="the input CSV files")
    parser.add_argument("--file", default="predictions.parquet", help="the append_row file")
    parser.add_argument("--min-accuracy", type=float, default=0.9)
    args = parser.parse_args()
    out_dir: Path = args.out_dir.resolve()

    summary_path = out_dir / "summary.json"
    if not summary_path.is_file():
        print(f"error: no summary in {out_dir}: has the job run?", file=sys.stderr)
        return 1
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    print(f"summary ({summary_path}):")
    print(json.dumps(summary, indent=2))
    if summary.get("status") != "succeeded":
        print(f"error: the job's status is {summary.get('status')!r}, not 'succeeded'")
        return 1

    output_path = out_dir / args.file
    print(f"output: {output_path}")
    predictions = pd.read_parquet(output_path)
    inputs = sorted(args.data.resolve().glob("*.csv"))
    if not inputs:
        print(f"error: no CSV files in {args.data}")
        return 1
    truth = pd.concat([pd.read_csv(path) for path in inputs], ignore_index=True)

    if list(predictions.columns[:1]) != ["id"]:
        print(f"error: the output's first column is not id: {list(predictions.columns)}")
        return 1
    if len(predictions) != len(truth) or not predictions["id"].equals(truth["id"]):
        print(
            f"error: the output has {len(predictions):,} rows, the inputs {len(truth):,}; "
            "or their ids differ in value or order"
        )
        return 1
    print(f"rows: {len(predictions):,}, the ids of the inputs in their order")
    correct = (predictions["predicted_species"] == truth["species"]).mean()
    print(f"accuracy: {correct:.3f} on {len(predictions):,} rows")
    if correct < args.min_accuracy:
        print(f"error: the accuracy is below {args.min_accuracy}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
