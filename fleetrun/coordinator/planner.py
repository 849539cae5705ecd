"""Planning: inputs listed in lexicographic URI order, cut into consecutive mini-batches.

The plan streams: batches come out while the listing goes on, so the first one is published
before a listing of millions of files finishes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from fleetrun.common.errors import SpecError
from fleetrun.common.listing import list_inputs
from fleetrun.common.spec import JobSpec


def list_job_inputs(spec: JobSpec) -> Iterator[str]:
    """Every input file of the job, skipping the job's own output folder."""
    output_prefix = spec.output.rstrip("/") + "/"
    found = False
    try:
        for uri in list_inputs(spec.inputs, spec.storage_options):
            if uri.startswith(output_prefix):
                continue
            found = True
            yield uri
    except FileNotFoundError as exc:
        raise SpecError(str(exc)) from None
    if not found:
        raise SpecError(
            f"inputs {spec.inputs} matched no files: check the paths, or the glob pattern"
        )


def plan_batches(spec: JobSpec) -> Iterator[list[str]]:
    """Consecutive runs of ``mini_batch_size`` inputs, in listing order."""
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

    inputs: int = 0
    batches: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    per_input: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        sizes = ", ".join(
            f"{count} of {size} file{'s' if size != 1 else ''}"
            for size, count in sorted(self.batch_sizes.items(), reverse=True)
        )
        lines = [f"{self.inputs} input files in {self.batches} mini-batches ({sizes})"]
        lines += [f"  {uri}: {count} files" for uri, count in self.per_input.items()]
        return "\n".join(lines)


def describe_plan(spec: JobSpec) -> PlanReport:
    report = PlanReport()
    for batch in plan_batches(spec):
        report.batches += 1
        report.inputs += len(batch)
        report.batch_sizes[len(batch)] += 1
    for uri in spec.inputs:
        single = spec.model_copy(update={"inputs": [uri]})
        report.per_input[uri] = sum(1 for _ in list_job_inputs(single))
    return report
