"""What happens to one delivered batch: triage, staging, and the verdict after a try.

Triage settles what needs no runner (a malformed message, a stopped job, a batch finished
before, a batch whose holders died on its last try). The verdict after a try is one of:
publish the result and ack; record the failed try and republish the batch with ``attempt + 1``
(acking the original once the copy is confirmed); or, after the last allowed try, write a
failed part. Acks always come after the result or the copy is confirmed, so nothing is lost
between two workers.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pydantic import ValidationError

from fleetrun.common import storage
from fleetrun.common.broker import Connection, Consumer, Delivery
from fleetrun.common.errors import Unroutable
from fleetrun.common.messages import BatchMessage, BatchResult, ErrorInfo, Topology
from fleetrun.common.parts import part_uri, read_part_header, write_first
from fleetrun.worker import tabular
from fleetrun.worker.jobs import (
    JobCache,
    JobLoadError,
    JobStateGone,
    JobStateInvalid,
    LoadedJob,
)
from fleetrun.worker.result_outbox import ResultOutbox
from fleetrun.worker.runner_process import TryResult
from fleetrun.worker.staging import StagedBatch, stage
from fleetrun.worker.try_records import TryRecords
from fleetrun.worker.work import Work

RECHECK_AFTER_S = 1.0


def error_record_uri(state_uri: str, index: int, attempt: int) -> str:
    return storage.join(state_uri, "errors", f"{index:09d}-{attempt:03d}.json")


class BatchHandler:
    def __init__(
        self,
        conn: Connection,
        topology: Topology,
        jobs: JobCache,
        log: Any,
        name: str,
        record_tries: bool = True,
    ) -> None:
        self.conn = conn
        self.record_tries = record_tries
        self.topology = topology
        self.jobs = jobs
        self.log = log
        self.name = name
        self._pending: set[Future[None]] = set()
        self._lock = threading.Lock()
        self.tries = TryRecords()
        self.outbox = ResultOutbox(conn.publish)

    # -- before a try --------------------------------------------------------------------------

    def triage(self, consumer: Consumer, delivery: Delivery) -> Work | None:
        """The batch's Work if it needs a runner; None when it was settled here."""
        try:
            message = BatchMessage.from_bytes(delivery.body)
        except ValidationError as exc:
            self.log.error("Dropping a malformed batch message.", error=str(exc)[:500])
            consumer.ack(delivery)
            return None
        log = self.log.bind(job_id=message.job_id, batch=message.index)
        load_error: JobLoadError | None = None
        try:
            job = self.jobs.get(message)
        except JobStateGone as exc:
            log.error("The job's state folder is gone; dropping its batch.", error=str(exc))
            consumer.ack(delivery)
            return None
        except JobLoadError as exc:
            job, load_error = exc.job, exc
        except JobStateInvalid as exc:
            log.error("The job cannot be read on this worker; its batch fails.", error=str(exc))
            self._fail_unreadable(consumer, delivery, message, str(exc))
            return None
        if self.jobs.is_stopped(job, message.run_id):
            consumer.ack(delivery)
            return None
        if self._announce_if_finished(consumer, delivery, message, job):
            return None
        attempt = self._tries_spent(job, message, delivery.prior_returns())
        work = Work(consumer, delivery, message, job, attempt)
        if load_error is not None:
            work.staging_error = ErrorInfo(
                batch=work.index,
                attempt=attempt,
                items=work.items,
                kind="side_input_failed",
                type=type(load_error.__cause__ or load_error).__name__,
                message=str(load_error),
            )
        for lost in range(message.attempt, attempt):
            self.record_error(job, self._lost_try(work, lost))
        if attempt > job.spec.run_max_try:
            self.fail_batch(work, attempt - 1, self._lost_try(work, attempt - 1))
            return None
        return work

    def _tries_spent(self, job: LoadedJob, message: BatchMessage, returns: int) -> int:
        """The number of this try: the tries fleetrun recorded, plus the returns the broker
        counted whose try had actually started (its marker exists). A batch that a dead or
        draining worker held without starting it costs no try, whatever the broker counted."""
        if returns <= 0:
            return message.attempt
        started = self.tries.count_started(
            job.state_uri, message.index, message.attempt, returns, job.spec.storage_options
        )
        return message.attempt + started

    def _announce_if_finished(
        self, consumer: Consumer, delivery: Delivery, message: BatchMessage, job: LoadedJob
    ) -> bool:
        """A batch finished before (by this or another worker) is announced again, not run."""
        options = job.spec.storage_options
        part = part_uri(job.state_uri, message.index)
        if not storage.exists(part, options):
            return False
        self.publish_result(consumer, delivery, message, read_part_header(part, options).to_bytes())
        return True

    def start(self, work: Work) -> bool:
        """Just before the runner gets the batch: False if another worker finished it while it
        waited here (it is announced instead); else the try is recorded as started."""
        if work.staging_error is not None:
            return True  # the try fails without reaching a runner
        # Triage looked for the part; look again only if the batch waited here a while (a
        # worker cut off from the broker, say), not for every batch staged a moment ago.
        waited = time.monotonic() - work.triaged_at > RECHECK_AFTER_S
        if waited and self._announce_if_finished(
            work.consumer, work.delivery, work.message, work.job
        ):
            return False
        if self.record_tries:
            self.tries.mark(
                work.job.state_uri,
                work.message.run_id,
                work.index,
                work.attempt,
                work.job.spec.storage_options,
            )
        return True

    def _fail_unreadable(
        self, consumer: Consumer, delivery: Delivery, message: BatchMessage, reason: str
    ) -> None:
        """A batch whose job this worker cannot read: failed at once, for the coordinator."""
        error = ErrorInfo(
            batch=message.index,
            attempt=message.attempt,
            items=message.items,
            kind="job_unreadable",
            type="JobStateInvalid",
            message=reason,
        )
        header = BatchResult(
            job_id=message.job_id,
            run_id=message.run_id,
            index=message.index,
            status="failed",
            items=len(message.items),
            succeeded=0,
            failed=len(message.items),
            attempt=message.attempt,
            failed_items=message.items,
            error=error,
        )
        part = part_uri(message.state_uri, message.index)
        standing = write_first(part, header.to_bytes(), b"", message.storage_options)
        self.publish_result(consumer, delivery, message, standing)

    @staticmethod
    def _lost_try(work: Work, attempt: int) -> ErrorInfo:
        return ErrorInfo(
            batch=work.index,
            attempt=attempt,
            items=work.items,
            kind="holder_lost",
            type="HolderLost",
            message=f"try {attempt} was lost: the worker holding the batch stopped before "
            "finishing it (killed, crashed, or cut off from the broker)",
        )

    def stage(self, work: Work, slot_index: int) -> None:
        """Give the batch local paths; a failure to fetch fails the try, not the worker."""
        if work.staging_error is not None:
            return
        # Unique per worker process: several workers on one machine may share the cache.
        folder = (
            work.job.work_dir / "inputs" / f"{os.getpid()}-{slot_index}-{work.index}-{work.attempt}"
        )
        options = work.job.spec.storage_options
        piece = work.message.slice
        try:
            if piece is not None and piece.kind != "partition":
                # A slice of a file: a remote CSV/JSONL range is fetched (only that range).
                work.staged = StagedBatch(tabular.stage_slice(piece, folder, options), folder)
            else:
                work.staged = stage(work.items, folder, options)
        except Exception as exc:
            kind = "input_missing" if isinstance(exc, FileNotFoundError) else "staging_failed"
            work.staging_error = ErrorInfo(
                batch=work.index,
                attempt=work.attempt,
                items=work.items,
                kind=kind,
                type=type(exc).__name__,
                message=f"staging the inputs failed: {exc}",
            )

    # -- after a try ---------------------------------------------------------------------------

    def conclude(self, work: Work, outcome: TryResult) -> None:
        if outcome.kind == "done" and outcome.result is not None:
            self.publish_result(work.consumer, work.delivery, work.message, outcome.result)
            return
        error = outcome.error or ErrorInfo(
            batch=work.index,
            attempt=work.attempt,
            items=work.items,
            kind=outcome.kind,
            type="Unknown",
            message=outcome.kind,
        )
        self.log.warning(
            "Try failed.",
            job_id=work.job.job_id,
            batch=work.index,
            attempt=work.attempt,
            kind=error.kind,
            error=f"{error.type}: {error.message}"[:300],
        )
        self.record_error(work.job, error)
        # A missing input or a script that cannot load will fail again: no point in more tries.
        poison = error.kind in ("input_missing", "script_invalid")
        if work.attempt >= work.job.spec.run_max_try or poison:
            self.fail_batch(work, work.attempt, error)
            return
        retry = work.message.model_copy(update={"attempt": work.attempt + 1})
        self.after(
            self.conn.publish(self.topology.batches, retry.to_bytes()),
            ack_if_published(work.consumer, work.delivery),
        )

    def record_error(self, job: LoadedJob, error: ErrorInfo) -> None:
        uri = error_record_uri(job.state_uri, error.batch, error.attempt)
        storage.write_bytes(uri, error.model_dump_json().encode(), job.spec.storage_options)

    def fail_batch(self, work: Work, attempt: int, error: ErrorInfo) -> None:
        """After the last allowed try: every item of the batch failed, with the last error."""
        piece = work.message.slice
        if piece is None:
            items, failed_items = len(work.items), work.items
        else:
            # Rows, as read by the last try; or as planned (Parquet); or, unknown, one.
            items = error.rows if error.rows is not None else (piece.rows or 1)
            failed_items = [piece.describe()]
        header = BatchResult(
            job_id=work.job.job_id,
            run_id=work.message.run_id,
            index=work.index,
            status="failed",
            items=items,
            succeeded=0,
            failed=items,
            attempt=attempt,
            failed_items=failed_items,
            error=error,
        )
        part = part_uri(work.job.state_uri, work.index)
        standing = write_first(part, header.to_bytes(), b"", work.job.spec.storage_options)
        self.publish_result(work.consumer, work.delivery, work.message, standing)

    def publish_result(
        self, consumer: Consumer, delivery: Delivery, message: BatchMessage, result: bytes
    ) -> None:
        """Send a batch's result (an encoded :class:`BatchResult`) to its coordinator."""
        # Acked once the result is confirmed, or refused because the job's coordinator is gone:
        # either way the part in storage is the durable record.
        self.outbox.send(
            message.reply_to, result, lambda error: self._after_result(consumer, delivery, error)
        )

    def _after_result(
        self, consumer: Consumer, delivery: Delivery, error: BaseException | None
    ) -> None:
        if error is None or isinstance(error, Unroutable):
            consumer.ack(delivery)  # announced, or nobody is listening any more
        else:
            # Not announced: back to the queue, where the next holder finds the part and
            # announces it (a requeue of a delivery from a lost channel is dropped anyway).
            consumer.requeue(delivery)

    def hand_back(self, consumer: Consumer, delivery: Delivery) -> None:
        """A batch no runner started goes back, costing it no try.

        The copy carries the tries already spent, since the broker's count starts again for a
        new message: those fleetrun recorded, plus the returns the broker counted whose try had
        started (as triage counts them).
        """
        body = delivery.body
        try:
            message = BatchMessage.from_bytes(body)
        except ValidationError:
            message = None  # not ours to mend; triage drops it
        if message is not None:
            spent, returns = message.attempt, delivery.prior_returns()
            if returns:
                try:
                    spent = self._tries_spent(self.jobs.get(message), message, returns)
                except Exception:  # the job cannot be read here: count every return
                    spent = message.attempt + returns
            body = message.model_copy(update={"attempt": spent}).to_bytes()
        self.after(
            self.conn.publish(self.topology.batches, body), ack_if_published(consumer, delivery)
        )

    # -- confirms ------------------------------------------------------------------------------

    def after(self, future: Future[None], then: Callable[[BaseException | None], None]) -> None:
        """Run ``then(error)`` once the broker confirmed (None) or refused ``future``."""
        with self._lock:
            self._pending.add(future)

        def done(f: Future[None]) -> None:
            with self._lock:
                self._pending.discard(f)
            then(f.exception())

        future.add_done_callback(done)

    def wait_for_confirms(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        self.outbox.wait_idle(timeout)
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return
            time.sleep(0.02)


def ack_if_published(
    consumer: Consumer, delivery: Delivery
) -> Callable[[BaseException | None], None]:
    """Ack once the copy is confirmed; if it was not, the original goes back instead."""

    def then(error: BaseException | None) -> None:
        if error is None:
            consumer.ack(delivery)
        else:
            consumer.requeue(delivery)

    return then
