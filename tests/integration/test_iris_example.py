"""The iris example, run as its README says: CSV slices in, one Parquet file out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


@pytest.mark.timeout(180)
def test_the_iris_example_scores_every_row_once_in_input_order(
    examples_dir: Path, tmp_path: Path
) -> None:
    job_dir = tmp_path / "iris"
    shutil.copytree(
        examples_dir / "iris", job_dir, ignore=shutil.ignore_patterns("data", "out", "__pycache__")
    )
    env = {**os.environ, "FLEETRUN_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([sys.executable, str(job_dir / "make_data.py")], check=True, env=env)
    inputs = sorted((job_dir / "data").glob("*.csv"))
    assert len(inputs) == 3

    plan = subprocess.run(
        [sys.executable, "-m", "fleetrun", "plan", str(job_dir / "job.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[0] == "3 input files in 6 mini-batches"

    run = subprocess.run(
        [sys.executable, "-m", "fleetrun", "run", str(job_dir / "job.yaml"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=150,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((job_dir / "out" / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["items"] == {"total": 30_000, "succeeded": 30_000, "failed": 0}
    assert summary["mini_batches"]["total"] == 6

    predictions = pd.read_parquet(job_dir / "out" / "predictions.parquet")
    truth = pd.concat([pd.read_csv(path) for path in inputs], ignore_index=True)
    assert list(predictions.columns) == ["id", "predicted_species", "probability"]
    assert predictions["id"].tolist() == truth["id"].tolist()

    check = subprocess.run(
        [sys.executable, str(job_dir / "check.py"), str(job_dir / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "accuracy:" in check.stdout
