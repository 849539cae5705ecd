"""Write scikit-learn's bundled iris, repeated with a little noise, as CSV files.

`load_iris()` ships with scikit-learn, so nothing is downloaded. Its 150 rows are repeated
(200 times by default: 30,000 rows) with a little Gaussian noise on the four measurements, so
the table is large enough to be split into several mini-batches, and written in row order as a
few CSV files with an `id` column and the true `species` (what `check.py` scores against).

    python examples/iris/make_data.py [--out DIR] [--rows N] [--files K] [--seed S]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris

HERE = Path(__file__).resolve().parent
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def noisy_iris(rows: int, seed: int) -> pd.DataFrame:
    """``rows`` rows: the iris rows in turn, each measurement plus N(0, 0.05) cm, 2 decimals."""
    iris = load_iris()
    rng = np.random.default_rng(seed)
    picks = np.arange(rows) % len(iris.data)
    measurements = iris.data[picks] + rng.normal(0.0, 0.05, size=(rows, len(FEATURES)))
    frame = pd.DataFrame(np.round(np.clip(measurements, 0.1, None), 2), columns=FEATURES)
    frame.insert(0, "id", np.arange(rows))
    frame["species"] = iris.target_names[iris.target[picks]]
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "data", help="folder of the CSV files")
    parser.add_argument("--rows", type=int, default=30_000, help="rows in all (default 30,000)")
    parser.add_argument("--files", type=int, default=3, help="number of CSV files (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    args = parser.parse_args()
    if args.rows < 1 or not 1 <= args.files <= args.rows:
        parser.error("--rows must be at least 1 and --files between 1 and --rows")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("iris_*.csv"):  # fleetrun would score them too
        stale.unlink()
    frame = noisy_iris(args.rows, args.seed)
    for number, part in enumerate(np.array_split(np.arange(args.rows), args.files)):
        path = out / f"iris_{number:02d}.csv"
        frame.iloc[part].to_csv(path, index=False)
    print(f"wrote {args.rows:,} rows as {args.files} CSV files to {out}")


if __name__ == "__main__":
    main()
