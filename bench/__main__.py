"""Run the benchmarks: ``python -m bench [--only NAME] [--quick]``.

Each benchmark prints a table and appends one JSON line to ``bench/results.jsonl``. Benchmarks
measure; they never fail on a figure (the exit code is non-zero only if one could not run).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from bench import cpu_bound, s3_staging, tabular, throughput
from bench.common import RESULTS_FILE, append_result, default_broker
from fleetrun.common.logging import configure

BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    throughput.NAME: throughput.main,
    cpu_bound.NAME: cpu_bound.main,
    tabular.NAME: tabular.main,
    s3_staging.NAME: s3_staging.main,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run fleetrun's benchmarks; each prints a table and appends a JSON line "
        f"to {RESULTS_FILE}.",
    )
    parser.add_argument("--only", choices=sorted(BENCHMARKS), help="run this benchmark only")
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run (fewer inputs, one round)"
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="interleaved rounds (default: 3, or 1 with --quick)"
    )
    parser.add_argument(
        "--broker",
        default=default_broker(),
        help="RabbitMQ URL (default: $FLEETRUN_BROKER, $FLEETRUN_TEST_BROKER or the local one)",
    )
    parser.add_argument(
        "--no-rabbitmq", action="store_true", help="measure the embedded broker only"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="before each timed run, wait up to this long for other processes on the box to "
        "quieten down (default: 60, or 0 with --quick; 0 disables)",
    )
    parser.add_argument(
        "--worker-prefetch",
        type=int,
        default=0,
        metavar="N",
        help="pass --prefetch N to the fleetrun worker (default: the worker's own default)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 60.0
    configure("WARNING")
    names = [args.only] if args.only else list(BENCHMARKS)
    failed = []
    for name in names:
        try:
            record = BENCHMARKS[name](args)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        append_result({**record, "quick": args.quick})
    print(f"Results appended to {RESULTS_FILE}.")
    if failed:
        print(f"Could not run: {', '.join(failed)}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
