"""Commands about jobs: run, plan, submit, status, wait, cancel."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from typing import Any

from fleetrun.api import plan as plan_job
from fleetrun.api import resolve
from fleetrun.api import run as run_job
from fleetrun.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_broker_options,
    client_connection,
    client_settings,
)
from fleetrun.common.logging import configure
from fleetrun.common.spec import load_spec, parse_overrides
from fleetrun.common.status import JobStatus, JobSubmission, StatusReply, StatusRequest
from fleetrun.coordinator.fleet import ask
from fleetrun.coordinator.ledger import Counts
from fleetrun.coordinator.progress import Progress
from fleetrun.coordinator.state import prepare


def add_commands(commands: Any) -> None:
    def job_command(name: str, help_: str) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = commands.add_parser(name, help=help_, description=help_)
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

    run = job_command("run", "Run a job to its end, in the foreground, and write its outputs.")
    add_broker_options(run, embedded_default=True)
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.set_defaults(handler=cmd_run)
    job_command(
        "plan", "Print the plan (inputs, mini-batches) without running anything."
    ).set_defaults(handler=cmd_plan)
    submit = job_command("submit", "Queue a job for the coordinator daemons; print its id.")
    add_broker_options(submit)
    submit.set_defaults(handler=cmd_submit)

    status = commands.add_parser("status", help="Show the jobs of the fleet (or one job).")
    status.add_argument("job_id", nargs="?")
    status.add_argument(
        "--depth", action="store_true", help="print only the number of batches waiting"
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    add_broker_options(status)
    status.set_defaults(handler=cmd_status)

    wait = commands.add_parser("wait", help="Wait for a job to end; exit like `fleetrun run`.")
    wait.add_argument("job_id")
    wait.add_argument("--quiet", action="store_true", help="no progress line")
    add_broker_options(wait)
    wait.set_defaults(handler=cmd_wait)

    cancel = commands.add_parser("cancel", help="Stop a job: its queued batches are dropped.")
    cancel.add_argument("job_id")
    add_broker_options(cancel)
    cancel.set_defaults(handler=cmd_cancel)


def _print_summary(summary: Any, output_folder: str) -> None:
    print(json.dumps(summary.model_dump(), indent=2))
    verdict = {"aborted": "was aborted", "cancelled": "was cancelled"}.get(
        summary.status, summary.status
    )
    where = f" Output: {summary.output}" if summary.output else ""
    print(f"Job {summary.job_id} {verdict}.{where}", file=sys.stderr)
    if summary.status != "succeeded":
        print(f"Reason: {summary.reason}. Details: {output_folder}/errors.jsonl", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.job, parse_overrides(args.overrides))
    configure(spec.logging_level if spec.logging_level != "INFO" else "WARNING")
    settings = client_settings(args)
    summary = run_job(
        spec,
        broker=settings.broker_urls or None,
        progress=Progress(enabled=not args.quiet),
        namespace=settings.namespace,
        tls=settings.tls,
    )
    _print_summary(summary, spec.output)
    return summary.exit_code


def cmd_plan(args: argparse.Namespace) -> int:
    spec = load_spec(args.job, parse_overrides(args.overrides))
    print(plan_job(spec).render())
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    configure("WARNING")
    spec = resolve(load_spec(args.job, parse_overrides(args.overrides)))
    conn, topology = client_connection(client_settings(args))
    with conn:
        prepared = prepare(spec)  # validates, snapshots the code, writes the job's state
        if prepared.reused is not None:
            print(prepared.job_id)
            print(
                f"Job {prepared.job_id} already finished with the same inputs, code and settings; "
                "its outputs are reused (set allow_reuse: false to run it again).",
                file=sys.stderr,
            )
            return EXIT_OK
        submission = JobSubmission(
            job_id=prepared.job_id,
            state_uri=spec.state_uri,
            storage_options=spec.storage_options,
            submitter=f"{getpass.getuser()}@{socket.gethostname()}",
        )
        conn.declare_queue(topology.jobs)
        conn.publish(topology.jobs, submission.to_bytes()).result(30)
    print(prepared.job_id)
    print(
        f"Job {prepared.job_id} queued; follow it with: fleetrun wait {prepared.job_id}",
        file=sys.stderr,
    )
    return EXIT_OK


def _jobs(replies: list[StatusReply], job_id: str | None) -> list[JobStatus]:
    found: dict[str, JobStatus] = {}
    for reply in replies:
        for job in reply.jobs:
            if job_id and job.job_id != job_id:
                continue
            # A live state beats a remembered one (a job resumed by another coordinator).
            if job.job_id not in found or found[job.job_id].finished:
                found[job.job_id] = job
    return list(found.values())


def render(jobs: list[JobStatus], replies: list[StatusReply], depth: tuple[int, int]) -> str:
    workers = {w.worker: w for reply in replies for w in reply.workers}
    lines = [
        f"{len(replies)} coordinator(s), {len(workers)} worker(s) "
        f"({sum(w.runners for w in workers.values())} runners); "
        f"{depth[0]} batches waiting in the queue"
    ]
    for job in jobs:
        total = job.batches_total if job.batches_total is not None else f"{job.batches_planned}+"
        eta = f", about {job.eta_s:.0f} s left" if job.eta_s is not None else ""
        lines.append(
            f"{job.job_id}  {job.state}  batches {job.batches_done}/{total} "
            f"({job.batches_failed} failed, {job.batches_retried} retried)  items "
            f"{job.items_succeeded} ok, {job.items_failed} failed  {job.rate:.1f} batches/s{eta}"
        )
        if job.reason and job.finished:
            lines.append(f"    {job.reason}")
        if job.state == "running":
            lines.append(f"    queued: {job.queued} batches")
            for flight in job.in_flight:
                lines.append(
                    f"    in flight: batch {flight.batch} (try {flight.attempt}) on "
                    f"{flight.worker}, for {flight.age_s:.0f} s"
                )
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    configure("WARNING")
    settings = client_settings(args)
    conn, topology = client_connection(settings)
    with conn:
        conn.declare_queue(topology.batches)
        depth = conn.queue_depth(topology.batches)
        if args.depth:
            print(depth[0])
            return EXIT_OK
        replies = ask(conn, topology, StatusRequest(job_id=args.job_id, reply_to=""))
    jobs = _jobs(replies, args.job_id)
    if args.json:
        print(json.dumps([job.model_dump() for job in jobs], indent=2))
    else:
        print(render(jobs, replies, depth))
    if not replies:
        print("No coordinator answered: is `fleetrun coordinator` running?", file=sys.stderr)
    if args.job_id and not jobs:
        print(f"No coordinator knows job {args.job_id}.", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    configure("WARNING")
    conn, topology = client_connection(client_settings(args))
    progress = Progress(enabled=not args.quiet)
    unknown_since = time.monotonic()
    with conn:
        while True:
            request = StatusRequest(job_id=args.job_id, reply_to="")
            replies = ask(conn, topology, request, enough=lambda got: bool(_jobs(got, args.job_id)))
            jobs = _jobs(replies, args.job_id)
            if not jobs:
                if time.monotonic() - unknown_since > 60:
                    print(f"fleetrun: no coordinator knows job {args.job_id}", file=sys.stderr)
                    return EXIT_FAILED
                time.sleep(1)
                continue
            unknown_since = time.monotonic()
            job = jobs[0]
            counts = Counts(
                items=job.items_succeeded + job.items_failed,
                items_failed=job.items_failed,
                batches=job.batches_done,
                batches_failed=job.batches_failed,
                batches_retried=job.batches_retried,
            )
            progress.update(counts, job.batches_planned, job.batches_total is not None)
            if job.finished:
                progress.close()
                print(json.dumps(job.model_dump(), indent=2))
                print(
                    f"Job {job.job_id} {job.state}." + (f" {job.reason}" if job.reason else ""),
                    file=sys.stderr,
                )
                return EXIT_OK if job.state == "succeeded" else EXIT_FAILED
            time.sleep(0.5)


def cmd_cancel(args: argparse.Namespace) -> int:
    configure("WARNING")
    conn, topology = client_connection(client_settings(args))
    requester = f"{getpass.getuser()}@{socket.gethostname()}"
    with conn:
        replies = ask(
            conn,
            topology,
            StatusRequest(action="cancel", job_id=args.job_id, reply_to="", requester=requester),
        )
    messages = [r.message for r in replies if r.message]
    if not messages:
        print(f"fleetrun: no coordinator runs or queues job {args.job_id}", file=sys.stderr)
        return EXIT_FAILED
    for message in messages:
        print(message)
    return EXIT_OK
