"""``fleetrun.run``: run a job from Python, on the embedded broker or on RabbitMQ."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from fleetrun.common.broker import connect
from fleetrun.common.broker.base import TlsFiles
from fleetrun.common.broker.embedded import EmbeddedBroker
from fleetrun.common.gc_pauses import fewer_pauses
from fleetrun.common.messages import Topology
from fleetrun.common.settings import default_cache_dir
from fleetrun.common.spec import JobSpec, build_spec
from fleetrun.common.status import StatusReply, StatusRequest
from fleetrun.coordinator.fleet import FleetView, StatusResponder
from fleetrun.coordinator.job import JobRun
from fleetrun.coordinator.outputs import Summary
from fleetrun.coordinator.planner import PlanReport, describe_plan
from fleetrun.coordinator.progress import Progress
from fleetrun.coordinator.state import Prepared, prepare
from fleetrun.worker.supervisor import Supervisor, WorkerSettings


def resolve(spec: JobSpec, base_dir: Path | None = None) -> JobSpec:
    """Validate a spec built in Python and make its relative paths absolute (against the cwd)."""
    return build_spec(spec.model_dump(), base_dir or Path.cwd(), source="the job spec")


def run(
    spec: JobSpec,
    *,
    broker: str | list[str] | None = None,
    progress: Progress | None = None,
    namespace: str | None = None,
    tls: TlsFiles | None = None,
) -> Summary:
    """Run a job to its end and return its summary (also written to ``<output>/summary.json``).

    Without ``broker`` (or ``FLEETRUN_BROKER``) the job runs on an embedded broker with
    ``process_count_per_node`` local runners; with it, on every ``fleetrun worker`` of that
    RabbitMQ broker. While it runs, the process's garbage collector pauses less often (see
    :mod:`fleetrun.common.gc_pauses`).
    """
    with fewer_pauses():
        return _run(spec, broker, progress, namespace, tls)


def _run(
    spec: JobSpec,
    broker: str | list[str] | None,
    progress: Progress | None,
    namespace: str | None,
    tls: TlsFiles | None,
) -> Summary:
    spec = resolve(spec)
    broker = broker or os.environ.get("FLEETRUN_BROKER") or None
    topology = Topology(namespace or os.environ.get("FLEETRUN_NAMESPACE") or "fleetrun")
    prepared = prepare(spec)
    if prepared.reused is not None:
        if progress is not None:
            progress.say(
                f"Job {prepared.job_id} already finished with the same inputs, code and settings; "
                "reusing its outputs (set allow_reuse: false to run it again)."
            )
        return prepared.reused
    if broker:
        name = f"fleetrun-run-{socket.gethostname()}-{os.getpid()}"
        with connect(broker, name=name, tls=tls) as conn:
            job = JobRun(prepared, conn, progress, topology)
            # `fleetrun status` and `cancel` see a foreground job like one run by a coordinator.
            fleet = FleetView(conn, topology)

            def answer(request: StatusRequest) -> StatusReply:
                if request.action == "cancel":
                    if request.job_id != job.job_id:
                        return StatusReply(coordinator=name)
                    job.cancel(f"cancelled by {request.requester or 'a user'}")
                    message = f"job {job.job_id} is being cancelled: its queued batches are dropped"
                    return StatusReply(coordinator=name, message=message)
                return StatusReply(coordinator=name, jobs=[job.snapshot(fleet.workers(), name)])

            responder = StatusResponder(conn, topology, answer)
            try:
                return job.run()
            finally:
                responder.close()
                fleet.close()
    return _run_embedded(prepared, spec, progress, topology)


def _run_embedded(
    prepared: Prepared, spec: JobSpec, progress: Progress | None, topology: Topology
) -> Summary:
    embedded = EmbeddedBroker()
    worker_conn = embedded.connect()
    settings = WorkerSettings(
        processes=spec.process_count_per_node,
        cache_dir=default_cache_dir(),
        name=f"{socket.gethostname()}:{os.getpid()}",
        namespace=topology.namespace,
        record_tries=False,
    )
    supervisor = Supervisor(worker_conn, settings)
    thread = threading.Thread(target=supervisor.run, name="embedded-worker", daemon=True)
    thread.start()
    supervisor.wait_started(30)
    interrupted = False
    try:
        return JobRun(prepared, embedded.connect(), progress, topology).run()
    except KeyboardInterrupt:
        interrupted = True
        supervisor.kill_runners()
        raise
    finally:
        supervisor.stop()
        thread.join(None if not interrupted else 10)
        worker_conn.close()


def plan(spec: JobSpec) -> PlanReport:
    """The plan of a job (input and mini-batch counts) without running anything."""
    return describe_plan(resolve(spec))
