"""The code snapshot: the job's ``source_directory`` as one zip in the job's state folder.

Workers fetch it, so a worker machine needs only the Python environment. The zip is built
deterministically (sorted names, fixed timestamps), so its digest identifies the code.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

from fleetrun.common.errors import SpecError

_SKIP_DIRS = {
    "__pycache__",
    ".git",
    ".venv",
    "venv",
    ".mypy_cache",
    ".pytest_cache",
    "node_modules",
}
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024


def build(source_directory: Path, exclude: list[Path] | None = None) -> tuple[bytes, str]:
    """Zip ``source_directory`` (without caches, VCS folders and ``exclude``d folders)."""
    excluded = {p.resolve() for p in exclude or []}
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder, dirs, files in os.walk(source_directory):
            here = Path(folder)
            dirs[:] = sorted(
                d for d in dirs if d not in _SKIP_DIRS and (here / d).resolve() not in excluded
            )
            for name in sorted(files):
                path = here / name
                if name.endswith(".pyc") or not path.is_file():
                    continue
                total += path.stat().st_size
                if total > MAX_SNAPSHOT_BYTES:
                    raise SpecError(
                        f"source_directory {source_directory} holds more than 256 MB; keep data "
                        "out of it (pass data as inputs or side_inputs) or point "
                        "source_directory at a folder with just the code"
                    )
                info = zipfile.ZipInfo(
                    path.relative_to(source_directory).as_posix(), (1980, 1, 1, 0, 0, 0)
                )
                info.external_attr = (path.stat().st_mode & 0o777) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def extract(data: bytes, destination: Path) -> None:
    """Unpack a snapshot into ``destination`` (atomically: a finished folder or none)."""
    if (destination / ".complete").exists():
        return
    staging = destination.with_name(destination.name + f".tmp{os.getpid()}")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(staging)
    (staging / ".complete").touch()
    try:
        staging.rename(destination)
    except OSError:  # another runner slot got there first
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
