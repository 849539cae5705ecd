"""The worker supervisor: takes batches from the broker and runs them on runner processes.

Threads: pika's I/O thread (inside the connection) does nothing but broker I/O, so heartbeats
never starve; one slot thread per runner process takes a batch, hands it to its runner and,
while ``run()`` works, takes and stages the next one, then publishes the result and acks; one
control thread hears when a job's run ends (finished or stopped), which frees the runners bound
to it. User code runs only in the runner processes. How many batches the worker holds follows
how long they take (:mod:`fleetrun.worker.prefetch`).

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
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from fleetrun.common.broker import Connection, Consumer
from fleetrun.common.logging import get_logger
from fleetrun.common.messages import StopJob, Topology
from fleetrun.common.status import HEARTBEAT_S, HeldBatch, WorkerStatus
from fleetrun.worker.dispatch import Dispatcher
from fleetrun.worker.handling import BatchHandler
from fleetrun.worker.jobs import JobCache
from fleetrun.worker.prefetch import MAX_PER_RUNNER, MIN_PER_RUNNER, PrefetchTuner
from fleetrun.worker.slot import RunnerSlot
from fleetrun.worker.work import Work


@dataclass(frozen=True)
class WorkerSettings:
    """How one worker runs; built once in ``main()`` and passed down."""

    processes: int = 1
    # 0: set from the duration of recent tries (see fleetrun.worker.prefetch). Held batches
    # that no runner starts cost no try (try markers).
    prefetch: int = 0
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "fleetrun")
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    idle_runner_timeout: float = 300.0
    gpu_count: int = 0
    namespace: str = "fleetrun"
    drain_timeout: float = 3600.0  # how long a drain waits for running batches
    # Whether to record each try as started (see BatchHandler.start). The embedded broker
    # lives and dies with its one worker, so it never returns a batch to a queue that outlives
    # the try: there the records would never be read.
    record_tries: bool = True


class Supervisor:
    """One worker: ``run()`` serves every job on the broker until ``stop()``."""

    def __init__(self, connection: Connection, settings: WorkerSettings) -> None:
        self._conn = connection
        self.settings = settings
        self.topology = Topology(settings.namespace)
        self.log = get_logger(worker=settings.name)
        self._handler = BatchHandler(
            connection,
            self.topology,
            JobCache(settings.cache_dir),
            self.log,
            settings.name,
            record_tries=settings.record_tries,
        )
        self._slots = [
            RunnerSlot(i, settings.name, settings.gpu_count) for i in range(settings.processes)
        ]
        self._prefetch = PrefetchTuner(settings.processes, settings.prefetch)
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._abandoning = False  # set when a drain runs out of time
        # Jobs whose run has ended (finished or stopped): their runners are stopped when their
        # slots go idle, and do not hold their slots back from other jobs meanwhile.
        self._ended_jobs: set[str] = set()
        self._failed = False  # set when the worker stops on an error rather than a request

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self) -> int:
        conn, topology = self._conn, self.topology
        conn.declare_queue(topology.batches)
        conn.declare_fanout(topology.control)
        control_queue = f"{topology.control}.{self.settings.name}.{uuid.uuid4().hex[:8]}"
        conn.declare_queue(control_queue, exclusive=True)
        conn.bind(control_queue, topology.control)
        control = conn.consume(control_queue, prefetch=50)
        conn.declare_fanout(topology.workers)
        batches = conn.consume(topology.batches, prefetch=self._prefetch.current)
        dispatcher = Dispatcher(batches)
        slot_threads = [
            threading.Thread(
                target=self._slot_loop,
                args=(slot, dispatcher),
                name=f"slot-{slot.index}",
                daemon=True,
            )
            for slot in self._slots
        ]
        helpers = [
            threading.Thread(
                target=self._control_loop, args=(control,), name="control", daemon=True
            ),
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
        ]
        for thread in [*slot_threads, *helpers]:
            thread.start()
        self._started.set()
        self.log.info(
            "Worker is serving jobs.",
            broker=conn.description,
            namespace=topology.namespace,
            runners=self.settings.processes,
            prefetch=self._prefetch.fixed
            or f"adaptive, {MIN_PER_RUNNER}-{MAX_PER_RUNNER} per runner",
        )
        while not self._stopping.wait(0.5):
            pass  # a timed wait, so signal handlers run promptly in the main thread
        self.log.info("Worker is draining: no new batches; finishing the ones it holds.")
        batches.cancel()
        deadline = time.monotonic() + self.settings.drain_timeout
        for thread in slot_threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in slot_threads):
            # The drain ran out of time: give the batches still running back, costing no try.
            self.log.warning("Drain timeout: handing back the batches still running.")
            self._abandoning = True
            for slot in self._slots:
                slot.discard()
            for thread in slot_threads:
                thread.join()
        for delivery in dispatcher.drain():
            self._handler.hand_back(batches, delivery)
        self._handler.wait_for_confirms()
        for slot in self._slots:
            slot.close()
        self._handler.tries.close()
        self.log.info("Worker stopped.")
        return 1 if self._failed else 0

    def wait_started(self, timeout: float | None = None) -> bool:
        return self._started.wait(timeout)

    def stop(self) -> None:
        """Drain: take no new batches, finish or hand back the held ones, then return from run()."""
        self._stopping.set()

    def kill_runners(self) -> None:
        """Stop now: kill every runner at once (their batches return to the queue)."""
        self._stopping.set()
        for slot in self._slots:
            slot.discard()
            if slot.spare is not None:
                slot.spare.kill()

    # -- threads -------------------------------------------------------------------------------

    def _control_loop(self, control: Consumer) -> None:
        while not self._stopping.is_set():
            delivery = control.get(timeout=0.5)
            if delivery is None:
                continue
            try:
                end = StopJob.from_bytes(delivery.body)
                self._handler.jobs.mark_stopped(end.job_id, end.run_id)
                # Only jobs some runner is bound to matter; the set stays small for ever.
                bound = {s.runner.job_id for s in self._slots if s.runner is not None}
                self._ended_jobs = (self._ended_jobs | {end.job_id}) & bound
                if not end.finished:
                    self.log.info(
                        "Job stopped; dropping its batches.", job_id=end.job_id, reason=end.reason
                    )
            except ValidationError:
                pass
            control.ack(delivery)

    def _live_job(self, slot: RunnerSlot) -> str | None:
        """The job the slot's runner serves, unless that job's run has ended."""
        job_id = slot.runner.job_id if slot.runner is not None else None
        return None if job_id in self._ended_jobs else job_id

    def _served_jobs(self) -> set[str]:
        return {job_id for s in self._slots if (job_id := self._live_job(s))}

    def _next_work(self, slot: RunnerSlot, dispatcher: Dispatcher, timeout: float) -> Work | None:
        """The next batch that needs a runner, staged; None if none came within ``timeout``."""
        while True:
            delivery = dispatcher.take(
                lambda: self._live_job(slot), self._served_jobs, timeout, self._stopping
            )
            if delivery is None:
                return None
            try:
                work = self._handler.triage(dispatcher.consumer, delivery)
            except Exception:
                # One batch (or one job) must never take the worker down.
                self.log.exception("Could not look at a batch; it goes back to the queue.")
                dispatcher.consumer.requeue(delivery)
                continue
            if work is not None:
                self._handler.stage(work, slot.index)
                return work

    def _set_prefetch(self, dispatcher: Dispatcher, prefetch: int | None) -> None:
        """Apply a new prefetch; when it shrank, hand back the held batches beyond it that no
        slot has taken (they cost no try), for other workers to take."""
        if prefetch is None:
            return
        try:
            dispatcher.consumer.set_prefetch(prefetch)
            surplus = dispatcher.surplus(keep=prefetch - len(self._slots))
            for delivery in surplus:
                self._handler.hand_back(dispatcher.consumer, delivery)
            self.log.debug("Prefetch changed.", prefetch=prefetch, handed_back=len(surplus))
        except Exception:  # a lost connection, say: the prefetch stays as it was
            self.log.exception("Could not change the prefetch.", prefetch=prefetch)

    def _heartbeat_loop(self) -> None:
        """Tell coordinators what this worker holds, for ``fleetrun status``."""
        host, _, pid = self.settings.name.rpartition(":")
        while not self._stopping.wait(HEARTBEAT_S):
            held = [s.holding for s in self._slots if s.holding is not None]
            status = WorkerStatus(
                worker=self.settings.name,
                host=host or socket.gethostname(),
                pid=int(pid) if pid.isdigit() else os.getpid(),
                runners=len(self._slots),
                held=held,
            )
            self._conn.publish("", status.to_bytes(), exchange=self.topology.workers)

    def _slot_loop(self, slot: RunnerSlot, dispatcher: Dispatcher) -> None:
        upcoming: Work | None = None
        while not self._stopping.is_set():
            try:
                work = upcoming or self._next_work(slot, dispatcher, timeout=0.5)
            except Exception as exc:
                self.log.error("Cannot take batches any more; stopping.", error=str(exc))
                self._failed = True
                self._stopping.set()
                return
            upcoming = None
            if work is None:
                if not self._stopping.is_set():
                    slot.idle(self.settings.idle_runner_timeout, self._live_job(slot) is None)
                    self._set_prefetch(dispatcher, self._prefetch.reset())
                continue
            self._ended_jobs.discard(work.job.job_id)  # a new run of it, or a late batch
            slot.holding = HeldBatch(
                job_id=work.job.job_id, batch=work.index, attempt=work.attempt, since=time.time()
            )
            try:
                if not self._handler.start(work):
                    continue
                outcome = slot.start_try(work)
                if outcome is None:
                    # Stage the next batch while run() works on this one.
                    if not self._stopping.is_set():
                        upcoming = self._next_work(slot, dispatcher, timeout=0)
                    outcome = slot.wait_try(work)
                    self._set_prefetch(dispatcher, self._prefetch.record(slot.last_try_s))
                if self._abandoning:
                    self._handler.hand_back(work.consumer, work.delivery)
                else:
                    self._handler.conclude(work, outcome)
            except Exception:
                self.log.exception("Unexpected error handling a batch; it goes back to the queue.")
                work.consumer.requeue(work.delivery)
            finally:
                slot.holding = None
                work.cleanup()
        if upcoming is not None:
            upcoming.cleanup()
            self._handler.hand_back(upcoming.consumer, upcoming.delivery)
