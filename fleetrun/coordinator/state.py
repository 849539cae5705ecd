"""A job's state folder: preparing a job (code snapshot, spec, id) and finding what it holds.

The state lives in ``<output>/_fleetrun/``: ``spec.json`` (the resolved spec, with the job id),
``code.zip``, and what runs of the job finished (``parts/``, ``ledger/``, ``errors/``,
``tries/``, ``stopped/``). Preparing a job either finds a finished twin to reuse, or resumes
from what earlier runs finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetrun.common import snapshot, storage
from fleetrun.common.errors import SpecError
from fleetrun.common.spec import JobSpec
from fleetrun.coordinator.ledger import Ledger
from fleetrun.coordinator.outputs import Summary, read_summary


@dataclass
class Prepared:
    """A job ready to run: its id, its state written, and what earlier runs finished."""

    spec: JobSpec
    job_id: str
    ledger: Ledger
    reused: Summary | None = None


def prepare(spec: JobSpec) -> Prepared:
    """Snapshot the code, fix the job id, write the job's state; or find a finished twin."""
    options = spec.storage_options
    source = Path(storage.local_path(spec.source_directory))
    # Data folders inside the source folder (the output, local input folders) are not code.
    exclude = [
        Path(storage.local_path(uri))
        for uri in [spec.output, *spec.inputs]
        if storage.is_local(uri) and Path(storage.local_path(uri)).is_dir()
    ]
    for name, uri in spec.side_inputs.items():
        if not storage.exists(uri, options):
            raise SpecError(f"side input {name}: {uri} does not exist; fix side_inputs.{name}")
    code, digest = snapshot.build(source, exclude=exclude)
    job_id = spec.resolved_job_id(digest)
    previous = read_summary(spec)
    if previous is not None and previous.job_id == job_id:
        if spec.allow_reuse and previous.status == "succeeded":
            return Prepared(spec, job_id, Ledger(spec.state_uri, options), reused=previous)
        if not spec.allow_reuse:
            clear_state(spec)
    elif state_job_id(spec) not in (None, job_id):
        # The output folder holds another job's state (other code, inputs or settings): its
        # finished batches are not this job's.
        clear_state(spec)
    state = spec.state_uri
    effective = spec.model_dump(mode="json") | {"job_id": job_id}
    storage.write_bytes(
        storage.join(state, "spec.json"),
        JobSpec.model_validate(effective).model_dump_json(indent=2).encode(),
        options,
    )
    storage.write_bytes(storage.join(state, "code.zip"), code, options)
    return Prepared(spec, job_id, Ledger.load(state, options))


def prepare_from_state(state_uri: str, options: dict[str, dict[str, Any]]) -> Prepared:
    """A job that was prepared (by ``fleetrun submit``) and perhaps partly run before."""
    saved = storage.read_bytes(storage.join(state_uri, "spec.json"), options)
    spec = JobSpec.model_validate_json(saved)
    assert spec.job_id is not None
    return Prepared(spec, spec.job_id, Ledger.load(spec.state_uri, spec.storage_options))


def state_job_id(spec: JobSpec) -> str | None:
    """The id of the job whose state is in the spec's output folder, if any."""
    try:
        saved = storage.read_bytes(storage.join(spec.state_uri, "spec.json"), spec.storage_options)
        return JobSpec.model_validate_json(saved).job_id
    except (FileNotFoundError, ValueError):
        return None


def clear_state(spec: JobSpec) -> None:
    """Forget every finished batch in the output folder's job state."""
    for folder in ("parts", "ledger", "errors", "stopped", "tries"):
        storage.remove_tree(storage.join(spec.state_uri, folder), spec.storage_options)
