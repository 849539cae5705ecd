"""throughput: mini-batches per second end to end for a no-op ``run()``.

20,000 empty input files, ``mini_batch_size`` 10 (2,000 mini-batches), two runners, measured
three ways in the same run, interleaved round by round:

- ``embedded``: ``fleetrun.run(spec)`` with ``process_count_per_node=2`` (broker in-process).
- ``rabbitmq``: ``fleetrun.run(spec, broker=URL, namespace=...)`` served by a warm
  ``fleetrun worker --processes 2`` subprocess.
- ``celery``: the baseline, a Celery task per mini-batch on the same broker (prefork -c 2,
  acks_late, prefetch multiplier 1, results gathered in order into one file; see
  :mod:`bench.celery_baseline`).

Targets from the issue: embedded >= 3,000/s, RabbitMQ >= 1,000/s, RabbitMQ >= 2x Celery.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import fleetrun
from bench.common import (
    NOOP_SCRIPT,
    FleetrunWorker,
    Side,
    broker_answers,
    check_lines,
    chunks,
    delete_namespace,
    environment,
    interleave,
    make_inputs,
    table,
    timeline,
    write_job_folder,
)
from fleetrun.common.spec import JobSpec

NAME = "throughput"
TARGETS = {"embedded": 3000.0, "rabbitmq": 1000.0, "rabbitmq_over_celery": 2.0}
BATCH_SIZE = 10
RUNNERS = 2


class Throughput:
    def __init__(self, root: Path, inputs: int, broker: str | None, prefetch: int = 0) -> None:
        self.root = root
        self.broker = broker
        self.prefetch = prefetch
        self.paths = make_inputs(root / "data", inputs)
        self.expected = [p.name for p in self.paths]
        self.batches = chunks([str(p) for p in self.paths], BATCH_SIZE)
        self.job = write_job_folder(root / "job", NOOP_SCRIPT)
        self.namespace = f"bench-{uuid.uuid4().hex[:8]}"
        self.job_ids: set[str] = set()
        self.worker: FleetrunWorker | None = None
        self.celery: Any = None

    def spec(self, output: Path, data: Path | None = None) -> JobSpec:
        return JobSpec(
            name="bench-throughput",
            inputs=[str(data or self.root / "data")],
            output=str(output),
            entry_script="score.py",
            source_directory=str(self.job),
            mini_batch_size=BATCH_SIZE,
            process_count_per_node=RUNNERS,
            allow_reuse=False,
        )

    # -- the sides -----------------------------------------------------------------------------

    def fleetrun_once(self, side: str, round_: int) -> dict[str, Any]:
        output = self.root / "out" / f"{side}-{round_}"
        spec = self.spec(output)
        broker = self.broker if side == "rabbitmq" else None
        namespace = self.namespace if side == "rabbitmq" else None
        called, started = time.time(), time.perf_counter()
        summary = fleetrun.run(spec, broker=broker, namespace=namespace)
        seconds = time.perf_counter() - started
        self.job_ids.add(summary.job_id)
        batches = summary.mini_batches.total
        return {
            "status": summary.status,
            "seconds": seconds,
            "batches_per_s": batches / seconds,
            **timeline(output, batches, called, called + seconds),
            "output": check_lines(output / spec.append_row_file_name, self.expected),
        }

    def celery_once(self, round_: int) -> dict[str, Any]:
        output = self.root / "out" / f"celery-{round_}.txt"
        seconds = self.celery.run_job(self.batches, output)
        return {
            "seconds": seconds,
            "batches_per_s": len(self.batches) / seconds,
            "output": check_lines(output, self.expected),
        }

    # -- set-up and clean-up -------------------------------------------------------------------

    def start_services(self) -> None:
        """A warm fleetrun worker and a warm Celery worker, both before any timing."""
        assert self.broker is not None
        from bench.celery_baseline.driver import CeleryBaseline

        self.worker, warm_job = FleetrunWorker.warmed(
            self.broker, self.namespace, RUNNERS, self.root, self.prefetch, self.spec, 40
        )
        self.job_ids.add(warm_job)
        self.celery = CeleryBaseline(
            self.broker, f"bench-celery-{uuid.uuid4().hex[:8]}", self.root / "logs" / "celery.log"
        )
        self.celery.run_job(self.batches[:200], self.root / "out" / "celery-warm.txt")

    def stop_services(self) -> None:
        if self.worker is not None:
            self.worker.stop_and_report()
        if self.celery is not None:
            self.celery.close()
        if self.broker is not None:
            delete_namespace(self.broker, self.namespace, self.job_ids)


def main(args: argparse.Namespace) -> dict[str, Any]:
    inputs = 2_000 if args.quick else 20_000
    rounds = args.rounds or (1 if args.quick else 3)
    broker = None if args.no_rabbitmq else args.broker
    if broker is not None and not broker_answers(broker):
        print(f"RabbitMQ does not answer at {broker}: measuring the embedded broker only.")
        broker = None
    print(f"throughput: {inputs:,} inputs, mini_batch_size {BATCH_SIZE}, {RUNNERS} runners")
    with (
        tempfile.TemporaryDirectory(prefix="fleetrun-bench-") as tmp,
        environment("FLEETRUN_CACHE_DIR", str(Path(tmp) / "cache")),
    ):
        bench = Throughput(Path(tmp), inputs, broker, args.worker_prefetch)
        sides = [Side("embedded", lambda r: bench.fleetrun_once("embedded", r))]
        try:
            if broker is not None:
                bench.start_services()
                sides += [
                    Side("rabbitmq", lambda r: bench.fleetrun_once("rabbitmq", r)),
                    Side("celery", bench.celery_once),
                ]
            interleave(sides, rounds, args.quiet_wait)
        finally:
            bench.stop_services()
    return report(sides, inputs, rounds, broker, args.worker_prefetch)


MEDIAN_KEYS = (
    "batches_per_s",
    "seconds",
    "to_first_s",
    "batches_per_s_after_first",
    "teardown_s",
    "cpu.total",
    "cpu.broker",
    "cpu.others",
)


def report(
    sides: list[Side], inputs: int, rounds: int, broker: str | None, prefetch: int
) -> dict[str, Any]:
    by_name = {side.name: side for side in sides}
    rows = []
    for side in sides:
        rate = side.median("batches_per_s")
        target = TARGETS.get(side.name)
        rows.append(
            [
                side.name,
                rate,
                side.median("seconds"),
                side.median("to_first_s"),
                side.median("batches_per_s_after_first"),
                side.median("teardown_s"),
                side.median("cpu.others"),
                f"{side.quiet_runs}/{len(side.runs)}",
                f">= {target:,.0f}: {'met' if rate >= target else 'NOT met'}" if target else "-",
                ", ".join(sorted({str(r["output"]) for r in side.runs})),
            ]
        )
    ratios: dict[str, Any] = {}
    if "rabbitmq" in by_name and "celery" in by_name:
        rabbit, celery = by_name["rabbitmq"], by_name["celery"]
        ratios["rabbitmq_over_celery"] = rabbit.median("batches_per_s") / celery.median(
            "batches_per_s"
        )
        ratios["rabbitmq_over_celery_per_round"] = [
            a["batches_per_s"] / b["batches_per_s"]
            for a, b in zip(rabbit.runs, celery.runs, strict=True)
        ]
    print()
    print(
        table(
            f"throughput: {inputs:,} inputs, {inputs // BATCH_SIZE:,} mini-batches of "
            f"{BATCH_SIZE}, {RUNNERS} runners; medians of {rounds} interleaved rounds",
            [
                "side",
                "batches/s",
                "wall s",
                "to 1st batch s",
                "after 1st batches/s",
                "teardown s",
                "others' cores",
                "quiet runs",
                "target",
                "output",
            ],
            rows,
        )
    )
    if ratios:
        ratio = ratios["rabbitmq_over_celery"]
        per_round = ", ".join(f"{r:.2f}" for r in ratios["rabbitmq_over_celery_per_round"])
        verdict = "met" if ratio >= TARGETS["rabbitmq_over_celery"] else "NOT met"
        print(f"ratio rabbitmq/celery: {ratio:.2f} (rounds: {per_round}); target >= 2: {verdict}")
    print()
    return {
        "benchmark": NAME,
        "params": {
            "inputs": inputs,
            "mini_batch_size": BATCH_SIZE,
            "runners": RUNNERS,
            "rounds": rounds,
            "broker": "rabbitmq" if broker else None,
            "worker_prefetch": prefetch or "default",
            "celery_queue": "classic",
            "fleetrun_batches_queue": "quorum",
        },
        "medians": {
            side.name: {
                key: value for key in MEDIAN_KEYS if not math.isnan(value := side.median(key))
            }
            for side in sides
        },
        "quiet_runs": {side.name: side.quiet_runs for side in sides},
        "ratios": ratios,
        "targets": TARGETS,
        "runs": {side.name: side.runs for side in sides},
    }
