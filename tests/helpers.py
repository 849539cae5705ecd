"""Shared by the integration and chaos suites: a job folder, real fleetrun processes, cleanup.

Each test gets a :class:`Harness` on its own ``tmp_path``: input files in ``data/``, the entry
script and ``job.yaml`` in ``job/`` (so the code snapshot holds only the code), outputs in
``out/``, a worker cache in ``cache/`` and the processes' logs in ``logs/``. Every process it
starts carries ``FLEETRUN_TEST_TAG=<namespace>`` in its environment, and so do their runner
children, so the teardown can find and kill whatever a test left behind (by pid) and delete the
test's queues on RabbitMQ.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import yaml

DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1/%2F"

# The script most tests run: one line per file, "<file name> <file content>", so the expected
# output follows from the inputs and any reordering or duplicate shows.
LINE_PER_FILE = """\
import os


def run(mini_batch):
    return [f"{os.path.basename(p)} {open(p).read()}" for p in mini_batch]
"""


def content_of(i: int) -> str:
    """The content of input file ``i``: not sorted like the names, so order errors show."""
    return f"v{(i * 7919) % 10007}"


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- processes --------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next((line for line in status.splitlines() if line.startswith("State:")), "")
    return "Z" not in state.split()[1:2]


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (from every thread of it)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return [c for c in found if pid_alive(c)]


def descendants(pid: int) -> list[int]:
    result: list[int] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            result.append(child)
            todo.append(child)
    return result


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment holds ``FLEETRUN_TEST_TAG=<tag>``."""
    needle = f"FLEETRUN_TEST_TAG={tag}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# -- RabbitMQ ---------------------------------------------------------------------------------


def delete_broker_objects(url: str, queues: Sequence[str], exchanges: Sequence[str]) -> None:
    """Delete a test's queues and exchanges (each on its own channel: a failure closes one)."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    try:
        connection = pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError):
        return
    try:
        for queue in queues:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.channel().queue_delete(queue)
        for exchange in exchanges:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.channel().exchange_delete(exchange)
    finally:
        connection.close()


def queue_depth(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (passive declare), or -1 when it does not exist."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    connection = pika.BlockingConnection(params)
    try:
        frame = connection.channel().queue_declare(queue, passive=True)
        return int(frame.method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return -1
    finally:
        connection.close()


# -- the harness ------------------------------------------------------------------------------


class Harness:
    """One test's job folder, inputs, outputs, processes and broker namespace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.namespace = f"test-{uuid.uuid4().hex[:8]}"
        self.data_dir = root / "data"
        self.job_dir = root / "job"
        self.out_dir = root / "out"
        self.cache_dir = root / "cache"
        self.logs_dir = root / "logs"
        for folder in (self.data_dir, self.job_dir, self.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.job_file = self.job_dir / "job.yaml"
        self.inputs: list[Path] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.broker_urls: set[str] = set()
        self.job_ids: set[str] = set()

    # -- inputs and the job --------------------------------------------------------------------

    def make_inputs(self, count: int, content: Callable[[int], str] = content_of) -> list[Path]:
        """``data/00000.txt`` ... with ``content(i)`` in each."""
        for i in range(count):
            path = self.data_dir / f"{i:05d}.txt"
            path.write_text(content(i))
            self.inputs.append(path)
        self.inputs.sort()
        return self.inputs

    def write_job(
        self,
        script: str,
        *,
        files: dict[str, str] | None = None,
        **spec: Any,
    ) -> Path:
        """``job/score.py`` holding ``script`` (plus ``files``) and ``job/job.yaml``."""
        (self.job_dir / "score.py").write_text(script)
        for name, text in (files or {}).items():
            (self.job_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (self.job_dir / name).write_text(text)
        raw: dict[str, Any] = {
            "name": "itest",
            "inputs": str(self.data_dir),
            "output": str(self.out_dir),
            "entry_script": "score.py",
        }
        raw.update(spec)
        self.job_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        return self.job_file

    def batches(self, size: int) -> list[list[str]]:
        paths = [str(p) for p in sorted(self.inputs)]
        return [paths[i : i + size] for i in range(0, len(paths), size)]

    def expected_lines(self) -> list[str]:
        """What ``LINE_PER_FILE`` gives for every input, in input order."""
        return [f"{p.name} {p.read_text()}" for p in sorted(self.inputs)]

    def sequential_run(self, batch_size: int) -> list[str]:
        """The script's ``init()`` once and ``run()`` over the batches in order, in-process."""
        module_name = f"sequential_{uuid.uuid4().hex[:8]}"
        spec = importlib.util.spec_from_file_location(module_name, self.job_dir / "score.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if callable(getattr(module, "init", None)):
            module.init()
        lines: list[str] = []
        for batch in self.batches(batch_size):
            result = module.run(batch)
            if isinstance(result, dict):
                lines += [str(result[item]) for item in batch if item in result]
            else:
                lines += [str(element) for element in result][: len(batch)]
        return lines

    # -- processes -----------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("FLEETRUN_BROKER", "FLEETRUN_NAMESPACE")
        }
        env["FLEETRUN_CACHE_DIR"] = str(self.cache_dir)
        env["FLEETRUN_TEST_TAG"] = self.namespace
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def run_args(
        self, *args: str, broker: str | None = None, sets: dict[str, Any] | None = None
    ) -> list[str]:
        command = [sys.executable, "-m", "fleetrun", "run", str(self.job_file), "--quiet"]
        if broker:
            self.broker_urls.add(broker)
            command += ["--broker", broker, "--namespace", self.namespace]
        for key, value in (sets or {}).items():
            command += ["--set", f"{key}={value}"]
        return command + list(args)

    def run(
        self,
        *args: str,
        broker: str | None = None,
        sets: dict[str, Any] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """``fleetrun run job.yaml --quiet ...`` to its end."""
        result = subprocess.run(
            self.run_args(*args, broker=broker, sets=sets),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self._remember_job_id()
        return result

    def start_run(
        self, *args: str, broker: str | None = None, sets: dict[str, Any] | None = None
    ) -> subprocess.Popen[bytes]:
        """``fleetrun run`` in the background (output in ``logs/run-<n>.log``)."""
        return self._spawn("run", self.run_args(*args, broker=broker, sets=sets))

    def start_worker(
        self,
        broker: str,
        *,
        processes: int = 2,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A ``fleetrun worker`` daemon in this test's namespace (output in ``logs/``), with
        ``env`` added to its environment (and so to its runners')."""
        self.broker_urls.add(broker)
        command = [
            sys.executable,
            "-m",
            "fleetrun",
            "worker",
            "--broker",
            broker,
            "--namespace",
            self.namespace,
            "--processes",
            str(processes),
            "--cache-dir",
            str(self.cache_dir),
            *extra,
        ]
        return self._spawn("worker", command, env)

    def _spawn(
        self, kind: str, command: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.logs_dir / f"{kind}-{len(self.processes)}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                command, env=self.env(**(env or {})), stdout=handle, stderr=subprocess.STDOUT
            )
        process.log_path = log  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    @staticmethod
    def log_of(process: subprocess.Popen[bytes]) -> str:
        path: Path = process.log_path  # type: ignore[attr-defined]
        return path.read_text(errors="replace")

    def wait_ready(self, worker: subprocess.Popen[bytes], timeout: float = 30) -> None:
        """Until the worker says it serves jobs (its consumers are on the queue)."""

        def ready() -> bool:
            if worker.poll() is not None:
                pytest.fail(f"the worker exited with {worker.returncode}:\n{self.log_of(worker)}")
            return "Worker is serving jobs" in self.log_of(worker)

        wait_for(ready, timeout, "the worker to start")

    def runner_pids(self, worker: subprocess.Popen[bytes]) -> list[int]:
        """The runner processes of a worker daemon (its children running fleetrun's runner)."""
        pids = []
        for pid in children(worker.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"fleetrun.worker.runner" in cmdline:
                pids.append(pid)
        return pids

    # -- outputs -------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out_dir / "summary.json").read_text())
        return data

    def output_lines(self, name: str = "parallel_run_step.txt") -> list[str]:
        return (self.out_dir / name).read_text().splitlines()

    def errors(self) -> list[dict[str, Any]]:
        text = (self.out_dir / "errors.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def failed_items(self) -> list[str]:
        return (self.out_dir / "failed_items.txt").read_text().splitlines()

    def parts(self) -> list[Path]:
        return sorted((self.out_dir / "_fleetrun" / "parts").glob("*.part"))

    def effective_spec(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out_dir / "_fleetrun" / "spec.json").read_text())
        return data

    def _remember_job_id(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            self.job_ids.add(self.effective_spec()["job_id"])

    # -- teardown ------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Kill every process the test left (by pid), then delete its queues."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for _ in range(3):
            pids = tagged_pids(self.namespace)
            if not pids:
                break
            for pid in pids:
                kill_pid(pid)
            time.sleep(0.1)
        self._remember_job_id()
        ns = self.namespace
        queues = [f"{ns}.batches", f"{ns}.jobs"]
        queues += [f"{ns}.results.{job_id}" for job_id in self.job_ids]
        exchanges = [f"{ns}.control", f"{ns}.workers", f"{ns}.rpc"]
        for url in self.broker_urls:
            delete_broker_objects(url, queues, exchanges)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """A job folder, inputs, fleetrun processes and a broker namespace, cleaned up after."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


# -- cloud storage (the emulators of tests/emulators.py) ----------------------------------------


def put_objects(fs: Any, base_uri: str, files: dict[str, str]) -> list[str]:
    """Upload ``files`` (key under ``base_uri`` → text) with ``fs``; their URIs, sorted."""
    data = {f"{base_uri.rstrip('/')}/{key}": text.encode() for key, text in files.items()}
    fs.pipe(data, batch_size=16)  # the emulators slow down under many requests at once
    return sorted(data)


def object_uris(fs: Any, folder_uri: str) -> list[str]:
    """Every object below ``folder_uri``, as URIs of its protocol, sorted; [] when none."""
    protocol = folder_uri.split("://", 1)[0]
    try:
        names = fs.find(folder_uri)
    except FileNotFoundError:
        return []
    return sorted(f"{protocol}://{name}" for name in names)


def object_text(fs: Any, uri: str) -> str:
    """The text of one object (read fresh: the tests' filesystems have no listing cache)."""
    return bytes(fs.cat_file(uri)).decode()


# -- tabular inputs (tests/integration/test_tabular_*.py) ----------------------------------------

# Every input row, unchanged, plus the index of the mini-batch that read it: the output then
# shows both that the rows are exact and how they were batched.
ROWS_WITH_BATCH = """\
def run(df, ctx):
    out = df.copy()
    out["batch"] = ctx.minibatch_index
    return out
"""


def tricky_frame(rows: int, start: int = 0) -> Any:
    """``rows`` rows that a careless CSV split would break: text with commas, doubled quotes,
    spaces and non-ASCII; a float and an int column; ``row`` numbers them from ``start``."""
    import pandas as pd

    texts = ["comma, inside", 'a "quoted" word', "plain", "naïve café", " padded ", 'x,"y",z']
    return pd.DataFrame(
        {
            "row": range(start, start + rows),
            "text": [f"{texts[i % len(texts)]} {i}" for i in range(start, start + rows)],
            "value": [round(i * 0.25 - 3.5, 2) for i in range(start, start + rows)],
            "count": [(i * 7919) % 1009 for i in range(start, start + rows)],
        }
    )


def read_table(data: bytes | Path, fmt: str) -> Any:
    """A typed output file (``csv``, ``jsonl`` or ``parquet``) as a DataFrame."""
    import io

    import pandas as pd

    source: Any = io.BytesIO(data) if isinstance(data, bytes) else data
    if fmt == "csv":
        return pd.read_csv(source)
    if fmt == "jsonl":  # precise_float: pandas' fast float parser may be off by an ulp
        return pd.read_json(source, lines=True, precise_float=True)
    return pd.read_parquet(source)


def assert_same_rows(actual: Any, expected: Any, *, check_dtype: bool = True) -> None:
    """The same columns and rows, in the same order (indexes ignored), exactly."""
    import pandas as pd

    assert len(actual) == len(expected), f"{len(actual)} rows, expected {len(expected)}"
    assert list(actual.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(
        actual.reset_index(drop=True),
        expected.reset_index(drop=True),
        check_dtype=check_dtype,
        check_exact=True,
    )


# -- the examples, run as their READMEs say ---------------------------------------------------


def copy_example(examples_dir: Path, name: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """``examples/<name>`` copied without data or outputs, and the environment to run it in."""
    job_dir = tmp_path / name
    shutil.copytree(
        examples_dir / name,
        job_dir,
        ignore=shutil.ignore_patterns("data", "out", "labels.csv", "__pycache__"),
    )
    return job_dir, {**os.environ, "FLEETRUN_CACHE_DIR": str(tmp_path / "cache")}


def run_python(
    *args: str, env: dict[str, str], timeout: float = 150
) -> subprocess.CompletedProcess[str]:
    """``python <args>`` with this interpreter, its output captured."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
