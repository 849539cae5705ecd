"""What a worker knows about each job it serves, loaded once from the job's state folder."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleetrun.common import snapshot, storage
from fleetrun.common.errors import FleetrunError
from fleetrun.common.messages import BatchMessage
from fleetrun.common.spec import JobSpec


class JobStateGone(FleetrunError):
    """The job's state folder (its spec or code) no longer exists: its batches are moot."""


class JobStateInvalid(FleetrunError):
    """The job's spec cannot be read here: every try of its batches would fail the same way."""


class JobLoadError(FleetrunError):
    """The job is known, but something it needs on this machine could not be had."""

    def __init__(self, job: LoadedJob, message: str) -> None:
        super().__init__(message)
        self.job = job


def stop_marker_uri(state_uri: str, run_id: str) -> str:
    return storage.join(state_uri, "stopped", run_id)


@dataclass
class LoadedJob:
    job_id: str
    spec: JobSpec
    state_uri: str
    code_dir: Path
    arguments: list[str]
    work_dir: Path
    stopped_runs: set[str] = field(default_factory=set)
    script_error: str = ""  # set once the entry script failed to load on this worker
    running_runs: set[str] = field(default_factory=set)


class JobCache:
    """Loads a job's spec, code and side inputs on its first batch; shared by the runner slots."""

    def __init__(self, cache_dir: Path, keep_days: float = 7.0) -> None:
        self._cache_dir = cache_dir
        self._jobs: dict[str, LoadedJob] = {}
        self._lock = threading.Lock()
        self._job_locks: dict[str, threading.Lock] = {}
        self._prune(keep_days)

    def _prune(self, keep_days: float) -> None:
        """Forget the cached code, side inputs and logs of jobs unused for ``keep_days``."""
        cutoff = time.time() - keep_days * 86400
        for folder in (self._cache_dir / "jobs").glob("*"):
            with contextlib.suppress(OSError):
                # Staging and logging touch these folders while a job runs.
                recent = max(
                    p.stat().st_mtime
                    for p in (folder, folder / "inputs", folder / "logs")
                    if p.exists()
                )
                if folder.is_dir() and recent < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)

    def get(self, message: BatchMessage) -> LoadedJob:
        with self._lock:
            job = self._jobs.get(message.job_id)
            lock = self._job_locks.setdefault(message.job_id, threading.Lock())
        if job is not None:
            return job
        with lock:
            job = self._jobs.get(message.job_id)
            if job is None:
                job = self._load(message)
                with self._lock:
                    self._jobs[message.job_id] = job
            return job

    def _load(self, message: BatchMessage) -> LoadedJob:
        options = message.storage_options
        state = message.state_uri
        try:
            saved = storage.read_bytes(storage.join(state, "spec.json"), options)
        except FileNotFoundError as exc:
            raise JobStateGone(f"{state}/spec.json is gone: {exc}") from exc
        try:
            spec = JobSpec.model_validate_json(saved)
        except ValueError as exc:
            raise JobStateInvalid(
                f"{state}/spec.json cannot be read by this worker (written by another fleetrun "
                f"version, or damaged): {str(exc).splitlines()[0]}; upgrade the worker"
            ) from exc
        work_dir = self._cache_dir / "jobs" / message.job_id
        work_dir.mkdir(parents=True, exist_ok=True)
        # Several workers on one machine share the cache: one of them fetches, the others wait.
        with open(work_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            code_dir = work_dir / "code"
            if not (code_dir / ".complete").exists():
                try:
                    code = storage.read_bytes(storage.join(state, "code.zip"), options)
                except FileNotFoundError as exc:
                    raise JobStateGone(f"{state}/code.zip is gone: {exc}") from exc
                snapshot.extract(code, code_dir)
            arguments = list(spec.arguments)
            job = LoadedJob(message.job_id, spec, state, code_dir, arguments, work_dir)
            for name, uri in spec.side_inputs.items():
                try:
                    local = self._stage_side_input(uri, work_dir / "side" / name, options)
                except Exception as exc:
                    # The job is known; only its side input failed: that fails the try.
                    raise JobLoadError(
                        job, f"side input {name} ({uri}) could not be fetched: {exc}"
                    ) from exc
                arguments += [f"--{name}", local]
        return job

    @staticmethod
    def _stage_side_input(uri: str, destination: Path, options: storage.StorageOptions) -> str:
        """Local side inputs are used where they are; remote ones are fetched once per job.

        A folder arrives as a folder, a file as a file; ``.complete`` records which.
        """
        if storage.is_local(uri):
            return storage.local_path(uri)
        marker = destination / ".complete"
        if not marker.exists():
            fs, path = storage.filesystem(uri, options)
            destination.mkdir(parents=True, exist_ok=True)
            if storage.call(uri, lambda: fs.isdir(path)):
                storage.call(
                    uri, lambda: fs.get(path.rstrip("/") + "/", f"{destination}/", recursive=True)
                )
                marker.write_text("")
            else:
                name = Path(path).name
                storage.call(uri, lambda: fs.get(path, str(destination / name)))
                marker.write_text(name)
        return str(destination / marker.read_text())

    def is_stopped(self, job: LoadedJob, run_id: str) -> bool:
        """Whether this run of the job was aborted or cancelled (checked once per run)."""
        if run_id in job.stopped_runs:
            return True
        if run_id not in job.running_runs:
            marker = stop_marker_uri(job.state_uri, run_id)
            if storage.exists(marker, job.spec.storage_options):
                job.stopped_runs.add(run_id)
                return True
            job.running_runs.add(run_id)
        return False

    def mark_stopped(self, job_id: str, run_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            job.stopped_runs.add(run_id)
