"""The README's worked example, run as written: examples/digits on the embedded broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import copy_example, run_python


@pytest.mark.timeout(180)
def test_the_digits_example_scores_every_image_accurately(
    examples_dir: Path, tmp_path: Path
) -> None:
    job_dir, env = copy_example(examples_dir, "digits", tmp_path)
    made = run_python(
        str(job_dir / "make_data.py"), "--count", "120", "--out", str(job_dir / "data"), env=env
    )
    assert made.returncode == 0, made.stderr
    run = run_python("-m", "fleetrun", "run", str(job_dir / "job.yaml"), "--quiet", env=env)
    assert run.returncode == 0, run.stderr

    summary = json.loads((job_dir / "out" / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["items"] == {"total": 120, "succeeded": 120, "failed": 0}
    assert summary["mini_batches"]["total"] == 12
    lines = (job_dir / "out" / "predictions.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == sorted(
        p.name for p in (job_dir / "data").iterdir()
    )

    check = run_python(str(job_dir / "check_accuracy.py"), str(job_dir / "out"), env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "accuracy:" in check.stdout
