"""What the benchmarks share: scratch files, a worker subprocess, CPU accounting, tables, results.

The machine is shared and noisy, so every benchmark measures its baseline in the same run,
interleaves the sides round by round and reports medians; :class:`CpuMeter` records how much of
the box other processes took during each timed run, so a slow run can be told from a busy box.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from fleetrun.common.messages import Topology

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = Path(__file__).resolve().with_name("results.jsonl")
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"
NOOP_SCRIPT = """\
import os


def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


def default_broker() -> str:
    return os.environ.get("FLEETRUN_BROKER") or os.environ.get(
        "FLEETRUN_TEST_BROKER", DEFAULT_BROKER
    )


@contextlib.contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block, then as it was."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def make_inputs(folder: Path, count: int) -> list[Path]:
    """``count`` empty files named so that their lexicographic order is their number order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"f{i:07d}.txt" for i in range(count)]
    for path in paths:
        path.touch()
    return paths


def write_job_folder(folder: Path, script: str, name: str = "score.py") -> Path:
    """A folder holding only the entry script: the job's source_directory (and code snapshot)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(script)
    return folder


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def first_part_finished(output: Path) -> float | None:
    """When the first mini-batch finished: the oldest result part's modification time."""
    parts = output / "_fleetrun" / "parts"
    times = [entry.stat().st_mtime for entry in os.scandir(parts)] if parts.is_dir() else []
    return min(times) if times else None


def timeline(output: Path, batches: int, called: float, returned: float) -> dict[str, Any]:
    """Where the wall time of one ``fleetrun.run`` call went, from the files the job wrote.

    ``called`` and ``returned`` are ``time.time()`` around the call. The first result part's
    mtime marks the first mini-batch done; ``summary.json``'s mtime marks the job done (it is
    the last file the coordinator writes). So: ``to_first_s`` (planning, runner start-up,
    ``init()`` and one batch), ``after_first_s`` (the steady state, and its rate) and
    ``teardown_s`` (from the summary written to the call returning).
    """
    first = first_part_finished(output)
    done = (output / "summary.json").stat().st_mtime
    if first is None:
        return {"teardown_s": returned - done}
    after = done - first
    return {
        "to_first_s": first - called,
        "after_first_s": after,
        "batches_per_s_after_first": (batches - 1) / after if after > 0 else None,
        "teardown_s": returned - done,
    }


def check_lines(path: Path, expected: Sequence[str]) -> str:
    """``"ok"`` when the file holds exactly ``expected``, one per line, else what differs."""
    lines = path.read_text().splitlines()
    if lines == list(expected):
        return "ok"
    if len(lines) != len(expected):
        return f"{len(lines)} lines, expected {len(expected)}"
    first = next(i for i, (a, b) in enumerate(zip(lines, expected, strict=True)) if a != b)
    return f"line {first + 1} is {lines[first]!r}, expected {expected[first]!r}"


# -- processes and the broker ------------------------------------------------------------------


class FleetrunWorker:
    """``fleetrun worker`` as a subprocess, stopped with SIGTERM (a drain) at the end."""

    def __init__(
        self,
        broker: str,
        namespace: str,
        processes: int,
        cache_dir: Path,
        log_file: Path,
        prefetch: int = 0,
    ) -> None:
        self.log_file = log_file
        command = [
            sys.executable,
            "-m",
            "fleetrun",
            "worker",
            "--broker",
            broker,
            "--processes",
            str(processes),
            "--namespace",
            namespace,
            "--cache-dir",
            str(cache_dir),
            "--log-level",
            "WARNING",
        ]
        if prefetch:
            command += ["--prefetch", str(prefetch)]
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    @classmethod
    def warmed(
        cls,
        broker: str,
        namespace: str,
        processes: int,
        root: Path,
        prefetch: int,
        spec_for: Callable[[Path, Path], Any],
        warm_inputs: int,
    ) -> tuple[FleetrunWorker, str]:
        """A worker that has run one small job (``spec_for(output, inputs)``) before any
        timing; and that job's id, for the clean-up."""
        import fleetrun

        worker = cls(
            broker,
            namespace,
            processes,
            root / "worker-cache",
            root / "logs" / "fleetrun-worker.log",
            prefetch=prefetch,
        )
        warm_data = root / "warm"
        make_inputs(warm_data, warm_inputs)
        warm = fleetrun.run(
            spec_for(root / "out" / "warm", warm_data), broker=broker, namespace=namespace
        )
        return worker, warm.job_id

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 60.0) -> int:
        return stop_process(self.process, timeout)

    def stop_and_report(self) -> None:
        """Stop (a drain); say so if the worker did not exit cleanly."""
        code = self.stop()
        if code != 0:
            print(f"warning: fleetrun worker exited with {code}; see {self.log_file}")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM, wait, and SIGKILL only if it does not go in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def delete_broker_objects(
    broker: str, queues: Iterable[str] = (), exchanges: Iterable[str] = ()
) -> None:
    """Delete what a run declared on the shared broker; missing ones are fine."""
    params = pika.URLParameters(broker)
    params.connection_attempts = 1
    params.socket_timeout = 5
    try:
        connection = pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError) as exc:
        print(f"warning: could not clean up the broker ({exc!r})", file=sys.stderr)
        return
    try:
        for name in queues:
            channel = connection.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                channel.queue_delete(name)
                channel.close()
        for name in exchanges:
            channel = connection.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                channel.exchange_delete(name)
                channel.close()
    finally:
        connection.close()


def delete_namespace(broker: str, namespace: str, job_ids: Iterable[str] = ()) -> None:
    """Delete every queue and exchange fleetrun declares under ``namespace``.

    The names come from :class:`Topology` itself (each of its names is tried as a queue and as
    an exchange; deleting what does not exist is fine), so new ones are cleaned up too.
    """
    topology = Topology(namespace)
    names = [
        getattr(topology, name)
        for name, value in vars(Topology).items()
        if isinstance(value, property)
    ]
    results = [topology.results(job_id) for job_id in job_ids]
    delete_broker_objects(broker, queues=names + results, exchanges=names)


def broker_answers(broker: str) -> bool:
    params = pika.URLParameters(broker)
    params.connection_attempts = 1
    params.socket_timeout = 3
    try:
        pika.BlockingConnection(params).close()
    except (pika.exceptions.AMQPError, OSError):
        return False
    return True


# -- CPU accounting ----------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")
_BROKER_COMMANDS = {"beam.smp", "erl_child_setup", "epmd", "inet_gethost"}


def _processes() -> dict[int, tuple[int, str, float]]:
    """Every process: its parent, its command name, and the CPU seconds it and its reaped
    children have used so far (what a process reaps is counted with it, so runners that come
    and go within a run are not lost)."""
    found: dict[int, tuple[int, str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        cpu = sum(int(v) for v in fields[11:15]) / _TICK  # utime stime cutime cstime
        found[int(entry.name)] = (int(fields[1]), comm, cpu)
    return found


def _busy_seconds() -> float:
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / _TICK


def _descendants(processes: Mapping[int, tuple[int, str, float]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in processes.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass
class CpuUse:
    """Cores in use, on average, over one timed run."""

    total: float
    ours: float
    broker: float
    others: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in vars(self).items()}


class CpuMeter:
    """Cores used during a block: by the whole box, by this benchmark, by the broker, by others.

    This benchmark is this process and its descendants (workers, runners, Celery); the broker
    is RabbitMQ's Erlang VM; others is the rest of the box's busy time, whoever it was (other
    tenants of a shared machine). A run with ``others`` above ~0.2 cores ran on a busy box.
    """

    def __enter__(self) -> CpuMeter:
        self._start = _processes()
        self._busy = _busy_seconds()
        self._t0 = time.monotonic()
        self.use = CpuUse(0.0, 0.0, 0.0, 0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        end = _processes()
        busy = _busy_seconds() - self._busy
        ours = _descendants(end, os.getpid())
        mine = broker = 0.0
        for pid, (_, comm, cpu) in end.items():
            before = self._start[pid][2] if pid in self._start else 0.0
            if pid in ours:
                mine += cpu - before
            elif comm in _BROKER_COMMANDS and pid in self._start:
                broker += cpu - before
        # Ours that ended during the block were reaped by ours: their whole life is now in
        # their parent's count, of which only the part after the start belongs to the block.
        for pid in _descendants(self._start, os.getpid()) - end.keys():
            mine -= self._start[pid][2]
        others = max(0.0, busy - mine - broker)
        self.use = CpuUse(busy / elapsed, mine / elapsed, broker / elapsed, others / elapsed)


# -- rounds, tables, results -------------------------------------------------------------------


@dataclass
class Side:
    """One side of a comparison: a callable that runs once and returns its measurements."""

    name: str
    run: Callable[[int], dict[str, Any]]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def median(self, key: str) -> float:
        """The median of ``key`` over the runs (``a.b`` for a nested value), NaN if none."""
        values = [v for r in self.runs if (v := _lookup(r, key)) is not None]
        return statistics.median(values) if values else float("nan")

    @property
    def quiet_runs(self) -> int:
        """How many runs had the box to themselves (other tenants below QUIET_CORES)."""
        return sum(1 for r in self.runs if _lookup(r, "cpu.others") < QUIET_CORES)


def _lookup(record: Mapping[str, Any], key: str) -> Any:
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


QUIET_CORES = 0.25  # other tenants' use below which a run counts as measured on a quiet box


def wait_for_quiet(limit_s: float, window_s: float = 1.0) -> float:
    """Wait (up to ``limit_s``) for a window in which other tenants use < QUIET_CORES.

    Returns the other tenants' cores in the last window. The machine is shared: waiting for a
    lull costs little and makes the runs far more comparable than running into a neighbour's
    test suite.
    """
    deadline = time.monotonic() + limit_s
    while True:
        with CpuMeter() as meter:
            time.sleep(window_s)
        if meter.use.others < QUIET_CORES or time.monotonic() >= deadline:
            return meter.use.others


def speed_probe_ms() -> float:
    """A fixed pure-Python loop, best of 3, in ms: how fast one core is right now.

    On a shared VM the speed of a core itself varies (neighbours on the host); a probe that
    takes longer than usual flags a run whose CPU-bound parts were slowed down.
    """
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(100_000):
            total = (total + i * i) % 1_000_003
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)


def interleave(sides: Sequence[Side], rounds: int, quiet_wait_s: float = 0.0) -> None:
    """Run every side once per round, in turn, recording the CPU use of each run.

    With ``quiet_wait_s`` each run first waits up to that long for a quiet box.
    """
    for round_ in range(1, rounds + 1):
        for side in sides:
            if quiet_wait_s > 0:
                wait_for_quiet(quiet_wait_s)
            probe = speed_probe_ms()
            with CpuMeter() as meter:
                record = side.run(round_)
            record |= {"round": round_, "cpu": meter.use.as_dict(), "probe_ms": probe}
            side.runs.append(record)
            print(f"  round {round_} {side.name}: {summarise(record)}", flush=True)


def summarise(record: Mapping[str, Any]) -> str:
    cpu = record.get("cpu", {})
    shown = {k: v for k, v in record.items() if k not in ("cpu", "round", "probe_ms")}
    text = ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
    if cpu:
        text += (
            f" (cores: box {cpu['total']:.2f}, this benchmark {cpu['ours']:.2f}, "
            f"broker {cpu['broker']:.2f}, others {cpu['others']:.2f}; "
            f"speed probe {record.get('probe_ms', 0.0):.1f} ms)"
        )
    return text


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value != value:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[str(h) for h in header]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        lines.append(
            "  ".join(
                v.rjust(w) if i else v.ljust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "fleetrun"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "commit": commit or None,
        "fleetrun_uncommitted_changes": bool(dirty),
        "loadavg_at_start": os.getloadavg()[0],
    }


def append_result(record: Mapping[str, Any], path: Path = RESULTS_FILE) -> None:
    line = {"date": datetime.now(UTC).isoformat(timespec="seconds"), **machine(), **record}
    with open(path, "a") as handle:
        handle.write(json.dumps(line, sort_keys=False) + "\n")
