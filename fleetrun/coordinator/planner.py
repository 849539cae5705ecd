"""Planning: inputs listed in lexicographic URI order, cut into consecutive mini-batches.

The plan streams: batches come out while the listing goes on, so the first one is published
before a listing of millions of files finishes. File inputs are cut by count; tabular inputs
into slices (:mod:`fleetrun.coordinator.tabular_plan`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from fleetrun.common.errors import SpecError
from fleetrun.common.listing import InputFile, list_input_files
from fleetrun.common.slices import TableSlice
from fleetrun.common.spec import JobSpec
from fleetrun.coordinator.tabular_plan import Warnings, plan_slices


@dataclass(frozen=True)
class PlannedBatch:
    items: list[str]  # the files it reads
    slice: TableSlice | None = None  # tabular: which part of them


def list_job_input_files(spec: JobSpec) -> Iterator[InputFile]:
    """Every input file of the job, skipping the job's own output folder."""
    output_prefix = spec.output.rstrip("/") + "/"
    found = False
    try:
        for entry in list_input_files(spec.inputs, spec.storage_options):
            if entry.uri.startswith(output_prefix):
                continue
            found = True
            yield entry
    except FileNotFoundError as exc:
        raise SpecError(str(exc)) from None
    if not found:
        raise SpecError(
            f"inputs {spec.inputs} matched no files: check the paths, or the glob pattern"
        )


def list_job_inputs(spec: JobSpec) -> Iterator[str]:
    for entry in list_job_input_files(spec):
        yield entry.uri


def plan(spec: JobSpec, warnings: Warnings | None = None) -> Iterator[PlannedBatch]:
    """The job's mini-batches, in order."""
    if spec.tabular:
        for piece in plan_slices(spec, list_job_input_files(spec), warnings):
            yield PlannedBatch(piece.input_files(), piece)
        return
    for items in plan_batches(spec):
        yield PlannedBatch(items)


def plan_batches(spec: JobSpec) -> Iterator[list[str]]:
    """File inputs: consecutive runs of ``mini_batch_size`` inputs, in listing order."""
    batch: list[str] = []
    for uri in list_job_inputs(spec):
        batch.append(uri)
        if len(batch) == spec.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class PlanReport:
    """What ``fleetrun plan`` prints."""

    tabular: bool = False
    inputs: int = 0
    batches: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    per_input: dict[str, int] = field(default_factory=dict)
    per_file: dict[str, int] = field(default_factory=dict)
    warnings: Warnings = field(default_factory=Warnings)

    def render(self) -> str:
        if self.tabular:
            lines = [f"{len(self.per_file)} input files in {self.batches} mini-batches"]
            lines += [f"  {uri}: {count} mini-batches" for uri, count in self.per_file.items()]
        else:
            sizes = ", ".join(
                f"{count} of {size} file{'s' if size != 1 else ''}"
                for size, count in sorted(self.batch_sizes.items(), reverse=True)
            )
            lines = [f"{self.inputs} input files in {self.batches} mini-batches ({sizes})"]
            lines += [f"  {uri}: {count} files" for uri, count in self.per_input.items()]
        lines += [f"warning: {text}" for text in self.warnings]
        return "\n".join(lines)


def describe_plan(spec: JobSpec) -> PlanReport:
    report = PlanReport(tabular=spec.tabular)
    for batch in plan(spec, report.warnings):
        report.batches += 1
        report.inputs += len(batch.items)
        report.batch_sizes[len(batch.items)] += 1
        if batch.slice is not None:
            key = batch.slice.uri or batch.slice.describe()
            report.per_file[key] = report.per_file.get(key, 0) + 1
    if not spec.tabular:
        for uri in spec.inputs:
            single = spec.model_copy(update={"inputs": [uri]})
            report.per_input[uri] = sum(1 for _ in list_job_inputs(single))
    return report
