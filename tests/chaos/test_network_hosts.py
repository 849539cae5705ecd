"""Several hosts on one machine: fleetrun daemons in network namespaces, cut off and killed.

Each "host" is a network namespace (``ip netns``) with a hostname of its own (a UTS namespace)
and a veth link to the machine: ``10.231.<n>.2`` inside, ``10.231.<n>.1`` on the machine's
side. RabbitMQ listens on loopback only, so a small TCP forwarder on ``10.231.<n>.1:5672``
carries the host's connections to it (the broker sees them come from 127.0.0.1, so ``guest``
may log in). A host's daemons reach the broker over that link and nothing else: the loopback of
a namespace is its own. Cutting the link (``ip link set <veth> down``) leaves a worker alive but
silent, which RabbitMQ notices only by missed heartbeats (``?heartbeat=4``). The job's folders
are on the local disk, which every namespace shares.

Needs root and iproute2 (``ip``, ``unshare``, ``hostname``); skips without them, except under
``CI=true``, where it fails.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika
import pytest
from helpers import Harness, descendants, kill_pid, wait_for
from services import unavailable

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(150)]

HEARTBEAT = 4  # seconds: RabbitMQ gives up on a silent peer after 2-3 of these
BATCH = 2

# One line per file; DELAY (from the spec) per file, so batches take ~0.2 s on the workers and
# nothing in the test's own sequential run. A worker started with STALL_FLAG stops making
# progress once that file exists: the host that is cut off from the broker cannot finish its
# batches either (as if its storage were cut off too; here the storage is a local folder that
# every namespace shares, so nothing else would stop it).
SCRIPT = """\
import os
import time

DELAY = float(os.environ.get("DELAY", "0"))


def run(mini_batch):
    lines = []
    for p in mini_batch:
        time.sleep(DELAY)
        stall = os.environ.get("STALL_FLAG")
        while stall and os.path.exists(stall):
            time.sleep(0.1)
        lines.append(f"{os.path.basename(p)} {open(p).read()}")
    return lines
"""

# A TCP forwarder: listen on the host side of a veth, connect each client to the broker.
FORWARDER = """\
import asyncio
import sys

LISTEN, PORT, TARGET, TARGET_PORT = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def serve(client_reader, client_writer):
    try:
        reader, writer = await asyncio.open_connection(TARGET, TARGET_PORT)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))


async def main():
    server = await asyncio.start_server(serve, LISTEN, PORT, reuse_address=True)
    print("forwarding", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""

FLEETRUN = (sys.executable, "-m", "fleetrun")

_names = itertools.count()


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


@dataclass
class Host:
    """One namespace: its name (also its hostname), its link and its forwarder to the broker."""

    name: str
    veth: str  # the machine's side of the link
    address: str  # the machine's side address, where the forwarder listens
    url: str  # the broker, as the host reaches it
    forwarder: subprocess.Popen[bytes] | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


class Network:
    """The hosts of one test; everything is removed in :meth:`close`, even after a failure."""

    def __init__(self, harness: Harness, broker_url: str) -> None:
        self.harness = harness
        self.broker_url = broker_url
        self.prefix = f"fr{os.getpid() % 10000}{next(_names)}"
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []
        self.veths: list[str] = []

    def add_host(self) -> Host:
        name = f"{self.prefix}{'abcdefgh'[len(self.hosts)]}"
        try:
            ip("netns", "add", name)
        except RuntimeError as exc:
            unavailable(f"cannot create a network namespace: {exc}")
        self.namespaces.append(name)
        veth, peer = f"{name}-h", f"{name}-n"
        ip("link", "add", veth, "type", "veth", "peer", "name", peer, "netns", name)
        self.veths.append(veth)
        octet = self._free_octet()
        address = f"10.231.{octet}.1"
        ip("addr", "add", f"{address}/30", "dev", veth)
        ip("link", "set", veth, "up")
        ip("-n", name, "addr", "add", f"10.231.{octet}.2/30", "dev", peer)
        ip("-n", name, "link", "set", peer, "up")
        ip("-n", name, "link", "set", "lo", "up")
        host = Host(name, veth, address, self._url_via(address))
        self.hosts.append(host)
        self._start_forwarder(host)
        return host

    @staticmethod
    def _free_octet() -> int:
        used = set(re.findall(r"inet 10\.231\.(\d+)\.", ip("-4", "-o", "addr", "show").stdout))
        start = os.getpid() % 200
        for octet in itertools.chain(range(start, 250), range(0, start)):
            if str(octet) not in used:
                return octet
        raise RuntimeError("no free 10.231.x.0/30 subnet")

    def _url_via(self, address: str) -> str:
        parts = urlsplit(self.broker_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{address}:5672" if userinfo else f"{address}:5672"
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "heartbeat"]
        query.append(("heartbeat", str(HEARTBEAT)))
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    def _start_forwarder(self, host: Host) -> None:
        target = urlsplit(self.broker_url)
        log = self.harness.logs_dir / f"forwarder-{host.name}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    FORWARDER,
                    host.address,
                    "5672",
                    target.hostname or "127.0.0.1",
                    str(target.port or 5672),
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        host.forwarder = process

        def listening() -> bool:
            if process.poll() is not None:
                pytest.fail(f"the forwarder exited: {log.read_text()}")
            return "forwarding" in log.read_text()

        wait_for(listening, 15, f"the forwarder of {host.name}")

    # -- processes on a host --------------------------------------------------------------------

    def start(
        self, host: Host, kind: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``fleetrun <args>`` on ``host``: in its namespace, under its hostname."""
        command = [
            "ip",
            "netns",
            "exec",
            host.name,
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            host.name,
            *FLEETRUN,
            *args,
        ]
        harness = self.harness
        log = harness.logs_dir / f"{kind}-{host.name}-{len(harness.processes)}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                command,
                env=harness.env(**(env or {})),
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=harness.root,  # no stray .env file
            )
        process.log_path = log  # type: ignore[attr-defined]
        harness.processes.append(process)
        host.processes.append(process)
        return process

    def start_worker(
        self, host: Host, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        cache = self.harness.root / f"cache-{host.name}"
        worker = self.start(
            host,
            "worker",
            "worker",
            "--broker",
            host.url,
            "--namespace",
            self.harness.namespace,
            "--processes",
            "1",
            "--cache-dir",
            str(cache),
            env={"FLEETRUN_CACHE_DIR": str(cache), **(env or {})},
        )
        return worker

    def start_coordinator(self, host: Host) -> subprocess.Popen[bytes]:
        coordinator = self.start(
            host,
            "coordinator",
            "coordinator",
            "--broker",
            host.url,
            "--namespace",
            self.harness.namespace,
        )

        def taking_jobs() -> bool:
            if coordinator.poll() is not None:
                pytest.fail(
                    f"the coordinator exited with {coordinator.returncode}:\n"
                    f"{self.harness.log_of(coordinator)}"
                )
            return "Coordinator is taking jobs" in self.harness.log_of(coordinator)

        wait_for(taking_jobs, 30, f"the coordinator on {host.name}")
        return coordinator

    def check(self, host: Host, url: str) -> subprocess.CompletedProcess[str]:
        """``fleetrun worker --check`` on ``host`` against ``url``."""
        return subprocess.run(
            [
                *("ip", "netns", "exec", host.name, *FLEETRUN, "worker", "--check"),
                *("--broker", url, "--namespace", self.harness.namespace),
                *("--cache-dir", str(self.harness.root / f"cache-{host.name}")),
            ],
            env=self.harness.env(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.harness.root,
        )

    def cut(self, host: Host) -> None:
        """Take the host's link down: its processes live on, unheard and unable to send."""
        ip("link", "set", host.veth, "down")

    def heal(self, host: Host) -> None:
        ip("link", "set", host.veth, "up")

    # -- teardown -------------------------------------------------------------------------------

    def close(self) -> None:
        for host in self.hosts:
            for process in host.processes:
                for pid in [process.pid, *descendants(process.pid)]:
                    kill_pid(pid)
            for process in host.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
            if host.forwarder is not None:
                host.forwarder.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.forwarder.wait(10)
        for veth in self.veths:
            ip("link", "del", veth, check=False)
        for name in self.namespaces:
            ip("netns", "del", name, check=False)


@pytest.fixture
def network(harness: Harness, rabbitmq_url: str) -> Iterator[Network]:
    """Hosts for this test (namespaces, veths, forwarders), removed after it."""
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    missing = [tool for tool in ("ip", "unshare", "hostname") if shutil.which(tool) is None]
    if missing:
        unavailable(f"missing tools: {', '.join(missing)} (iproute2, util-linux, hostname)")
    harness.broker_urls.add(rabbitmq_url)  # the harness deletes the test's queues through it
    net = Network(harness, rabbitmq_url)
    try:
        yield net
    finally:
        net.close()


# -- reading the job's state --------------------------------------------------------------------


def part_headers(output: Path) -> dict[int, dict[str, Any]]:
    """The header of every result part of the job writing to ``output``, by batch index."""
    headers = {}
    for part in sorted((output / "_fleetrun" / "parts").glob("*.part")):
        with part.open("rb") as handle:
            headers[int(part.stem)] = json.loads(handle.readline())
    return headers


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (outputs and job state), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def consumers(url: str, queue: str) -> int:
    """The consumers of ``queue`` as the broker counts them (one per connected worker)."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    connection = pika.BlockingConnection(params)
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.consumer_count)
    finally:
        connection.close()


def holder_lost_records(harness: Harness) -> list[dict[str, Any]]:
    """The lost tries the workers have recorded so far (before the job writes errors.jsonl)."""
    records = []
    for path in (harness.out_dir / "_fleetrun" / "errors").glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            if record.get("kind") == "holder_lost":
                records.append(record)
    return records


def submit(harness: Harness, broker: str) -> str:
    """``fleetrun submit job.yaml`` from the machine itself; the job id."""
    result = subprocess.run(
        [
            *(*FLEETRUN, "submit", str(harness.job_file)),
            *("--broker", broker, "--namespace", harness.namespace),
        ],
        env=harness.env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=harness.root,
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    harness.job_ids.add(job_id)
    return job_id


def start_wait(harness: Harness, broker: str, job_id: str) -> subprocess.Popen[bytes]:
    """``fleetrun wait JOB`` from the machine itself, in the background."""
    log = harness.logs_dir / f"wait-{len(harness.processes)}.log"
    with log.open("wb") as handle, log.with_suffix(".json").open("wb") as out:
        process = subprocess.Popen(
            [
                *(*FLEETRUN, "wait", job_id, "--quiet"),
                *("--broker", broker, "--namespace", harness.namespace),
            ],
            env=harness.env(),
            stdout=out,  # the job's final status, as JSON
            stderr=handle,
            cwd=harness.root,
        )
    process.log_path = log  # type: ignore[attr-defined]
    harness.processes.append(process)
    return process


def assert_exact(harness: Harness, files: int, retried: int) -> dict[str, Any]:
    """The output is the sequential run's, line for line; the summary counts are exact."""
    lines = harness.output_lines()
    assert len(lines) == len(set(lines)), "duplicate lines in the output"
    assert lines == harness.sequential_run(BATCH)
    assert lines == harness.expected_lines()
    summary = harness.summary()
    batches = files // BATCH
    assert summary["status"] == "succeeded", summary
    assert summary["items"] == {"total": files, "succeeded": files, "failed": 0}
    assert summary["mini_batches"] == {
        "total": batches,
        "succeeded": batches,
        "failed": 0,
        "retried": retried,
    }
    return summary


# -- the tests ----------------------------------------------------------------------------------


def test_workers_on_other_hosts_reach_the_broker_over_their_link_and_finish_a_job(
    harness: Harness, network: Network, rabbitmq_url: str
) -> None:
    files = 60
    harness.make_inputs(files)
    harness.write_job(SCRIPT, mini_batch_size=BATCH, environment_variables={"DELAY": "0.1"})
    boss, first, second = network.add_host(), network.add_host(), network.add_host()

    # A host reaches the broker through its link only: its own loopback has no broker.
    through_link = network.check(first, first.url)
    assert through_link.returncode == 0, through_link.stderr
    assert "ok:" in through_link.stdout and first.address in through_link.stdout
    loopback = network.check(first, rabbitmq_url)
    assert loopback.returncode == 1, "the namespace must not reach the machine's loopback"

    workers = [network.start_worker(first), network.start_worker(second)]
    network.start_coordinator(boss)
    for worker in workers:
        harness.wait_ready(worker)
    started = time.monotonic()
    job_id = submit(harness, rabbitmq_url)
    waiting = start_wait(harness, rabbitmq_url, job_id)

    assert waiting.wait(90) == 0, harness.log_of(waiting)
    took = time.monotonic() - started
    summary = assert_exact(harness, files, retried=0)
    assert summary["job_id"] == job_id
    assert harness.errors() == []
    hosts = {header["host"] for header in part_headers(harness.out_dir).values()}
    assert hosts == {first.name, second.name}, "both worker hosts ran batches"
    assert all(worker.poll() is None for worker in workers)
    print(f"\n{files // BATCH} batches on 2 namespace hosts: submit to end in {took:.1f} s")


def test_a_host_cut_off_mid_job_hands_its_batches_back_and_rejoins_when_the_link_returns(
    harness: Harness, network: Network, rabbitmq_url: str
) -> None:
    files = 80
    harness.make_inputs(files)
    harness.write_job(SCRIPT, mini_batch_size=BATCH, environment_variables={"DELAY": "0.1"})
    doomed_host, *other_hosts = network.add_host(), network.add_host(), network.add_host()
    stall_flag = harness.root / "cut-off"
    doomed = network.start_worker(doomed_host, env={"STALL_FLAG": str(stall_flag)})
    survivors = [network.start_worker(host) for host in other_hosts]
    for worker in [doomed, *survivors]:
        harness.wait_ready(worker)
    batches_queue = f"{harness.namespace}.batches"
    assert consumers(rabbitmq_url, batches_queue) == 3
    run = harness.start_run(broker=rabbitmq_url)

    def doomed_host_is_working() -> bool:
        headers = part_headers(harness.out_dir)
        mine = [h for h in headers.values() if h["host"] == doomed_host.name]
        return len(headers) >= files // BATCH // 4 and len(mine) >= 2

    wait_for(doomed_host_is_working, 60, "a quarter of the parts, two from the doomed host")
    stall_flag.touch()
    cut_at = time.monotonic()
    network.cut(doomed_host)

    wait_for(
        lambda: consumers(rabbitmq_url, batches_queue) == 2,
        60,
        "the broker to drop the cut-off worker",
        interval=0.2,
    )
    dropped_after = time.monotonic() - cut_at
    lost = wait_for(lambda: holder_lost_records(harness), 60, "the cut-off host's batches back")
    retaken_after = time.monotonic() - cut_at
    assert run.wait(60) == 0, harness.log_of(run)
    finished_after = time.monotonic() - cut_at
    print(
        f"\nlink cut (heartbeat {HEARTBEAT} s): the broker dropped the worker after "
        f"{dropped_after:.1f} s, its batches were taken again after {retaken_after:.1f} s, "
        f"the job finished after {finished_after:.1f} s"
    )

    # Noticed by missed heartbeats (not by a closed socket, which would be at once), in time.
    assert HEARTBEAT - 1 <= dropped_after <= 6 * HEARTBEAT, dropped_after
    assert doomed.poll() is None, "the cut-off worker is alive, only unheard"
    errors = harness.errors()
    lost_batches = sorted({e["batch"] for e in errors if e["kind"] == "holder_lost"})
    assert [e["kind"] for e in errors] == ["holder_lost"] * len(errors), errors
    assert 1 <= len(lost_batches) <= 2, "a worker with one runner holds at most two batches"
    assert {e["batch"] for e in lost} <= set(lost_batches)
    assert all(e["attempt"] == 1 for e in errors)
    assert_exact(harness, files, retried=len(lost_batches))
    headers = part_headers(harness.out_dir)
    survivor_names = {host.name for host in other_hosts}
    for batch in lost_batches:
        # Finished on a surviving host, as its second try.
        assert headers[batch]["host"] in survivor_names
        assert headers[batch]["attempt"] == 2
    assert all(e["host"] in survivor_names for e in errors), "recorded by the taker"
    assert all(worker.poll() is None for worker in survivors)

    # The link comes back once the worker has noticed the loss on its own (missed heartbeats
    # too) and is trying to reconnect: it finishes its stale batches (they add nothing: their
    # parts exist), rejoins, and serves the next job.
    wait_for(
        lambda: "RabbitMQ connection lost" in harness.log_of(doomed),
        60,
        "the cut-off worker to notice",
        interval=0.2,
    )
    noticed_after = time.monotonic() - cut_at
    time.sleep(2)  # a reconnect attempt or two fail
    finished = files_under(harness.out_dir)
    stall_flag.unlink()
    healed_at = time.monotonic()
    network.heal(doomed_host)
    wait_for(
        lambda: consumers(rabbitmq_url, batches_queue) == 3,
        60,
        "the cut-off worker to reconnect",
        interval=0.2,
    )
    rejoined_after = time.monotonic() - healed_at
    print(
        f"the worker noticed the loss {noticed_after:.1f} s after the cut and rejoined "
        f"{rejoined_after:.1f} s after the link came back"
    )
    second_out = harness.root / "out-second"
    again = harness.run(broker=rabbitmq_url, sets={"output": str(second_out)})
    assert again.returncode == 0, again.stderr
    assert (second_out / "parallel_run_step.txt").read_text().splitlines() == (
        harness.expected_lines()
    )
    second = json.loads((second_out / "summary.json").read_text())
    assert second["mini_batches"] == {
        "total": files // BATCH,
        "succeeded": files // BATCH,
        "failed": 0,
        "retried": 0,
    }
    hosts = {h["host"] for h in part_headers(second_out).values()}
    assert doomed_host.name in hosts, "the rejoined host takes batches again"
    assert doomed.poll() is None
    assert files_under(harness.out_dir) == finished, "the late host changed the finished job"


def test_a_coordinator_daemon_killed_mid_job_and_restarted_finishes_with_the_same_output(
    harness: Harness, network: Network, rabbitmq_url: str
) -> None:
    files = 100
    harness.make_inputs(files)
    harness.write_job(SCRIPT, mini_batch_size=BATCH, environment_variables={"DELAY": "0.1"})
    boss, first, second = network.add_host(), network.add_host(), network.add_host()
    workers = [network.start_worker(first), network.start_worker(second)]
    coordinator = network.start_coordinator(boss)
    for worker in workers:
        harness.wait_ready(worker)
    job_id = submit(harness, rabbitmq_url)
    waiting = start_wait(harness, rabbitmq_url, job_id)

    wait_for(lambda: len(harness.parts()) >= 10, 60, "ten parts")
    coordinator.send_signal(signal.SIGKILL)
    assert coordinator.wait(10) == -signal.SIGKILL
    killed_at = time.monotonic()
    done_at_kill = len(harness.parts())
    assert not (harness.out_dir / "summary.json").exists()
    network.start_coordinator(boss)
    done_at_restart = len(harness.parts())

    assert waiting.wait(90) == 0, harness.log_of(waiting)
    finished_after = time.monotonic() - killed_at
    print(
        f"\ncoordinator killed at {done_at_kill} parts, restarted at {done_at_restart} of "
        f"{files // BATCH}; job finished {finished_after:.1f} s after the kill"
    )
    assert done_at_restart < files // BATCH, "the job must not be over before the restart"
    summary = assert_exact(harness, files, retried=0)
    assert summary["job_id"] == job_id
    assert harness.errors() == []
    log: Path = waiting.log_path  # type: ignore[attr-defined]
    status = json.loads(log.with_suffix(".json").read_text())  # what `wait` printed
    assert (status["job_id"], status["state"]) == (job_id, "succeeded")
    assert status["batches_done"] == files // BATCH
    assert all(worker.poll() is None for worker in workers)
