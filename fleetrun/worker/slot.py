"""A runner slot: one runner process at a time, bound to one job, replaced when it breaks.

The slot starts a runner for the job of the batch at hand (``init()`` runs there), keeps it
for the job's next batches, replaces it after a timeout or a crash, and swaps it when a batch
of another job comes. A slot index is stable, so a replacement runner gets its predecessor's
GPU.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fleetrun.common import storage
from fleetrun.common.messages import ErrorInfo
from fleetrun.common.parts import part_uri
from fleetrun.common.status import HeldBatch
from fleetrun.worker.jobs import LoadedJob
from fleetrun.worker.runner_process import RunnerProcess, TryResult
from fleetrun.worker.work import Work


def init_timeout(run_invocation_timeout: float) -> float:
    """How long ``init()`` may take: ParallelRunStep's rule."""
    return 3 * run_invocation_timeout + 30


class RunnerSlot:
    def __init__(self, index: int, worker_name: str, gpu_count: int = 0) -> None:
        self.index = index
        self.worker_name = worker_name
        self.gpu_count = gpu_count
        self.runner: RunnerProcess | None = None
        self.last_used = time.monotonic()
        self.holding: HeldBatch | None = None  # the batch being run, for heartbeats
        self.last_try_s = 0.0  # how long the runner took over the last batch it was sent
        # A runner started ahead of need, so the first batch of a job (or a replacement) does
        # not wait for an interpreter to start and import fleetrun. Taken by a job, it is
        # replaced once the slot is idle (see :meth:`idle`), never while batches wait for CPU.
        self.spare: RunnerProcess | None = RunnerProcess()

    def start_try(self, work: Work) -> TryResult | None:
        """Send the batch to a ready runner; a TryResult if the try failed before that."""
        if work.staging_error is not None:
            return TryResult("failed", error=work.staging_error)
        if work.job.script_error:
            # Loading failed before on this worker; it would fail again the same way.
            return TryResult(
                "failed",
                error=ErrorInfo(
                    batch=work.index,
                    attempt=work.attempt,
                    items=work.items,
                    kind="script_invalid",
                    type="EntryScriptError",
                    message=f"the entry script cannot be loaded: {work.job.script_error}",
                ),
            )
        failed_init = self._ensure_runner(work)
        if failed_init is not None:
            return failed_init
        assert self.runner is not None
        self.runner.send(self._task(work))
        return None

    def wait_try(self, work: Work) -> TryResult:
        assert self.runner is not None
        outcome = self.runner.wait(work.job.spec.run_invocation_timeout)
        self.last_try_s = self.runner.batch_seconds()
        if outcome.kind in ("timeout", "died"):
            self.discard()
        self.last_used = time.monotonic()
        return outcome

    def _ensure_runner(self, work: Work) -> TryResult | None:
        job = work.job
        runner = self.runner
        if runner is not None and (runner.job_id != job.job_id or not runner.alive()):
            self.stop()
            runner = None
        if runner is not None:
            return None
        spare, self.spare = self.spare, None
        runner = self.runner = spare if spare is not None and spare.alive() else RunnerProcess()
        started = runner.start(
            job.job_id, self._setup(job), timeout=init_timeout(job.spec.run_invocation_timeout)
        )
        if started.kind == "ready":
            return None
        self.discard()
        if started.error is not None and started.error.kind == "script_invalid":
            work.job.script_error = f"{started.error.type}: {started.error.message}"
        error = started.error or ErrorInfo(
            batch=work.index,
            attempt=work.attempt,
            items=work.items,
            kind="init_failed",
            type="InitFailed",
            message=f"the runner ended during init(): {started.kind}",
        )
        # init() fails the try of the batch that needed it.
        return TryResult(
            "failed",
            error=error.model_copy(
                update={
                    "batch": work.index,
                    "attempt": work.attempt,
                    "items": work.items,
                    "kind": error.kind if error.kind == "script_invalid" else "init_failed",
                    "message": (
                        f"the entry script cannot be loaded: {error.type}: {error.message}"
                        if error.kind == "script_invalid"
                        else f"init() failed: {error.message}"
                    ),
                }
            ),
        )

    def _task(self, work: Work) -> dict[str, Any]:
        assert work.staged is not None
        return {
            "job_id": work.job.job_id,
            "run_id": work.message.run_id,
            "index": work.index,
            "attempt": work.attempt,
            "items": work.items,
            "local_paths": work.staged.local_paths,
            "part_uri": part_uri(work.job.state_uri, work.index),
            "slice": work.message.slice.model_dump() if work.message.slice else None,
        }

    def _env(self, job: LoadedJob) -> dict[str, str]:
        """What the runner adds to its environment for this job."""
        env = dict(job.spec.environment_variables)
        env["FLEETRUN_JOB_ID"] = job.job_id
        if self.gpu_count:
            # One GPU per runner, as ParallelRunStep does; a replacement keeps its slot's GPU.
            env["CUDA_VISIBLE_DEVICES"] = str(self.index % self.gpu_count)
        return env

    def _setup(self, job: LoadedJob) -> dict[str, Any]:
        spec = job.spec
        output_dir = (
            Path(storage.local_path(spec.output))
            if storage.is_local(spec.output)
            # Unique per runner process: workers on one machine may share the cache folder.
            else job.work_dir / "output" / f"{os.getpid()}-{self.index}"
        )
        return {
            "job_id": job.job_id,
            "env": self._env(job),
            "cwd": str(job.code_dir),
            "code_dir": str(job.code_dir),
            "entry_script": spec.entry_script,
            "arguments": job.arguments,
            "output_dir": str(output_dir),
            "output_uri": spec.output,
            "logging_level": spec.logging_level,
            "storage_options": spec.storage_options,
            "keep_columns": spec.keep_columns,
            # Parts of a summary_only job hold no rows: nothing will read them.
            "output_format": spec.append_row_format
            if spec.output_action == "append_row"
            else "none",
            "worker": self.worker_name,
            # The script's own logging goes to a file per runner; warnings also to the console.
            "log_file": str(job.work_dir / "logs" / f"runner-{self.index}.jsonl"),
        }

    def idle(self, idle_timeout: float, job_ended: bool) -> None:
        """No batch came for a while: stop the runner if its job has ended (its ``shutdown()``
        runs now, not when the next job comes) or it has been idle for ``idle_timeout``; and
        have a spare runner ready for the next job."""
        if self.runner is not None and (
            job_ended or time.monotonic() - self.last_used > idle_timeout
        ):
            self.stop()
        if self.spare is None or not self.spare.alive():
            self.spare = RunnerProcess()

    def stop(self) -> None:
        """Stop the runner cleanly (its ``shutdown()`` runs)."""
        if self.runner is not None:
            self.runner.stop()
            self.runner = None

    def discard(self) -> None:
        """Kill the runner, with everything it started."""
        if self.runner is not None:
            self.runner.kill()
            self.runner = None

    def close(self) -> None:
        """Stop the runner cleanly and the spare at once: the worker is going away."""
        self.stop()
        if self.spare is not None:
            self.spare.kill()
            self.spare = None
