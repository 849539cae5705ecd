"""cpu_bound: fleetrun's overhead when ``run()`` is CPU-bound (~20 ms per item).

1,000 empty input files, ``mini_batch_size`` 10, two runners. The baseline is a
``ProcessPoolExecutor(2)`` mapping the very same function over the very same batches and
writing the same lines, in order, into one file. Reported: both wall times and their ratio
(fleetrun / pool; target <= 1.05), for fleetrun on the embedded broker and, when RabbitMQ
answers, on RabbitMQ with a 2-process ``fleetrun worker``.
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import fleetrun
from bench import cpu_work
from bench.common import (
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

NAME = "cpu_bound"
TARGET_RATIO = 1.05
SECONDS_PER_ITEM = 0.020
BATCH_SIZE = 10
RUNNERS = 2


class CpuBound:
    def __init__(
        self, root: Path, inputs: int, iterations: int, broker: str | None, prefetch: int = 0
    ) -> None:
        self.root = root
        self.broker = broker
        self.prefetch = prefetch
        self.iterations = iterations
        self.paths = make_inputs(root / "data", inputs)
        self.batches = chunks([str(p) for p in self.paths], BATCH_SIZE)
        value = cpu_work.busy(iterations)
        self.expected = [f"{p.name} {value}" for p in self.paths]
        self.job = write_job_folder(root / "job", cpu_work.entry_script(iterations))
        self.namespace = f"bench-{uuid.uuid4().hex[:8]}"
        self.job_ids: set[str] = set()
        self.worker: FleetrunWorker | None = None

    def spec(self, output: Path, data: Path | None = None) -> JobSpec:
        return JobSpec(
            name="bench-cpu-bound",
            inputs=[str(data or self.root / "data")],
            output=str(output),
            entry_script="score.py",
            source_directory=str(self.job),
            mini_batch_size=BATCH_SIZE,
            process_count_per_node=RUNNERS,
            allow_reuse=False,
        )

    def pool_once(self, round_: int) -> dict[str, Any]:
        output = self.root / "out" / f"pool-{round_}.txt"
        work = functools.partial(cpu_work.score_batch, iterations=self.iterations)
        started = time.perf_counter()
        with ProcessPoolExecutor(RUNNERS) as pool, open(output, "w") as handle:
            for lines in pool.map(work, self.batches):
                handle.write("".join(f"{line}\n" for line in lines))
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "output": check_lines(output, self.expected)}

    def fleetrun_once(self, side: str, round_: int) -> dict[str, Any]:
        output = self.root / "out" / f"{side}-{round_}"
        spec = self.spec(output)
        rabbit = side == "rabbitmq"
        called, started = time.time(), time.perf_counter()
        summary = fleetrun.run(
            spec,
            broker=self.broker if rabbit else None,
            namespace=self.namespace if rabbit else None,
        )
        seconds = time.perf_counter() - started
        self.job_ids.add(summary.job_id)
        return {
            "status": summary.status,
            "seconds": seconds,
            **timeline(output, summary.mini_batches.total, called, called + seconds),
            "output": check_lines(output / spec.append_row_file_name, self.expected),
        }

    def start_worker(self) -> None:
        assert self.broker is not None
        self.worker, warm_job = FleetrunWorker.warmed(
            self.broker, self.namespace, RUNNERS, self.root, self.prefetch, self.spec, 4
        )
        self.job_ids.add(warm_job)

    def stop_worker(self) -> None:
        if self.worker is None or self.broker is None:
            return
        self.worker.stop_and_report()
        delete_namespace(self.broker, self.namespace, self.job_ids)


def main(args: argparse.Namespace) -> dict[str, Any]:
    inputs = 100 if args.quick else 1_000
    rounds = args.rounds or (1 if args.quick else 3)
    broker = None if args.no_rabbitmq else args.broker
    if broker is not None and not broker_answers(broker):
        print(f"RabbitMQ does not answer at {broker}: measuring the embedded broker only.")
        broker = None
    iterations = cpu_work.calibrate(SECONDS_PER_ITEM)
    per_item = cpu_work.item_seconds(iterations)
    print(
        f"cpu_bound: {inputs:,} inputs, mini_batch_size {BATCH_SIZE}, {RUNNERS} runners; "
        f"busy({iterations:,}) takes {per_item * 1000:.1f} ms per item here (best of 5)"
    )
    with (
        tempfile.TemporaryDirectory(prefix="fleetrun-bench-") as tmp,
        environment("FLEETRUN_CACHE_DIR", str(Path(tmp) / "cache")),
    ):
        bench = CpuBound(Path(tmp), inputs, iterations, broker, args.worker_prefetch)
        sides = [
            Side("pool", bench.pool_once),
            Side("embedded", lambda r: bench.fleetrun_once("embedded", r)),
        ]
        try:
            if broker is not None:
                bench.start_worker()
                sides.append(Side("rabbitmq", lambda r: bench.fleetrun_once("rabbitmq", r)))
            interleave(sides, rounds, args.quiet_wait)
        finally:
            bench.stop_worker()
    return report(sides, inputs, rounds, iterations, per_item, args.worker_prefetch)


def report(
    sides: list[Side],
    inputs: int,
    rounds: int,
    iterations: int,
    per_item: float,
    prefetch: int,
) -> dict[str, Any]:
    pool = sides[0]
    ratios: dict[str, Any] = {}
    rows = []
    for side in sides:
        seconds = side.median("seconds")
        ratio = seconds / pool.median("seconds")
        per_round = [a["seconds"] / b["seconds"] for a, b in zip(side.runs, pool.runs, strict=True)]
        if side is not pool:
            ratios[f"{side.name}_over_pool"] = ratio
            ratios[f"{side.name}_over_pool_per_round"] = per_round
        verdict = "-" if side is pool else ("met" if ratio <= TARGET_RATIO else "NOT met")
        rows.append(
            [
                side.name,
                seconds,
                ratio,
                ", ".join(f"{r:.3f}" for r in per_round) if side is not pool else "-",
                side.median("to_first_s"),
                side.median("teardown_s"),
                side.median("cpu.others"),
                f"{side.quiet_runs}/{len(side.runs)}",
                verdict,
                ", ".join(sorted({str(r["output"]) for r in side.runs})),
            ]
        )
    ideal = inputs * per_item / RUNNERS
    print()
    print(
        table(
            f"cpu_bound: {inputs:,} items of {per_item * 1000:.1f} ms, mini_batch_size "
            f"{BATCH_SIZE}, {RUNNERS} runners (ideal {ideal:.1f} s); medians of {rounds} "
            "interleaved rounds; ratio = wall / pool wall",
            [
                "side",
                "wall s",
                "ratio",
                "per round",
                "to 1st batch s",
                "teardown s",
                "others' cores",
                "quiet runs",
                "<= 1.05",
                "output",
            ],
            rows,
        )
    )
    print()
    return {
        "benchmark": NAME,
        "params": {
            "inputs": inputs,
            "mini_batch_size": BATCH_SIZE,
            "runners": RUNNERS,
            "rounds": rounds,
            "iterations": iterations,
            "worker_prefetch": prefetch or "default",
            "ms_per_item": round(per_item * 1000, 2),
        },
        "medians": {
            side.name: {
                key: value
                for key in ("seconds", "to_first_s", "teardown_s", "cpu.total", "cpu.others")
                if not math.isnan(value := side.median(key))
            }
            for side in sides
        },
        "quiet_runs": {side.name: side.quiet_runs for side in sides},
        "ratios": ratios,
        "targets": {"fleetrun_over_pool": TARGET_RATIO},
        "runs": {side.name: side.runs for side in sides},
    }
