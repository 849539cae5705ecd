"""``fleetrun coordinator``: runs the jobs submitted to the broker, several at once.

Submitted jobs wait in a durable queue (``<ns>.jobs``). The daemon takes them as they come
and runs up to ``max_jobs`` at a time, each in a :class:`JobRun` of its own (the same code as
``fleetrun run``). A job's message is acked only when the job has ended, so a coordinator that
is killed hands its jobs back to the broker: the next coordinator resumes them from their state
(the ledger and the finished parts), with no lost or duplicated rows.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pydantic import ValidationError

from fleetrun.common.broker import Connection, Consumer, Delivery
from fleetrun.common.errors import FleetrunError
from fleetrun.common.logging import get_logger
from fleetrun.common.messages import Topology
from fleetrun.common.status import JobStatus, JobSubmission, StatusReply, StatusRequest
from fleetrun.coordinator.fleet import FleetView, StatusResponder
from fleetrun.coordinator.job import JobRun
from fleetrun.coordinator.ledger import Ledger
from fleetrun.coordinator.outputs import Summary, make_summary, write_summary
from fleetrun.coordinator.state import prepare_from_state

KEEP_FINISHED = 200  # finished jobs remembered for `fleetrun status` and `fleetrun wait`


@dataclass
class _Entry:
    delivery: Delivery
    submission: JobSubmission
    run: JobRun | None = None
    thread: threading.Thread | None = None
    cancel_reason: str = ""
    queued_at: float = field(default_factory=time.time)


def status_of(summary: Summary, name: str, output: str, coordinator: str) -> JobStatus:
    return JobStatus(
        job_id=summary.job_id,
        name=name,
        state=summary.status,
        reason=summary.reason,
        output=summary.output or output,
        batches_total=summary.mini_batches.total,
        batches_planned=summary.mini_batches.total,
        batches_done=summary.mini_batches.succeeded + summary.mini_batches.failed,
        batches_failed=summary.mini_batches.failed,
        batches_retried=summary.mini_batches.retried,
        items_succeeded=summary.items.succeeded,
        items_failed=summary.items.failed,
        coordinator=coordinator,
    )


class CoordinatorDaemon:
    def __init__(self, conn: Connection, topology: Topology, name: str, max_jobs: int = 4) -> None:
        self.conn = conn
        self.topology = topology
        self.name = name
        self.max_jobs = max_jobs
        self.log = get_logger(coordinator=name)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # queued and running, in order
        self._finished: OrderedDict[str, JobStatus] = OrderedDict()
        self._stopping = threading.Event()
        self._jobs: Consumer | None = None
        self._fleet: FleetView | None = None

    def run(self) -> int:
        self.conn.declare_queue(self.topology.jobs)
        # Every submitted job is taken at once (queued here, in order), so status can list them.
        self._jobs = self.conn.consume(self.topology.jobs, prefetch=1000)
        self._fleet = FleetView(self.conn, self.topology)
        responder = StatusResponder(self.conn, self.topology, self.answer)
        self.log.info(
            "Coordinator is taking jobs.", broker=self.conn.description, max_jobs=self.max_jobs
        )
        try:
            while not self._stopping.is_set():
                self.run_once()
        finally:
            responder.close()
            self._fleet.close()
        self.log.info("Coordinator stopped; its unfinished jobs go back to the queue.")
        return 0

    def stop(self) -> None:
        """Stop taking jobs and leave; running jobs resume in the next coordinator."""
        self._stopping.set()

    def run_once(self, timeout: float = 0.5) -> None:
        assert self._jobs is not None
        delivery = self._jobs.get(timeout=timeout)
        while delivery is not None:
            self._accept(delivery)
            delivery = self._jobs.get(timeout=0)
        self._reap()
        self._start_waiting()

    def _accept(self, delivery: Delivery) -> None:
        assert self._jobs is not None
        try:
            submission = JobSubmission.from_bytes(delivery.body)
        except ValidationError as exc:
            self.log.error("Dropping a malformed job submission.", error=str(exc)[:300])
            self._jobs.ack(delivery)
            return
        with self._lock:
            if submission.job_id in self._entries:  # submitted twice while queued or running
                self._jobs.ack(delivery)
                return
            self._entries[submission.job_id] = _Entry(delivery, submission)
        self.log.info("Job queued.", job_id=submission.job_id)

    def _start_waiting(self) -> None:
        with self._lock:
            running = sum(1 for e in self._entries.values() if e.thread is not None)
            waiting = [e for e in self._entries.values() if e.thread is None]
            for entry in waiting[: max(0, self.max_jobs - running)]:
                entry.thread = threading.Thread(
                    target=self._run_job,
                    args=(entry,),
                    name=f"job-{entry.submission.job_id}",
                    daemon=True,
                )
                entry.thread.start()

    def _run_job(self, entry: _Entry) -> None:
        submission = entry.submission
        log = self.log.bind(job_id=submission.job_id)
        try:
            prepared = prepare_from_state(submission.state_uri, submission.storage_options)
            run = JobRun(prepared, self.conn, topology=self.topology)
            entry.run = run
            if entry.cancel_reason:
                run.cancel(entry.cancel_reason)
            log.info("Job started.")
            summary = run.run()
            status = status_of(summary, prepared.spec.name, prepared.spec.output, self.name)
            log.info("Job ended.", status=summary.status, reason=summary.reason)
        except (FleetrunError, OSError) as exc:
            log.error("Job could not run.", error=str(exc))
            status = JobStatus(
                job_id=submission.job_id,
                name=submission.job_id,
                state="failed",
                reason=str(exc),
                coordinator=self.name,
            )
        self._remember(status)

    def _remember(self, status: JobStatus) -> None:
        with self._lock:
            self._finished[status.job_id] = status
            while len(self._finished) > KEEP_FINISHED:
                self._finished.popitem(last=False)

    def _reap(self) -> None:
        assert self._jobs is not None
        with self._lock:
            done = [
                job_id
                for job_id, e in self._entries.items()
                if e.thread is not None and not e.thread.is_alive()
            ]
            for job_id in done:
                self._jobs.ack(self._entries.pop(job_id).delivery)

    # -- status and cancel ---------------------------------------------------------------------

    def answer(self, request: StatusRequest) -> StatusReply:
        if request.action == "cancel" and request.job_id:
            return StatusReply(
                coordinator=self.name, message=self.cancel(request.job_id, request.requester)
            )
        workers = self._fleet.workers() if self._fleet else []
        jobs: list[JobStatus] = []
        with self._lock:
            entries = list(self._entries.values())
            finished = list(self._finished.values())
        for entry in entries:
            if entry.run is not None:
                jobs.append(entry.run.snapshot(workers, self.name))
            else:
                jobs.append(
                    JobStatus(
                        job_id=entry.submission.job_id,
                        name=entry.submission.job_id,
                        state="queued",
                        coordinator=self.name,
                    )
                )
        jobs += finished
        if request.job_id:
            jobs = [j for j in jobs if j.job_id == request.job_id]
        return StatusReply(coordinator=self.name, jobs=jobs, workers=workers)

    def cancel(self, job_id: str, requester: str) -> str:
        reason = f"cancelled by {requester or 'a user'}"
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None:
                return ""
            entry.cancel_reason = reason
            run, started = entry.run, entry.thread is not None
            if not started:
                self._entries.pop(job_id)
        if run is not None:
            run.cancel(reason)
            return f"job {job_id} is being cancelled: its queued batches are dropped"
        if started:
            return f"job {job_id} is starting; it will stop at once"
        self._cancel_queued(entry, reason)
        return f"job {job_id} was cancelled before it started"

    def _cancel_queued(self, entry: _Entry, reason: str) -> None:
        assert self._jobs is not None
        try:
            prepared = prepare_from_state(
                entry.submission.state_uri, entry.submission.storage_options
            )
            now = time.time()
            summary = make_summary(
                prepared.job_id,
                "cancelled",
                reason,
                Ledger(prepared.spec.state_uri, {}),
                0,
                0,
                now,
                now,
                None,
            )
            write_summary(prepared.spec, summary)
            self._remember(status_of(summary, prepared.spec.name, prepared.spec.output, self.name))
        except (FleetrunError, OSError) as exc:
            self.log.warning("Could not write the cancelled job's summary.", error=str(exc))
        self._jobs.ack(entry.delivery)
