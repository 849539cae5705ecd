"""s3_staging: inputs on S3 (moto's server) against the same inputs on a local disk.

The issue: "2,000 inputs of 100 KB on the S3 server, run() costing ~20 ms of CPU per item:
wall time of the job divided by the same job on local copies of the files, same run. Staging
must overlap run(): target <= 1.3 (the emulator itself eats CPU on this 2-core machine). ...
Listing 20,000 keys on the S3 server: time to first published batch and total planning time."

Two parts, one moto server (started here on a free port with the test suite's own start/stop
code, ``tests/emulators.py``, and stopped at the end: its data lives in its memory only):

- **staging**: 2,000 random 100 KB objects in a bucket (seeded once, timed apart) and the very
  same bytes in a local folder. The entry script reads each file and burns ~20 ms of CPU
  (``bench/cpu_work.py``, calibrated here). ``fleetrun.run(spec)`` on the embedded broker,
  two runners, ``mini_batch_size`` 10, local output, on the S3 inputs and on the local ones,
  interleaved round by round. Reported: both wall times, their ratio, the CPU moto used, and
  from the runners' own clocks how long ``run()`` took per item (CPU contention shows there)
  and how long the runners sat idle between batches (staging that did not overlap shows
  there).
- **listing**: 20,000 tiny objects under a prefix with nested folders (seeded once, timed),
  listed by fleetrun's planner (``fleetrun.coordinator.planner.plan``: time to the first
  mini-batch and to the end) and by s3fs's own ``fs.find(prefix)`` (the baseline), interleaved.

The credentials reach fleetrun only through the environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...), set here before any S3 filesystem is created, as a user sets them.
Working data goes under ``bench/.work/s3_staging/`` (gitignored): creating files under /tmp is
very slow on this machine, and staging creates one local file per input.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import math
import os
import random
import resource
import shutil
import statistics
import sys
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import fleetrun
from bench import cpu_work
from bench.common import REPO_ROOT, Side, check_lines, interleave, table, timeline
from fleetrun.common.spec import JobSpec
from fleetrun.coordinator.planner import plan

NAME = "s3_staging"
TARGET_RATIO = 1.3
SECONDS_PER_ITEM = 0.020
BATCH_SIZE = 10
RUNNERS = 2
OBJECT_BYTES = 100_000
SEED_BATCH = 32  # concurrent PUTs while seeding (storage.md: 8..64 is moto's best)
LIST_SEED_BATCH = 64
SEED_CHUNK = 640  # objects generated and sent per pipe() call
WORK_ROOT = REPO_ROOT / "bench" / ".work" / NAME
_TICK = os.sysconf("SC_CLK_TCK")

# Appended to bench/cpu_work.py's source: read the file, burn the calibrated CPU, and log
# each batch's start, end and CPU time (monotonic clock, shared by all processes) to a file
# per runner, named after the job, so the benchmark can see the runners' idle time.
SCRIPT_TAIL = """

import zlib

ITERATIONS = {iterations}
TIMINGS = {timings!r}


def run(mini_batch):
    started, cpu = time.monotonic(), time.process_time()
    lines = []
    for path in mini_batch:
        with open(path, "rb") as handle:
            data = handle.read()
        lines.append(
            f"{{os.path.basename(path)}} {{len(data)}} {{zlib.crc32(data)}} {{busy(ITERATIONS)}}"
        )
    ended = time.monotonic()
    log = os.path.join(TIMINGS, f"{{os.environ.get('FLEETRUN_JOB_ID', 'job')}}-{{os.getpid()}}.txt")
    with open(log, "a") as handle:
        handle.write(f"{{started}} {{ended}} {{time.process_time() - cpu}} {{len(mini_batch)}}\\n")
    return lines
"""


# -- the moto server ---------------------------------------------------------------------------


def _emulators() -> ModuleType:
    """``tests/emulators.py``, loaded by path (``tests`` is no package; pytest need not run)."""
    name = "fleetrun_bench_emulators"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tests" / "emulators.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (all its threads) and its reaped children."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return float("nan")
    fields = text[text.rindex(")") + 2 :].split()
    return sum(int(v) for v in fields[11:15]) / _TICK


def _own_cpu_seconds() -> float:
    """This process's CPU seconds (every thread: coordinator, worker, staging, s3fs's loop)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Moto:
    """moto's server on a free port of 127.0.0.1, in its own session, stopped by :meth:`stop`."""

    def __init__(self, log: Path) -> None:
        emulators = _emulators()
        self._emulators = emulators
        log.parent.mkdir(parents=True, exist_ok=True)

        def command(port: int) -> list[str]:
            return [str(emulators.MOTO_BIN), "-H", "127.0.0.1", "-p", str(port)]

        self.process, port = emulators._start_on_free_port(command, "/moto-api/", {200}, log)
        self.server = emulators.S3Server(port=port, log=log)

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = self.server.env
        return env

    @property
    def interfering(self) -> tuple[str, ...]:
        names: tuple[str, ...] = self._emulators._INTERFERING
        return names

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self._emulators._stop(self.process)


@contextlib.contextmanager
def environment(values: Mapping[str, str], remove: tuple[str, ...] = ()) -> Iterator[None]:
    """Set (and unset) variables for the block, then put everything back."""
    names = set(values) | set(remove)
    saved = {name: os.environ.get(name) for name in names}
    for name in remove:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Metered:
    """CPU used during a block by moto and by this process (threads only, not the runners)."""

    def __init__(self, moto: Moto) -> None:
        self.moto = moto

    def __enter__(self) -> Metered:
        self._moto0, self._own0 = self.moto.cpu_seconds(), _own_cpu_seconds()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = max(time.perf_counter() - self._t0, 1e-6)
        self.moto_cpu_s = self.moto.cpu_seconds() - self._moto0
        self.own_cpu_s = _own_cpu_seconds() - self._own0
        self.moto_cores = self.moto_cpu_s / elapsed

    def as_dict(self) -> dict[str, float]:
        return {
            "moto_cpu_s": self.moto_cpu_s,
            "moto_cores": self.moto_cores,
            "main_process_cpu_s": self.own_cpu_s,
        }


# -- part 1: staging ---------------------------------------------------------------------------


def runner_stats(timings: Path, job_id: str) -> dict[str, Any]:
    """What the runners' own clocks say: run() time per item, and idle time between batches.

    ``idle_s`` is, summed over the runners, the time from the end of one ``run()`` to the
    start of the next: the runner waiting for its next batch (staging that did not overlap,
    result handling, the broker). ``run_ms_per_item`` over ``run_cpu_ms_per_item`` shows CPU
    contention: the time ``run()`` was runnable but had no core.
    """
    batches = 0
    items = 0
    busy = cpu = idle = 0.0
    gaps: list[float] = []
    for log in timings.glob(f"{job_id}-*.txt"):
        rows = sorted(
            tuple(float(v) for v in line.split()) for line in log.read_text().split("\n") if line
        )
        for i, (start, end, used, count) in enumerate(rows):
            batches += 1
            items += int(count)
            busy += end - start
            cpu += used
            if i:
                gap = max(0.0, start - rows[i - 1][1])
                gaps.append(gap)
                idle += gap
    if not items:
        return {}
    return {
        "run_ms_per_item": 1000 * busy / items,
        "run_cpu_ms_per_item": 1000 * cpu / items,
        "idle_s": idle,
        "idle_ms_per_batch": 1000 * idle / max(1, len(gaps)),
        "idle_ms_p90": 1000 * _quantile(gaps, 0.9) if gaps else 0.0,
        "runner_batches": batches,
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Staging:
    def __init__(self, root: Path, moto: Moto, fs: Any, inputs: int, iterations: int) -> None:
        self.root = root
        self.moto = moto
        self.fs = fs
        self.inputs = inputs
        self.bucket = f"bench-staging-{uuid.uuid4().hex[:8]}"
        self.data = root / "data"
        self.timings = root / "timings"
        self.timings.mkdir(parents=True, exist_ok=True)
        self.job = root / "job"
        self.job.mkdir(parents=True, exist_ok=True)
        script = inspect.getsource(cpu_work) + SCRIPT_TAIL.format(
            iterations=iterations, timings=str(self.timings)
        )
        (self.job / "score.py").write_text(script)
        self.expected: list[str] = []
        self.busy_value = cpu_work.busy(iterations)

    def seed(self) -> dict[str, Any]:
        """The random objects in the bucket (timed) and the same bytes in the local folder."""
        self.fs.mkdir(self.bucket)
        self.data.mkdir(parents=True, exist_ok=True)
        rng = random.Random(20_000)
        names = [f"f{i:05d}.bin" for i in range(self.inputs)]
        put_s = 0.0
        for start in range(0, len(names), SEED_CHUNK):
            chunk = {
                name: rng.randbytes(OBJECT_BYTES) for name in names[start : start + SEED_CHUNK]
            }
            for name, data in chunk.items():
                (self.data / name).write_bytes(data)
                self.expected.append(f"{name} {len(data)} {zlib.crc32(data)} {self.busy_value}")
            objects = {f"{self.bucket}/inputs/{name}": data for name, data in chunk.items()}
            started = time.perf_counter()
            self.fs.pipe(objects, batch_size=SEED_BATCH)
            put_s += time.perf_counter() - started
        listed = len(self.fs.find(f"{self.bucket}/inputs"))
        if listed != self.inputs:
            raise RuntimeError(f"seeded {self.inputs} objects but {listed} are listed")
        return {
            "objects": self.inputs,
            "seconds": put_s,
            "objects_per_s": self.inputs / put_s,
            "mb_per_s": self.inputs * OBJECT_BYTES / put_s / 1e6,
            "batch_size": SEED_BATCH,
        }

    def spec(self, inputs: str, output: Path) -> JobSpec:
        return JobSpec(
            name="bench-s3-staging",
            inputs=[inputs],
            output=str(output),
            entry_script="score.py",
            source_directory=str(self.job),
            mini_batch_size=BATCH_SIZE,
            process_count_per_node=RUNNERS,
            allow_reuse=False,
        )

    def once(self, side: str, round_: int) -> dict[str, Any]:
        source = f"s3://{self.bucket}/inputs" if side == "s3" else str(self.data)
        output = self.root / "out" / f"{side}-{round_}"
        shutil.rmtree(output, ignore_errors=True)
        spec = self.spec(source, output)
        with Metered(self.moto) as meter:
            called, started = time.time(), time.perf_counter()
            summary = fleetrun.run(spec)
            seconds = time.perf_counter() - started
        return {
            "status": summary.status,
            "seconds": seconds,
            **timeline(output, summary.mini_batches.total, called, called + seconds),
            **meter.as_dict(),
            **runner_stats(self.timings, summary.job_id),
            "output": check_lines(output / spec.append_row_file_name, self.expected),
        }


# -- part 2: listing ---------------------------------------------------------------------------


def listing_key(i: int) -> str:
    """Keys at three depths: ``p1/q3/0000007.txt``, ``p2/0000012.txt``, ``p0/q0/r1/...``."""
    folder = f"p{i % 4}/"
    if i % 3:
        folder += f"q{i % 5}/"
    if i % 7 == 0:
        folder += f"r{i % 2}/"
    return f"{folder}{i:07d}.txt"


class Listing:
    def __init__(self, root: Path, moto: Moto, fs: Any, keys: int, job: Path) -> None:
        self.root = root
        self.moto = moto
        self.fs = fs
        self.keys = keys
        self.bucket = f"bench-listing-{uuid.uuid4().hex[:8]}"
        self.prefix = f"{self.bucket}/listing"
        self.expected: list[str] = []
        self.job = job

    def seed(self) -> dict[str, Any]:
        self.fs.mkdir(self.bucket)
        names = sorted(f"{self.prefix}/{listing_key(i)}" for i in range(self.keys))
        self.expected = [f"s3://{name}" for name in names]
        started = time.perf_counter()
        step = 2_000
        for start in range(0, len(names), step):
            chunk = {name: f"{start}\n".encode() for name in names[start : start + step]}
            self.fs.pipe(chunk, batch_size=LIST_SEED_BATCH)
            done = min(start + step, len(names))
            elapsed = time.perf_counter() - started
            print(f"  seeded {done:,} keys in {elapsed:.0f} s", flush=True)
        seconds = time.perf_counter() - started
        return {
            "keys": self.keys,
            "seconds": seconds,
            "keys_per_s": self.keys / seconds,
            "batch_size": LIST_SEED_BATCH,
        }

    def spec(self) -> JobSpec:
        return JobSpec(
            name="bench-s3-listing",
            inputs=[f"s3://{self.prefix}"],
            output=str(self.root / "out" / "listing"),
            entry_script="score.py",
            source_directory=str(self.job),
            mini_batch_size=BATCH_SIZE,
        )

    def planner_once(self, round_: int) -> dict[str, Any]:
        spec = self.spec()
        items: list[str] = []
        first = None
        batches = 0
        with Metered(self.moto) as meter:
            started = time.perf_counter()
            for batch in plan(spec):
                if first is None:
                    first = time.perf_counter() - started
                batches += 1
                items.extend(batch.items)
            seconds = time.perf_counter() - started
        return {
            "first_batch_s": first,
            "seconds": seconds,
            "keys": len(items),
            "keys_per_s": len(items) / seconds,
            "batches": batches,
            **meter.as_dict(),
            "output": "ok" if items == self.expected else _diff(items, self.expected),
        }

    def find_once(self, round_: int) -> dict[str, Any]:
        with Metered(self.moto) as meter:
            started = time.perf_counter()
            found = self.fs.find(self.prefix)
            seconds = time.perf_counter() - started
        uris = [f"s3://{name}" for name in found]
        return {
            "first_batch_s": seconds,  # find() returns nothing before the whole listing
            "seconds": seconds,
            "keys": len(found),
            "keys_per_s": len(found) / seconds,
            **meter.as_dict(),
            "output": "ok" if uris == self.expected else _diff(uris, self.expected),
        }


def _diff(got: list[str], expected: list[str]) -> str:
    if len(got) != len(expected):
        return f"{len(got)} keys, expected {len(expected)}"
    first = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
    return f"key {first} is {got[first]!r}, expected {expected[first]!r}"


# -- main --------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict[str, Any]:
    inputs = 300 if args.quick else 2_000
    keys = 2_000 if args.quick else 20_000
    rounds = args.rounds or (1 if args.quick else 3)
    iterations = cpu_work.calibrate(SECONDS_PER_ITEM)
    per_item = cpu_work.item_seconds(iterations)
    print(
        f"s3_staging: {inputs:,} inputs of {OBJECT_BYTES // 1000} KB, mini_batch_size "
        f"{BATCH_SIZE}, {RUNNERS} runners; busy({iterations:,}) takes {per_item * 1000:.1f} ms "
        f"per item here (best of 5); listing {keys:,} keys; working folder {WORK_ROOT}"
    )
    shutil.rmtree(WORK_ROOT, ignore_errors=True)
    WORK_ROOT.mkdir(parents=True)
    moto = Moto(WORK_ROOT / "logs" / "moto.log")
    print(f"  moto_server pid {moto.process.pid} on {moto.server.endpoint_url}", flush=True)
    env = {**moto.env, "FLEETRUN_CACHE_DIR": str(WORK_ROOT / "cache")}
    try:
        with environment(env, remove=moto.interfering):
            import s3fs  # after the environment: it reads the endpoint and keys from there

            fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
            staging = Staging(WORK_ROOT / "staging", moto, fs, inputs, iterations)
            staging_seed = staging.seed()
            print(
                f"  seeded {inputs:,} objects in {staging_seed['seconds']:.1f} s "
                f"({staging_seed['objects_per_s']:.0f}/s, {staging_seed['mb_per_s']:.1f} MB/s)",
                flush=True,
            )
            staging_sides = [
                Side("s3", lambda r: staging.once("s3", r)),
                Side("local", lambda r: staging.once("local", r)),
            ]
            interleave(staging_sides, rounds, args.quiet_wait)
            shutil.rmtree(staging.data, ignore_errors=True)

            listing = Listing(WORK_ROOT / "listing", moto, fs, keys, staging.job)
            print(f"  seeding {keys:,} keys for the listing", flush=True)
            listing_seed = listing.seed()
            listing_sides = [
                Side("planner", listing.planner_once),
                Side("find", listing.find_once),
            ]
            interleave(listing_sides, rounds, args.quiet_wait)
    finally:
        moto.stop()
        shutil.rmtree(WORK_ROOT / "cache", ignore_errors=True)
        shutil.rmtree(WORK_ROOT / "staging" / "data", ignore_errors=True)
    return report(
        staging_sides,
        listing_sides,
        staging_seed,
        listing_seed,
        inputs=inputs,
        keys=keys,
        rounds=rounds,
        iterations=iterations,
        per_item=per_item,
    )


def _medians(side: Side, keys: list[str]) -> dict[str, float]:
    return {key: value for key in keys if not math.isnan(value := side.median(key))}


STAGING_KEYS = [
    "seconds",
    "to_first_s",
    "after_first_s",
    "teardown_s",
    "moto_cpu_s",
    "moto_cores",
    "main_process_cpu_s",
    "run_ms_per_item",
    "run_cpu_ms_per_item",
    "idle_s",
    "idle_ms_per_batch",
    "idle_ms_p90",
    "cpu.total",
    "cpu.ours",
    "cpu.others",
]
LISTING_KEYS = [
    "first_batch_s",
    "seconds",
    "keys_per_s",
    "moto_cpu_s",
    "moto_cores",
    "main_process_cpu_s",
    "cpu.others",
]


def report(
    staging_sides: list[Side],
    listing_sides: list[Side],
    staging_seed: dict[str, Any],
    listing_seed: dict[str, Any],
    *,
    inputs: int,
    keys: int,
    rounds: int,
    iterations: int,
    per_item: float,
) -> dict[str, Any]:
    s3, local = staging_sides
    ratio = s3.median("seconds") / local.median("seconds")
    per_round = [a["seconds"] / b["seconds"] for a, b in zip(s3.runs, local.runs, strict=True)]
    # What the wall would be if moto's CPU were on another machine, as on a real cloud: the
    # runners keep both cores busy, so each CPU second moto took cost them half a second.
    without_moto = [
        (a["seconds"] - a["moto_cpu_s"] / RUNNERS) / b["seconds"]
        for a, b in zip(s3.runs, local.runs, strict=True)
    ]
    rows = []
    for side in staging_sides:
        rows.append(
            [
                side.name,
                side.median("seconds"),
                side.median("seconds") / local.median("seconds"),
                side.median("to_first_s"),
                side.median("run_ms_per_item"),
                side.median("run_cpu_ms_per_item"),
                side.median("idle_ms_per_batch"),
                side.median("idle_ms_p90"),
                side.median("moto_cores"),
                side.median("main_process_cpu_s"),
                side.median("cpu.others"),
                f"{side.quiet_runs}/{len(side.runs)}",
                ", ".join(sorted({str(r["output"]) for r in side.runs})),
            ]
        )
    ideal = inputs * per_item / RUNNERS
    print()
    print(
        table(
            f"s3_staging: {inputs:,} inputs of {OBJECT_BYTES // 1000} KB, run() "
            f"{per_item * 1000:.1f} ms per item, mini_batch_size {BATCH_SIZE}, {RUNNERS} "
            f"runners (ideal {ideal:.1f} s); medians of {rounds} interleaved rounds",
            [
                "side",
                "wall s",
                "/ local",
                "to 1st batch s",
                "run() ms/item",
                "run() CPU ms/item",
                "idle ms/batch",
                "idle p90 ms",
                "moto cores",
                "main proc CPU s",
                "others' cores",
                "quiet runs",
                "output",
            ],
            rows,
        )
    )
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(
        f"s3/local = {ratio:.3f} (per round {', '.join(f'{r:.3f}' for r in per_round)}); "
        f"target <= {TARGET_RATIO}: {verdict}. Estimated without moto's CPU on this box "
        f"(s3 wall - moto CPU s / {RUNNERS}): {statistics.median(without_moto):.3f}."
    )
    print(
        f"Seeding: {staging_seed['objects']:,} objects in {staging_seed['seconds']:.1f} s "
        f"({staging_seed['objects_per_s']:.0f}/s); {listing_seed['keys']:,} keys in "
        f"{listing_seed['seconds']:.1f} s ({listing_seed['keys_per_s']:.0f}/s)."
    )
    planner, find = listing_sides
    list_rows = [
        [
            side.name,
            side.median("first_batch_s"),
            side.median("seconds"),
            side.median("seconds") / find.median("seconds"),
            side.median("keys_per_s"),
            side.median("moto_cores"),
            side.median("main_process_cpu_s"),
            side.median("cpu.others"),
            f"{side.quiet_runs}/{len(side.runs)}",
            ", ".join(sorted({str(r["output"]) for r in side.runs})),
        ]
        for side in listing_sides
    ]
    print()
    print(
        table(
            f"s3 listing: {keys:,} keys under a prefix with nested folders; planner = "
            f"fleetrun.coordinator.planner.plan (mini_batch_size {BATCH_SIZE}), find = s3fs "
            f"fs.find(prefix); medians of {rounds} interleaved rounds",
            [
                "side",
                "1st batch s",
                "total s",
                "/ find",
                "keys/s",
                "moto cores",
                "main proc CPU s",
                "others' cores",
                "quiet runs",
                "output",
            ],
            list_rows,
        )
    )
    print()
    return {
        "benchmark": NAME,
        "params": {
            "inputs": inputs,
            "object_bytes": OBJECT_BYTES,
            "mini_batch_size": BATCH_SIZE,
            "runners": RUNNERS,
            "rounds": rounds,
            "iterations": iterations,
            "ms_per_item": round(per_item * 1000, 2),
            "listing_keys": keys,
        },
        "seeding": {"staging": staging_seed, "listing": listing_seed},
        "medians": {
            **{side.name: _medians(side, STAGING_KEYS) for side in staging_sides},
            **{side.name: _medians(side, LISTING_KEYS) for side in listing_sides},
        },
        "quiet_runs": {side.name: side.quiet_runs for side in staging_sides + listing_sides},
        "ratios": {
            "s3_over_local": ratio,
            "s3_over_local_per_round": per_round,
            "s3_over_local_without_moto_cpu_estimate": statistics.median(without_moto),
            "planner_over_find": planner.median("seconds") / find.median("seconds"),
            "planner_first_batch_over_find": planner.median("first_batch_s")
            / find.median("seconds"),
        },
        "targets": {"s3_over_local": TARGET_RATIO},
        "runs": {side.name: side.runs for side in staging_sides + listing_sides},
    }
