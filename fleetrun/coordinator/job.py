"""One run of one job: plan, publish, collect results, enforce thresholds, write the outputs.

``fleetrun run`` runs this in the foreground; the same code serves any coordinator. Publishing
happens on a thread of its own, so batches go out while the listing goes on and while results
come back; the calling thread collects results (:meth:`JobRun.run_once` is one step of that).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from fleetrun.common import storage
from fleetrun.common.broker import Connection, Delivery
from fleetrun.common.errors import ConnectionLost, FleetrunError
from fleetrun.common.logging import get_logger
from fleetrun.common.messages import (
    BatchMessage,
    BatchResult,
    StopJob,
    Topology,
    results_from_bytes,
)
from fleetrun.common.output_formats import OutputSchemaError, check_columns
from fleetrun.common.status import InFlight, JobStatus, WorkerStatus
from fleetrun.coordinator.outputs import (
    OutputJoin,
    Status,
    Summary,
    make_summary,
    write_reports,
    write_summary,
)
from fleetrun.coordinator.planner import plan
from fleetrun.coordinator.progress import Progress
from fleetrun.coordinator.state import Prepared
from fleetrun.coordinator.tabular_plan import Warnings

PUBLISH_WINDOW = 2000  # unconfirmed batch messages in flight; confirms pipeline up to this
STALL_NOTICE_S = 60.0


class JobRun:
    """Runs a prepared job on the workers reachable through ``connection``."""

    def __init__(
        self,
        prepared: Prepared,
        connection: Connection,
        progress: Progress | None = None,
        topology: Topology | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topology = topology or Topology()
        self.spec = prepared.spec
        self.job_id = prepared.job_id
        self.ledger = prepared.ledger
        self.conn = connection
        self.progress = progress or Progress(enabled=False)
        self.clock = clock
        self.run_id = uuid.uuid4().hex[:12]
        self.log = get_logger(job_id=self.job_id)
        self.planned_batches = 0
        self.planned_items = 0
        self.listing_done = False
        self.abort_reason = ""
        self.stop_status: Status = "aborted"
        self._cancel_reason = ""
        self.warnings = Warnings()
        self._columns: list[str] | None = None  # the typed output's columns, from a first batch
        self._stop_publishing = threading.Event()
        self._publisher_error: BaseException | None = None
        self._to_ack: list[Delivery] = []
        self._last_progress = clock()
        self._last_notice = clock()
        self._started_wall = time.time()
        self._join: OutputJoin | None = None  # the append_row file, joined as batches finish

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> Summary:
        conn = self.conn
        topology = self.topology
        conn.declare_queue(topology.batches)
        conn.declare_fanout(topology.control)
        conn.declare_queue(topology.results(self.job_id))
        # A deep prefetch: results are acked in bulk, once a ledger write made them durable.
        self.results = conn.consume(topology.results(self.job_id), prefetch=4000)
        publisher = threading.Thread(target=self._publish_plan, name="publisher", daemon=True)
        publisher.start()
        if self.spec.output_action == "append_row":
            self._join = OutputJoin(
                self.spec,
                self.ledger,
                lambda: self.planned_batches if self.listing_done else None,
            )
        try:
            while not self.finished():
                self.run_once()
        except BaseException:
            if self._join is not None:
                self._join.abort()
            raise
        finally:
            self._stop_publishing.set()
            publisher.join()
            self.progress.close()
        return self._finish()

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the job (from any thread): its remaining batches are dropped."""
        self._cancel_reason = reason

    def finished(self) -> bool:
        if self._cancel_reason and not self.abort_reason:
            self._abort(self._cancel_reason, status="cancelled")
        if self._publisher_error is not None:
            raise self._publisher_error
        if self.abort_reason:
            return True
        return self.listing_done and len(self.ledger.results) >= self.planned_batches

    def run_once(self, timeout: float = 0.2) -> None:
        """Take the results that arrived, make them durable, check thresholds and progress."""
        delivery = self.results.get(timeout)
        while delivery is not None:
            self._to_ack.append(delivery)
            for result in results_from_bytes(delivery.body):
                self._take(result)
            if len(self._to_ack) >= 1000:
                break
            delivery = self.results.get(0)
        if self.ledger.due() or (self._to_ack and not self.ledger.unwritten):
            self.ledger.write()
            for d in self._to_ack:
                self.results.ack(d)
            self._to_ack.clear()
        self._check_thresholds()
        self.progress.update(self.ledger.counts, self.planned_batches, self.listing_done)
        self._notice_stall()

    def _take(self, result: BatchResult) -> None:
        if result.job_id != self.job_id or not self.ledger.add(result):
            return  # another job's, or a batch already counted
        self._last_progress = self.clock()
        if self._join is not None:
            self._join.arrived(result.index)
        self._check_columns(result)
        if result.error is not None and result.error.kind == "script_invalid":
            # Every batch would fail the same way: stop now, not after all of them.
            self._abort(result.error.message, status="failed")

    def snapshot(self, workers: list[WorkerStatus], coordinator: str = "") -> JobStatus:
        """How the job stands, for ``fleetrun status``."""
        c = self.ledger.counts
        elapsed = max(time.time() - self._started_wall, 1e-6)
        rate = c.batches / elapsed
        now = time.time()
        in_flight = [
            InFlight(
                batch=h.batch, attempt=h.attempt, worker=w.worker, age_s=round(now - h.since, 1)
            )
            for w in workers
            for h in w.held
            if h.job_id == self.job_id
        ]
        left = self.planned_batches - len(self.ledger.results)
        return JobStatus(
            job_id=self.job_id,
            name=self.spec.name,
            state="running",
            output=self.spec.output,
            batches_total=self.planned_batches if self.listing_done else None,
            batches_planned=self.planned_batches,
            batches_done=c.batches,
            batches_failed=c.batches_failed,
            batches_retried=c.batches_retried,
            items_succeeded=c.items - c.items_failed,
            items_failed=c.items_failed,
            rate=round(rate, 2),
            eta_s=round(left / rate, 1) if self.listing_done and rate > 0 else None,
            queued=max(0, left - len(in_flight)),
            in_flight=sorted(in_flight, key=lambda f: f.batch),
            coordinator=coordinator,
        )

    # -- publishing ----------------------------------------------------------------------------

    def _publish_plan(self) -> None:
        try:
            window: deque[tuple[Future[None], BatchMessage]] = deque()
            for index, batch in enumerate(plan(self.spec, self.warnings)):
                if self._stop_publishing.is_set():
                    return
                self.planned_items += len(batch.items)
                self.planned_batches = index + 1
                if index in self.ledger.results:
                    continue  # finished by an earlier run of this job
                message = BatchMessage(
                    job_id=self.job_id,
                    run_id=self.run_id,
                    state_uri=self.spec.state_uri,
                    reply_to=self.topology.results(self.job_id),
                    index=index,
                    items=batch.items,
                    slice=batch.slice,
                    storage_options=self.spec.storage_options,
                )
                window.append((self._publish(message), message))
                while len(window) >= PUBLISH_WINDOW:
                    self._confirm(*window.popleft())
            while window:
                self._confirm(*window.popleft())
            self.listing_done = True
            for warning in self.warnings:
                self.progress.say(f"warning: {warning}")
            self.log.debug("All batches published.", batches=self.planned_batches)
        except BaseException as exc:
            self._publisher_error = exc

    def _publish(self, message: BatchMessage) -> Future[None]:
        return self.conn.publish(self.topology.batches, message.to_bytes())

    def _confirm(self, future: Future[None], message: BatchMessage) -> None:
        """Wait for the broker's confirm; publish again what a lost connection swallowed."""
        for attempt in range(1, 100):
            try:
                future.result(timeout=120)
                return
            except ConnectionLost:
                if self._stop_publishing.is_set():
                    return
                time.sleep(min(5.0, 0.2 * attempt))
                future = self._publish(message)
        raise FleetrunError(
            f"could not publish batch {message.index}: the broker keeps refusing it"
        )

    # -- thresholds and stalls -----------------------------------------------------------------

    def _check_columns(self, result: BatchResult) -> None:
        """A typed output needs the same columns from every batch: stop at the first misfit."""
        if not result.columns or not result.succeeded or self.abort_reason:
            return
        if self._columns is None:
            self._columns = result.columns
            return
        try:
            check_columns(self._columns, result.columns, result.index, self.spec.append_row_format)
        except OutputSchemaError as exc:
            self._abort(str(exc))

    def _check_thresholds(self) -> None:
        if self.abort_reason:
            return
        spec, c = self.spec, self.ledger.counts
        if spec.error_threshold != -1 and c.items_failed > spec.error_threshold:
            self._abort(
                f"{c.items_failed} items failed, more than error_threshold={spec.error_threshold}"
            )
        elif spec.allowed_failed_count != -1 and c.batches_failed > spec.allowed_failed_count:
            self._abort(
                f"{c.batches_failed} mini-batches failed, "
                f"more than allowed_failed_count={spec.allowed_failed_count}"
            )
        elif self.listing_done and self.planned_batches and spec.allowed_failed_percent < 100:
            percent = 100.0 * c.batches_failed / self.planned_batches
            if percent > spec.allowed_failed_percent:
                self._abort(
                    f"{percent:.1f}% of mini-batches failed "
                    f"({c.batches_failed} of {self.planned_batches}), "
                    f"more than allowed_failed_percent={spec.allowed_failed_percent:g}"
                )

    def _abort(self, reason: str, status: Status = "aborted") -> None:
        """Drop the remaining batches: workers stop taking them, the publisher stops."""
        self.abort_reason = reason
        self.stop_status = status
        self._stop_publishing.set()
        storage.write_bytes(
            storage.join(self.spec.state_uri, "stopped", self.run_id),
            reason.encode(),
            self.spec.storage_options,
        )
        self._broadcast_end(reason, finished=False)
        self.progress.say(f"Stopping the job ({status}): {reason}.")

    def _broadcast_end(self, reason: str, finished: bool) -> None:
        """Tell every worker this run has ended: they drop its batches and free its runners."""
        end = StopJob(job_id=self.job_id, run_id=self.run_id, reason=reason, finished=finished)
        try:
            self.conn.publish("", end.to_bytes(), exchange=self.topology.control).result(30)
        except Exception as exc:
            # A stopped run leaves a marker in storage that stops the workers anyway; the
            # runners of a finished one are freed after switch_after_s or their idle timeout.
            self.log.warning("Could not tell the workers that the run ended.", error=str(exc))

    def _notice_stall(self) -> None:
        now = self.clock()
        if now - self._last_progress < STALL_NOTICE_S or now - self._last_notice < STALL_NOTICE_S:
            return
        self._last_notice = now
        waiting = self.planned_batches - len(self.ledger.results)
        try:
            ready, consumers = self.conn.queue_depth(self.topology.batches)
        except FleetrunError:
            ready, consumers = -1, -1
        if consumers == 0:
            self.progress.say(
                f"No worker has taken a batch for {now - self._last_progress:.0f} s: "
                f"{waiting} batches are waiting and no worker is connected to "
                f"{self.conn.description}. Start one with: fleetrun worker --broker <URL>. "
                "Still waiting."
            )
        else:
            self.progress.say(
                f"No batch has finished for {now - self._last_progress:.0f} s ({waiting} waiting, "
                f"{ready} queued, {consumers} workers connected): runs may be slow or stuck; tries "
                f"are killed after run_invocation_timeout={self.spec.run_invocation_timeout:g} s. "
                "Still waiting."
            )

    # -- the end -------------------------------------------------------------------------------

    def _finish(self) -> Summary:
        self.ledger.write()
        for d in self._to_ack:
            self.results.ack(d)
        self._to_ack.clear()
        spec, c = self.spec, self.ledger.counts
        errors = write_reports(spec, self.ledger)
        status: Status = "succeeded"
        reason = f"all {self.planned_batches} mini-batches finished"
        output: str | None = None
        if self.abort_reason:
            status, reason = self.stop_status, self.abort_reason
        elif c.items and c.items == c.items_failed:
            status = "failed"
            first = errors[-1] if errors else None
            reason = "run() did not process any item successfully" + (
                f"; last error: {first.type}: {first.message}" if first else ""
            )
        # A job stopped early (aborted, cancelled, failed at once) writes no output file.
        if self._join is not None and self.abort_reason:
            self._join.abort()
        elif self._join is not None:
            try:
                output = self._join.finish()
            except OutputSchemaError as exc:
                status, reason = "failed", str(exc)
        summary = make_summary(
            self.job_id,
            status,
            reason,
            self.ledger,
            c.items if spec.tabular else self.planned_items,
            self.planned_batches,
            self._started_wall,
            time.time(),
            output,
        )
        write_summary(spec, summary)
        if not self.abort_reason:  # a stopped run was announced when it stopped
            self._broadcast_end(reason, finished=True)
        try:
            self.results.cancel()
            self.conn.delete_queue(self.topology.results(self.job_id))
        except FleetrunError:
            pass
        return summary
