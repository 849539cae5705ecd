"""The ``fleetrun`` command.

Exit codes:
  0  the job succeeded (run), or the worker drained and stopped (worker)
  1  the job was aborted or failed, or the broker or the storage could not be reached
  2  the job spec or the command line is invalid
  130  stopped at once by a second signal
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fleetrun.api import default_cache_dir
from fleetrun.api import plan as plan_job
from fleetrun.api import run as run_job
from fleetrun.common.broker import connect
from fleetrun.common.errors import FleetrunError, SpecError
from fleetrun.common.logging import configure
from fleetrun.common.spec import load_spec, parse_overrides
from fleetrun.coordinator.progress import Progress

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SPEC = 2
EXIT_STOPPED_NOW = 130
NAMESPACE_HELP = (
    "prefix of the queue names, to keep fleets on one broker apart "
    "(default: $FLEETRUN_NAMESPACE or fleetrun)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetrun",
        description="Run an init()/run(mini_batch) entry script over many files, "
        "on one machine or a fleet.",
        epilog=__doc__.split("\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_command(name: str, help_: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_, description=help_)
        command.add_argument("job", help="the job file (YAML or JSON)")
        command.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a spec value, e.g. --set mini_batch_size=5 (repeatable)",
        )
        return command

    run = job_command("run", "Run a job to its end and write its outputs.")
    run.add_argument(
        "--broker",
        help="RabbitMQ URL(s), comma-separated; "
        "default: $FLEETRUN_BROKER, else the embedded broker",
    )
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.add_argument("--namespace", default=None, help=NAMESPACE_HELP)
    job_command("plan", "Print the plan (inputs, mini-batches) without running anything.")

    worker = commands.add_parser(
        "worker",
        help="Serve every job sent to a RabbitMQ broker until stopped.",
        description="Serve every job sent to a RabbitMQ broker until stopped. SIGTERM or Ctrl-C "
        "drains (no new batches; the held ones finish or go back; exit 0); a second signal "
        "stops at once (exit 130).",
    )
    worker.add_argument(
        "--broker", help="RabbitMQ URL(s), comma-separated; default: $FLEETRUN_BROKER"
    )
    worker.add_argument(
        "--processes", type=int, default=0, help="runner processes (default: the number of CPUs)"
    )
    worker.add_argument(
        "--prefetch", type=int, default=0, help="batches held at once (default: 2 per runner)"
    )
    worker.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="local cache for code and staged inputs "
        "(default: $FLEETRUN_CACHE_DIR or ~/.cache/fleetrun)",
    )
    worker.add_argument("--namespace", default=None, help=NAMESPACE_HELP)
    worker.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def _print_summary(
    summary_json: dict[str, object], status: str, job_id: str, output: str | None
) -> None:
    print(json.dumps(summary_json, indent=2))
    verdict = {"succeeded": "succeeded", "aborted": "was aborted", "failed": "failed"}.get(
        status, status
    )
    print(f"Job {job_id} {verdict}." + (f" Output: {output}" if output else ""), file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.job, parse_overrides(args.overrides))
    configure(spec.logging_level if spec.logging_level != "INFO" else "WARNING")
    progress = Progress(enabled=not args.quiet)
    summary = run_job(spec, broker=args.broker, progress=progress, namespace=args.namespace)
    _print_summary(summary.model_dump(), summary.status, summary.job_id, summary.output)
    if summary.status != "succeeded":
        print(f"Reason: {summary.reason}. Details: {spec.output}/errors.jsonl", file=sys.stderr)
    return summary.exit_code


def cmd_plan(args: argparse.Namespace) -> int:
    spec = load_spec(args.job, parse_overrides(args.overrides))
    print(plan_job(spec).render())
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from fleetrun.worker.supervisor import Supervisor, WorkerSettings

    configure(args.log_level)
    broker = args.broker or os.environ.get("FLEETRUN_BROKER")
    if not broker:
        raise SpecError(
            "fleetrun worker needs --broker amqp://user:pass@host:5672/vhost (or FLEETRUN_BROKER)"
        )
    settings = WorkerSettings(
        processes=args.processes or os.cpu_count() or 1,
        prefetch=args.prefetch,
        cache_dir=args.cache_dir or default_cache_dir(),
        name=f"{socket.gethostname()}:{os.getpid()}",
        namespace=args.namespace or os.environ.get("FLEETRUN_NAMESPACE") or "fleetrun",
    )
    conn = connect(broker, name=f"fleetrun-worker-{settings.name}")
    supervisor = Supervisor(conn, settings)
    signals = {"count": 0}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            supervisor.stop()
        else:
            supervisor.kill_runners()
            os._exit(EXIT_STOPPED_NOW)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return supervisor.run()
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"run": cmd_run, "plan": cmd_plan, "worker": cmd_worker}
    try:
        return handlers[args.command](args)
    except SpecError as exc:
        print(f"fleetrun: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    except FleetrunError as exc:
        print(f"fleetrun: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("fleetrun: interrupted; re-run the same command to resume the job.", file=sys.stderr)
        return EXIT_STOPPED_NOW


if __name__ == "__main__":
    sys.exit(main())
