"""The worker supervisor: takes batches from the broker and runs them on runner processes.

Threads: pika's I/O thread (inside the connection) does nothing but broker I/O, so heartbeats
never starve; one slot thread per runner process takes a batch, stages it, hands it to its
runner, waits (at most ``run_invocation_timeout``), then publishes the result and acks; one
control thread listens for jobs being stopped. User code runs only in the runner processes.

A try is counted from the batch message's own ``attempt`` (what fleetrun recorded when it
republished the batch after a failed try) plus the broker's count of returns (holders that
died or were cut off). That count survives any worker crash and does not rest on one RabbitMQ
version's header semantics (see :meth:`Delivery.prior_returns`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from fleetrun.common import storage
from fleetrun.common.broker import Connection, Consumer, Delivery
from fleetrun.common.logging import get_logger
from fleetrun.common.messages import (
    BatchMessage,
    BatchResult,
    ErrorInfo,
    StopJob,
    Topology,
)
from fleetrun.common.parts import encode_part, part_uri, read_part_header
from fleetrun.worker.jobs import JobCache, LoadedJob
from fleetrun.worker.runner_process import RunnerProcess, TryResult
from fleetrun.worker.staging import stage


def error_record_uri(state_uri: str, index: int, attempt: int) -> str:
    return storage.join(state_uri, "errors", f"{index:09d}-{attempt:03d}.json")


@dataclass(frozen=True)
class WorkerSettings:
    """How one worker runs; built once in ``main()`` and passed down."""

    processes: int = 1
    prefetch: int = 0  # 0: two per runner, enough to keep runners busy while results go out
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "fleetrun")
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    idle_runner_timeout: float = 300.0
    json_logs: bool | None = None
    gpu_count: int = 0
    namespace: str = "fleetrun"

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or 2 * self.processes


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.runner: RunnerProcess | None = None
        self.last_used = time.monotonic()

    def discard_runner(self) -> None:
        if self.runner is not None:
            self.runner.kill()
            self.runner = None


class Supervisor:
    """One worker: ``run()`` serves every job on the broker until ``stop()``."""

    def __init__(self, connection: Connection, settings: WorkerSettings) -> None:
        self._conn = connection
        self.settings = settings
        self.topology = Topology(settings.namespace)
        self._jobs = JobCache(settings.cache_dir)
        self._slots = [_Slot(i) for i in range(settings.processes)]
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._pending: set[Future[None]] = set()
        self._pending_lock = threading.Lock()
        self._batches: Consumer | None = None
        self.log = get_logger(worker=settings.name)

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self) -> int:
        conn = self._conn
        topology = self.topology
        conn.declare_queue(topology.batches)
        conn.declare_fanout(topology.control)
        control_queue = f"{topology.control}.{self.settings.name}.{uuid.uuid4().hex[:8]}"
        conn.declare_queue(control_queue, exclusive=True)
        conn.bind(control_queue, topology.control)
        control = conn.consume(control_queue, prefetch=50)
        self._batches = conn.consume(topology.batches, prefetch=self.settings.effective_prefetch)
        threads = [
            threading.Thread(
                target=self._slot_loop, args=(slot,), name=f"slot-{slot.index}", daemon=True
            )
            for slot in self._slots
        ]
        threads.append(
            threading.Thread(
                target=self._control_loop, args=(control,), name="control", daemon=True
            )
        )
        for thread in threads:
            thread.start()
        self._started.set()
        self.log.info(
            "Worker is serving jobs.",
            broker=conn.description,
            runners=self.settings.processes,
            prefetch=self.settings.effective_prefetch,
        )
        while not self._stopping.wait(0.5):
            pass  # a timed wait, so signal handlers run promptly in the main thread
        self.log.info("Worker is draining: no new batches; finishing the ones it holds.")
        self._batches.cancel()
        for thread in threads[:-1]:
            thread.join()
        self._hand_back(self._batches)
        self._wait_for_pending()
        for slot in self._slots:
            if slot.runner is not None:
                slot.runner.stop()
                slot.runner = None
        self.log.info("Worker stopped.")
        return 0

    def wait_started(self, timeout: float | None = None) -> bool:
        return self._started.wait(timeout)

    def stop(self) -> None:
        """Drain: take no new batches, finish or hand back the held ones, then return from run()."""
        self._stopping.set()

    def kill_runners(self) -> None:
        """Stop now: kill every runner at once (their batches return to the queue)."""
        self._stopping.set()
        for slot in self._slots:
            if slot.runner is not None:
                slot.runner.kill()

    def _hand_back(self, consumer: Consumer) -> None:
        """Prefetched batches that no runner started go back unchanged, costing no try."""
        while (delivery := consumer.get(timeout=0.3)) is not None:
            self._after(
                self._conn.publish(self.topology.batches, delivery.body),
                self._ack_if_published(consumer, delivery),
            )

    @staticmethod
    def _ack_if_published(consumer: Consumer, delivery: Delivery) -> Callable[[bool], None]:
        def then(published: bool) -> None:
            if published:
                consumer.ack(delivery)

        return then

    def _after(self, future: Future[None], then: Callable[[bool], None]) -> None:
        with self._pending_lock:
            self._pending.add(future)

        def done(f: Future[None]) -> None:
            with self._pending_lock:
                self._pending.discard(f)
            then(f.exception() is None)

        future.add_done_callback(done)

    def _wait_for_pending(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._pending_lock:
                if not self._pending:
                    return
            time.sleep(0.02)

    # -- threads -------------------------------------------------------------------------------

    def _control_loop(self, control: Consumer) -> None:
        while not self._stopping.is_set():
            delivery = control.get(timeout=0.5)
            if delivery is None:
                continue
            try:
                stop = StopJob.from_bytes(delivery.body)
                self._jobs.mark_stopped(stop.job_id, stop.run_id)
                self.log.info(
                    "Job stopped; dropping its batches.", job_id=stop.job_id, reason=stop.reason
                )
            except ValidationError:
                pass
            control.ack(delivery)

    def _slot_loop(self, slot: _Slot) -> None:
        assert self._batches is not None
        consumer = self._batches
        while not self._stopping.is_set():
            try:
                delivery = consumer.get(timeout=0.5)
            except Exception as exc:
                self.log.error("The batch queue is gone; stopping.", error=str(exc))
                self._stopping.set()
                return
            if delivery is None:
                if (
                    slot.runner is not None
                    and time.monotonic() - slot.last_used > self.settings.idle_runner_timeout
                ):
                    slot.runner.stop()
                    slot.runner = None
                continue
            try:
                self._handle(slot, consumer, delivery)
            except Exception:
                self.log.exception("Unexpected error handling a batch; it goes back to the queue.")
                consumer.requeue(delivery)
            slot.last_used = time.monotonic()

    # -- one batch -----------------------------------------------------------------------------

    def _handle(self, slot: _Slot, consumer: Consumer, delivery: Delivery) -> None:
        try:
            message = BatchMessage.from_bytes(delivery.body)
        except ValidationError as exc:
            self.log.error("Dropping a malformed batch message.", error=str(exc)[:500])
            consumer.ack(delivery)
            return
        log = self.log.bind(job_id=message.job_id, batch=message.index)
        try:
            job = self._jobs.get(message)
        except FileNotFoundError as exc:
            log.error("The job's state folder is gone; dropping its batch.", error=str(exc))
            consumer.ack(delivery)
            return
        if self._jobs.is_stopped(job, message.run_id):
            consumer.ack(delivery)
            return
        options = job.spec.storage_options
        part = part_uri(job.state_uri, message.index)
        if storage.exists(part, options):
            # Finished before (by this or another worker): announce it again, run nothing.
            self._publish_result(
                consumer, delivery, message.reply_to, read_part_header(part, options)
            )
            return
        attempt = message.attempt + delivery.prior_returns()
        log = log.bind(attempt=attempt)
        for lost in range(message.attempt, attempt):
            self._record_error(
                job,
                ErrorInfo(
                    batch=message.index,
                    attempt=lost,
                    items=message.items,
                    kind="holder_lost",
                    type="HolderLost",
                    message=f"try {lost} was lost: the worker holding the batch stopped "
                    "before finishing it "
                    "(killed, crashed, or cut off from the broker)",
                ),
            )
        if attempt > job.spec.run_max_try:
            last = ErrorInfo(
                batch=message.index,
                attempt=attempt - 1,
                items=message.items,
                kind="holder_lost",
                type="HolderLost",
                message="the batch's holder was lost on its last allowed try "
                f"(run_max_try={job.spec.run_max_try})",
            )
            self._fail_batch(consumer, delivery, job, message, attempt - 1, last)
            return
        outcome = self._run_try(slot, job, message, attempt)
        if outcome.kind == "done" and outcome.result is not None:
            log.debug("Batch done.")
            self._publish_result(consumer, delivery, message.reply_to, outcome.result)
            return
        error = outcome.error or ErrorInfo(
            batch=message.index,
            attempt=attempt,
            items=message.items,
            kind=outcome.kind,
            type="Unknown",
            message=outcome.kind,
        )
        log.warning("Try failed.", kind=error.kind, error=f"{error.type}: {error.message}"[:300])
        self._record_error(job, error)
        if attempt >= job.spec.run_max_try:
            self._fail_batch(consumer, delivery, job, message, attempt, error)
            return
        retry = message.model_copy(update={"attempt": attempt + 1})
        self._after(
            self._conn.publish(self.topology.batches, retry.to_bytes()),
            self._ack_if_published(consumer, delivery),
        )

    def _run_try(
        self, slot: _Slot, job: LoadedJob, message: BatchMessage, attempt: int
    ) -> TryResult:
        spec = job.spec
        timeout = spec.run_invocation_timeout
        runner = slot.runner
        if runner is not None and (runner.job_id != job.job_id or not runner.alive()):
            runner.stop()
            runner = slot.runner = None
        if runner is None:
            runner = slot.runner = self._start_runner(slot, job)
            started = runner.start(timeout=3 * timeout + 30)
            if started.kind != "ready":
                slot.discard_runner()
                error = started.error
                if error is not None:
                    error = error.model_copy(
                        update={"batch": message.index, "attempt": attempt, "items": message.items}
                    )
                    if error.kind in ("exception", "timeout", "runner_died"):
                        error = error.model_copy(update={"kind": "init_failed"})
                return TryResult("failed", error=error)
        staged = stage(
            message.items,
            job.work_dir / "inputs" / f"{slot.index}-{message.index}",
            spec.storage_options,
        )
        try:
            task = {
                "job_id": job.job_id,
                "run_id": message.run_id,
                "index": message.index,
                "attempt": attempt,
                "items": message.items,
                "local_paths": staged.local_paths,
                "part_uri": part_uri(job.state_uri, message.index),
            }
            outcome = runner.run(task, timeout)
        finally:
            staged.cleanup()
        if outcome.kind in ("timeout", "died"):
            slot.discard_runner()
        return outcome

    def _start_runner(self, slot: _Slot, job: LoadedJob) -> RunnerProcess:
        spec = job.spec
        env = dict(os.environ)
        env.update(spec.environment_variables)
        env["FLEETRUN_JOB_ID"] = job.job_id
        if self.settings.gpu_count:
            # One GPU per runner, as ParallelRunStep does; a replacement keeps its slot's GPU.
            env["CUDA_VISIBLE_DEVICES"] = str(slot.index % self.settings.gpu_count)
        output_dir = (
            Path(storage.local_path(spec.output))
            if storage.is_local(spec.output)
            else job.work_dir / "output" / str(slot.index)
        )
        setup = {
            "job_id": job.job_id,
            "code_dir": str(job.code_dir),
            "entry_script": spec.entry_script,
            "arguments": job.arguments,
            "output_dir": str(output_dir),
            "output_uri": spec.output,
            "logging_level": spec.logging_level,
            "storage_options": spec.storage_options,
            "worker": self.settings.name,
            # The script's own logging goes to a file per runner; warnings also to the console.
            "log_file": str(job.work_dir / "logs" / f"runner-{slot.index}.jsonl"),
        }
        return RunnerProcess(job.job_id, setup, env, job.code_dir)

    def _record_error(self, job: LoadedJob, error: ErrorInfo) -> None:
        uri = error_record_uri(job.state_uri, error.batch, error.attempt)
        storage.write_bytes(uri, error.model_dump_json().encode(), job.spec.storage_options)

    def _fail_batch(
        self,
        consumer: Consumer,
        delivery: Delivery,
        job: LoadedJob,
        message: BatchMessage,
        attempt: int,
        error: ErrorInfo,
    ) -> None:
        """After the last allowed try: every item of the batch failed, with the last error."""
        header = BatchResult(
            job_id=job.job_id,
            run_id=message.run_id,
            index=message.index,
            status="failed",
            items=len(message.items),
            succeeded=0,
            failed=len(message.items),
            attempt=attempt,
            failed_items=message.items,
            error=error,
        )
        part = part_uri(job.state_uri, message.index)
        if not storage.write_bytes(
            part, encode_part(header, []), job.spec.storage_options, exclusive=True
        ):
            header = read_part_header(part, job.spec.storage_options)
        self._publish_result(consumer, delivery, message.reply_to, header)

    def _publish_result(
        self, consumer: Consumer, delivery: Delivery, reply_to: str, header: BatchResult
    ) -> None:
        # Acked once the result is confirmed, or refused because the job's coordinator is gone:
        # either way the part in storage is the durable record.
        future = self._conn.publish(reply_to, header.to_bytes())
        self._after(future, lambda _ok: consumer.ack(delivery))
