"""The supervisor's handle on one runner child process: start, send a batch, wait, kill.

A try ends in one of four ways: ``done``, ``failed`` (``run()`` or ``init()`` raised),
``timeout`` (the runner is killed, with everything it started) or ``died`` (the runner exited
on its own: ``os._exit``, a signal, the OOM killer).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from fleetrun.common.messages import ErrorInfo


@dataclass
class TryResult:
    kind: str  # "done" | "failed" | "timeout" | "died"
    # "done": the batch's result (its part's header) as the runner encoded it; the worker
    # passes it on as it is, and the coordinator reads it.
    result: bytes | None = None
    error: ErrorInfo | None = None


def _signal_name(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
    return f"was killed by {name}{hint}"


class RunnerProcess:
    """One runner child. Started ahead of need (the interpreter and fleetrun load while the
    worker waits for a batch), then bound by :meth:`start` to one job for the rest of its life."""

    def __init__(self) -> None:
        self.job_id: str | None = None
        self._setup: dict[str, Any] = {}
        parent, child = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleetrun.worker.runner", str(child.fileno())],
            pass_fds=(child.fileno(),),
            # Its own process group, so a timeout kills whatever user code started too.
            start_new_session=True,
        )
        child.close()
        self._conn = Connection(parent.detach())
        self.ready = False
        self._task: dict[str, Any] = {}
        self._close_lock = threading.Lock()
        self._sent_at = 0.0
        self._reported_s: float | None = None  # what the runner said the last batch took

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, job_id: str, setup: Mapping[str, Any], timeout: float) -> TryResult:
        """Bind the runner to a job (its setup holds the job's environment variables and
        folder) and wait for ``init()`` to finish."""
        self.job_id = job_id
        self._setup = dict(setup)
        with contextlib.suppress(OSError):  # it died while waiting; _wait reports how
            self._conn.send(("init", self._setup))
        outcome = self._wait(timeout, batch=-1, attempt=0, items=[], what="init()")
        if outcome.kind == "ready":
            self.ready = True
        return outcome

    def send(self, task: Mapping[str, Any]) -> None:
        """Hand a batch to the runner; :meth:`wait` collects the outcome."""
        self._task = dict(task)
        self._sent_at = time.monotonic()
        self._reported_s = None
        with contextlib.suppress(OSError):  # it died between batches; wait() reports how
            self._conn.send(("run", self._task))

    def batch_seconds(self) -> float:
        """How long the last batch took in the runner (as it reported; else, for a batch that
        timed out or killed the runner, since it was sent)."""
        if self._reported_s is not None:
            return self._reported_s
        return time.monotonic() - self._sent_at

    def wait(self, timeout: float) -> TryResult:
        """The outcome of the batch sent last, waiting until ``timeout`` s after it was sent."""
        task = self._task
        remaining = max(0.0, timeout - (time.monotonic() - self._sent_at))
        return self._wait(
            remaining, task["index"], task["attempt"], task["items"], "run()", limit=timeout
        )

    def run(self, task: Mapping[str, Any], timeout: float) -> TryResult:
        self.send(task)
        return self.wait(timeout)

    def _wait(
        self,
        timeout: float,
        batch: int,
        attempt: int,
        items: list[str],
        what: str,
        limit: float | None = None,
    ) -> TryResult:
        def error(kind: str, type_: str, message: str) -> ErrorInfo:
            return ErrorInfo(
                batch=batch,
                attempt=attempt,
                items=items,
                kind=kind,
                type=type_,
                message=message,
                pid=self.pid,
            )

        try:
            ready = self._conn.poll(timeout)
        except (OSError, EOFError):
            ready = True
        if not ready:
            self.kill()
            return TryResult(
                "timeout",
                error=error(
                    "timeout",
                    "Timeout",
                    f"{what} ran past its time limit ({limit or timeout:g} s); the runner was "
                    "killed. Raise run_invocation_timeout or make the batches smaller.",
                ),
            )
        try:
            kind, payload, *seconds = self._conn.recv()
        except (EOFError, OSError):
            code = self._reap()
            return TryResult(
                "died",
                error=error(
                    "runner_died",
                    "RunnerDied",
                    f"the runner process (pid {self.pid}) {_signal_name(code)} during {what}",
                ),
            )
        if seconds:
            self._reported_s = seconds[0]
        if kind == "done":
            return TryResult("done", result=payload)
        if kind == "failed":
            info = ErrorInfo.model_validate(payload)
            if batch >= 0 or info.batch < 0:
                info = info.model_copy(update={"batch": batch, "attempt": attempt, "items": items})
            return TryResult("failed", error=info)
        return TryResult(kind)

    def _reap(self, grace: float = 5.0) -> int:
        try:
            return self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """Ask for ``shutdown()`` and exit; kill the runner if it does not go in time."""
        if self.alive() and self.ready:
            try:
                self._conn.send(("stop", None))
                if self._conn.poll(grace):
                    self._conn.recv()
            except (OSError, EOFError):
                pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace)
        self.kill()

    def kill(self) -> None:
        """Kill the runner and everything it started; safe to call twice, from two threads
        (a slot giving up on its runner while a second signal stops the worker)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        with self._close_lock, contextlib.suppress(OSError):
            if not self._conn.closed:
                self._conn.close()
