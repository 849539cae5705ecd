"""Fixtures for the unit tests: a job folder with an entry script, and data beside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

SCRIPT = """\
def init():
    pass


def run(mini_batch):
    return [len(path) for path in mini_batch]
"""

JobWriter = Callable[..., Path]


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """A folder holding only the entry script (the job's source_directory)."""
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "score.py").write_text(SCRIPT)
    return folder


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """23 input files, outside the job folder so they are not part of the code snapshot."""
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(23):
        (folder / f"img_{i:03d}.txt").write_text(f"item {i}\n")
    return folder


@pytest.fixture
def write_job(job_dir: Path) -> JobWriter:
    """Write ``job.yaml`` in the job folder from keyword fields over a small valid spec."""

    def write(name: str = "job.yaml", **fields: Any) -> Path:
        raw: dict[str, Any] = {
            "name": "unit",
            "inputs": ["../data"],
            "output": "../out",
            "entry_script": "score.py",
            "mini_batch_size": 10,
        }
        raw.update(fields)
        for key in [k for k, v in raw.items() if v is None]:
            del raw[key]  # None removes a key from the spec
        path = job_dir / name
        path.write_text(yaml.safe_dump(raw))
        return path

    return write
