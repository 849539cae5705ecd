"""The runner: a child process that hosts the user's entry script for one job.

It is started by the supervisor (:mod:`fleetrun.worker.runner_process`) with one end of a
socket pair, runs ``init()`` once, then ``run()`` once per batch it is sent. It writes each
batch's result part itself, so result rows never cross the pipe. Being a separate process is
what lets the supervisor kill it at ``run_invocation_timeout`` while the broker connection's
heartbeats go on, and what keeps a crash in user code (``os._exit``, a segfault, the OOM
killer) from taking the worker down.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetrun import context
from fleetrun.common import storage
from fleetrun.common.logging import configure
from fleetrun.common.output_formats import encode
from fleetrun.worker import entry_script

if TYPE_CHECKING:
    from fleetrun.common.messages import ErrorInfo
    from fleetrun.common.slices import TableSlice

# Imported on a side thread while the runner waits for its job (see main()), and by name where
# they are used: structlog, pydantic and the message models are two thirds of a runner's
# start-up (~100 ms), which a job's first batch would otherwise wait for.
_LATER = (
    "structlog",
    "fleetrun.common.messages",
    "fleetrun.common.parts",
    "fleetrun.worker.tabular",
)


def _import_later() -> None:
    for name in _LATER:
        importlib.import_module(name)


def error_info(
    kind: str, exc: BaseException, batch: int, attempt: int, items: list[str]
) -> ErrorInfo:
    from fleetrun.common.messages import ErrorInfo

    return ErrorInfo(
        batch=batch,
        attempt=attempt,
        items=items,
        kind=kind,
        type=type(exc).__name__,
        message=str(exc) or type(exc).__name__,
        traceback="".join(traceback.format_exception(exc)),
    )


class Runner:
    def __init__(self, setup: dict[str, Any]) -> None:
        self.setup = setup
        self.options = setup["storage_options"]
        self.module: Any = None
        self.with_context = False
        self.rows: int | None = None  # the rows of the current tabular batch, once read
        self.piece: TableSlice | None = None  # the current batch's slice, for tabular jobs

    def load(self) -> None:
        """Import the entry script: a failure here will fail every try the same way."""
        setup = self.setup
        code_dir = Path(setup["code_dir"])
        sys.argv = [setup["entry_script"], *setup["arguments"]]
        output_dir = Path(setup["output_dir"])
        output_dir.mkdir(parents=True, exist_ok=True)
        context._set(job_id=setup["job_id"], output_dir=output_dir, worker=setup["worker"])
        self.module = entry_script.load(code_dir / setup["entry_script"], code_dir)
        self.with_context = entry_script.takes_context(self.module.run)

    def init(self) -> None:
        init = getattr(self.module, "init", None)
        if callable(init):
            init()

    def run(self, task: dict[str, Any]) -> bytes:
        """Run one batch and write its part; the part's header (the batch's result), as JSON."""
        from fleetrun.common.messages import BatchResult, ErrorInfo
        from fleetrun.common.parts import write_first
        from fleetrun.common.slices import TableSlice
        from fleetrun.worker import tabular

        index, attempt, items = task["index"], task["attempt"], task["items"]
        piece = TableSlice.model_validate(task["slice"]) if task.get("slice") else None
        self.piece = piece
        context._set(minibatch_index=index, attempt=attempt)
        batch_context = entry_script.MiniBatchContext(index, piece.partition if piece else {})
        frame = None
        if piece is not None:
            frame = tabular.load_frame(piece, task["local_paths"], self.options)
            self.rows = len(frame)
            mini_batch: Any = frame
        else:
            mini_batch = task["local_paths"]
        result = (
            self.module.run(mini_batch, batch_context)
            if self.with_context
            else self.module.run(mini_batch)
        )
        if isinstance(result, dict) and piece is None:
            # The script sees local paths; results and failures are reported by input URI.
            by_local = dict(zip(mini_batch, items, strict=True))
            result = {by_local.get(k, k): v for k, v in result.items()}
        outcome = entry_script.interpret(result, items, frame, self.setup["keep_columns"])
        if outcome.warning:
            context.logger.warning(outcome.warning)
        self._upload_output_dir()
        total = len(frame) if frame is not None else len(items)
        error = None
        if outcome.shortfall or outcome.failed_items:
            error = ErrorInfo(
                batch=index,
                attempt=attempt,
                items=outcome.failed_items or ([piece.describe()] if piece else []),
                kind="short_return",
                type="ShortReturn",
                message=f"run() returned {outcome.succeeded} of {total}",
                rows=total if piece else None,
            )
        fmt = self.setup["output_format"]
        body, columns = (b"", []) if fmt == "none" else encode(outcome, fmt)
        if not outcome.succeeded:
            columns = []  # no rows: nothing for the output file's columns to agree with
        header = BatchResult(
            job_id=task["job_id"],
            run_id=task["run_id"],
            index=index,
            status="succeeded",
            items=total,
            succeeded=outcome.succeeded,
            failed=total - outcome.succeeded,
            attempt=attempt,
            failed_items=outcome.failed_items,
            error=error,
            columns=columns,
        )
        # If another try of this batch finished first, its result stands.
        return write_first(task["part_uri"], header.to_bytes(), body, self.options)

    def _upload_output_dir(self) -> None:
        output_uri = self.setup["output_uri"]
        if storage.is_local(output_uri):
            return  # output_dir is the output folder itself
        local = Path(self.setup["output_dir"])
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            relative = path.relative_to(local).as_posix()
            storage.write_bytes(storage.join(output_uri, relative), path.read_bytes(), self.options)
            path.unlink()

    def shutdown(self) -> None:
        shutdown = getattr(self.module, "shutdown", None)
        if callable(shutdown):
            shutdown()
            self._upload_output_dir()  # what shutdown() wrote reaches the output too


def serve(conn: Connection) -> None:
    kind, setup = conn.recv()
    assert kind == "init"
    # Started before its job was known: the job's environment and folder come with the setup.
    os.environ.update(setup["env"])
    os.chdir(setup["cwd"])
    configure(setup["logging_level"], json=True, log_file=setup["log_file"])
    runner = Runner(setup)
    for step, kind in ((runner.load, "script_invalid"), (runner.init, "init_failed")):
        try:
            step()
        except BaseException as exc:
            conn.send(("failed", error_info(kind, exc, -1, 0, []).model_dump()))
            return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return  # the supervisor is gone
        if message[0] == "stop":
            try:
                runner.shutdown()
            finally:
                conn.send(("bye", None))
            return
        task = message[1]
        runner.rows, runner.piece = None, None
        started = time.perf_counter()
        try:
            header = runner.run(task)
        except BaseException as exc:
            items = [runner.piece.describe()] if runner.piece is not None else task["items"]
            info = error_info("exception", exc, task["index"], task["attempt"], items)
            info.rows = runner.rows  # a tabular batch's rows, if they were read
            conn.send(("failed", info.model_dump(), time.perf_counter() - started))
            continue
        # With the time run() and the part took, which sets the worker's prefetch.
        conn.send(("done", header, time.perf_counter() - started))
        storage.prepare_new_file(task["part_uri"])  # while the next batch is on its way


def main() -> None:
    fd = int(sys.argv[1])
    conn = Connection(fd)
    threading.Thread(target=_import_later, name="import-later", daemon=True).start()
    # User code printing to stdout must not mix with anything of ours; it goes to the
    # worker's own stdout, as ParallelRunStep's does to its logs.
    try:
        serve(conn)
    finally:
        conn.close()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: user threads must not keep a runner alive


if __name__ == "__main__":
    main()
