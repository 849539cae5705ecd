"""The iris example, run as its README says: CSV slices in, one Parquet file out."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import copy_example, run_python


@pytest.mark.timeout(180)
def test_the_iris_example_scores_every_row_once_in_input_order(
    examples_dir: Path, tmp_path: Path
) -> None:
    job_dir, env = copy_example(examples_dir, "iris", tmp_path)
    made = run_python(str(job_dir / "make_data.py"), env=env)
    assert made.returncode == 0, made.stderr
    inputs = sorted((job_dir / "data").glob("*.csv"))
    assert len(inputs) == 3

    plan = run_python("-m", "fleetrun", "plan", str(job_dir / "job.yaml"), env=env, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[0] == "3 input files in 6 mini-batches"

    run = run_python("-m", "fleetrun", "run", str(job_dir / "job.yaml"), "--quiet", env=env)
    assert run.returncode == 0, run.stderr
    summary = json.loads((job_dir / "out" / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["items"] == {"total": 30_000, "succeeded": 30_000, "failed": 0}
    assert summary["mini_batches"]["total"] == 6

    predictions = pd.read_parquet(job_dir / "out" / "predictions.parquet")
    truth = pd.concat([pd.read_csv(path) for path in inputs], ignore_index=True)
    assert list(predictions.columns) == ["id", "predicted_species", "probability"]
    assert predictions["id"].tolist() == truth["id"].tolist()

    check = run_python(str(job_dir / "check.py"), str(job_dir / "out"), env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "accuracy:" in check.stdout
