"""The README's worked example, run as written: examples/digits on the embedded broker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(180)
def test_the_digits_example_scores_every_image_accurately(
    examples_dir: Path, tmp_path: Path
) -> None:
    job_dir = tmp_path / "digits"
    shutil.copytree(
        examples_dir / "digits",
        job_dir,
        ignore=shutil.ignore_patterns("data", "out", "labels.csv", "__pycache__"),
    )
    env = {**os.environ, "FLEETRUN_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run(
        [
            sys.executable,
            str(job_dir / "make_data.py"),
            "--count",
            "120",
            "--out",
            str(job_dir / "data"),
        ],
        check=True,
        env=env,
    )
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
    assert summary["items"] == {"total": 120, "succeeded": 120, "failed": 0}
    assert summary["mini_batches"]["total"] == 12
    lines = (job_dir / "out" / "predictions.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == sorted(
        p.name for p in (job_dir / "data").iterdir()
    )

    check = subprocess.run(
        [sys.executable, str(job_dir / "check_accuracy.py"), str(job_dir / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "accuracy:" in check.stdout
