"""The files of ``deploy/``: checked by the tools that read them, and run as they are.

- every systemd unit passes ``systemd-analyze verify``; both cloud-init files pass
  ``cloud-init schema`` and embed the units of ``deploy/systemd/`` unchanged; every shell script
  passes ``bash -n`` and ``shellcheck``; the compose, Kubernetes and Docker files hold what the
  docs say, and their grace periods agree with the worker unit's ``TimeoutStopSec``;
- the units' ``ExecStart`` command lines run exactly as written (only ``/opt/fleetrun/venv``
  becomes this project's venv and the systemd specifiers get test folders), with the unit's
  ``Environment=`` and ``fleetrun.env`` as systemd would pass them, against the real broker;
- the drain-on-termination script runs against a fake metadata service on 127.0.0.1 (it never
  reaches 169.254.169.254 here: both base URLs are always overridden).

Missing tools (``systemd-analyze``, ``cloud-init``, ``shellcheck``, ``curl``; installed by
``make tools`` through ``scripts/ensure-deploy-tools``) skip their checks with the reason, or fail
them under ``CI=true``. ``systemd-analyze verify`` wants every ``ExecStart`` binary to exist, so it
reads temporary copies of the units whose ``/opt/fleetrun/venv`` and ``/opt/fleetrun/bin`` point
into this checkout: nothing is installed under ``/opt`` or ``/etc`` by the tests.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions
import pytest
import yaml
from helpers import DEAD_BROKER, LINE_PER_FILE, Harness, delete_broker_objects, wait_for
from services import unavailable

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
# The venv these tests run in stands in for /opt/fleetrun/venv.
VENV = Path(sys.prefix) if (Path(sys.prefix) / "bin" / "fleetrun").exists() else REPO / ".venv"
FLEETRUN = VENV / "bin" / "fleetrun"

UNITS = [
    "fleetrun-coordinator.service",
    "fleetrun-worker@.service",
    "fleetrun-drain-on-termination.service",
    "fleetrun-queue-depth.service",
    "fleetrun-queue-depth.timer",
]
SHELL_SCRIPTS = [
    DEPLOY / "scripts" / "drain-on-termination",
    DEPLOY / "scripts" / "publish-queue-depth",
    DEPLOY / "azure" / "create-vmss.sh",
    DEPLOY / "aws" / "create-asg.sh",
    REPO / "scripts" / "ensure-deploy-tools",
]
CLOUD_INITS = ["azure-vmss-worker.yaml", "aws-asg-worker.yaml"]
# Where each file of deploy/ lands on a machine (the units and cloud-init name these paths).
INSTALLED = {
    "/etc/fleetrun/fleetrun.env": SYSTEMD / "fleetrun.env",
    "/etc/systemd/system/fleetrun-worker@.service": SYSTEMD / "fleetrun-worker@.service",
    "/etc/systemd/system/fleetrun-drain-on-termination.service": SYSTEMD
    / "fleetrun-drain-on-termination.service",
    "/opt/fleetrun/bin/drain-on-termination": DEPLOY / "scripts" / "drain-on-termination",
}
PACKAGE_OF = {
    "systemd-analyze": "systemd",
    "cloud-init": "cloud-init",
    "shellcheck": "shellcheck",
    "curl": "curl",
}


def tool(name: str) -> str:
    """The path of a checker; skip (fail under CI=true) when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path:
        return path
    unavailable(
        f"{name} is not installed (Debian package {PACKAGE_OF[name]}): `make tools` installs it "
        "under CI=true, `FLEETRUN_INSTALL_TOOLS=1 make tools` elsewhere"
    )


# -- systemd units, read the way systemd reads them -----------------------------------------------


@dataclass
class Unit:
    """A unit file: its sections, each a list of (key, value) in file order."""

    name: str
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @classmethod
    def load(cls, name: str) -> Unit:
        unit = cls(name)
        section = ""
        for raw in (SYSTEMD / name).read_text().splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            assert not line.endswith("\\"), f"{name}: keep directives on one line: {line}"
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                unit.sections.setdefault(section, [])
                continue
            key, _, value = line.partition("=")
            unit.sections[section].append((key.strip(), value.strip()))
        return unit

    def values(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    def value(self, section: str, key: str) -> str:
        values = self.values(section, key)
        assert len(values) == 1, f"{self.name}: expected one {key}= in [{section}], got {values}"
        return values[0]


def expand_specifiers(text: str, instance: str, root: Path) -> str:
    """systemd's specifiers for a system unit, with test folders for its directory roots."""
    known = {
        "i": instance,
        "I": instance,
        "C": str(root / "cache"),  # /var/cache
        "S": str(root / "state"),  # /var/lib
        "%": "%",
    }

    def one(match: re.Match[str]) -> str:
        letter = match.group(1)
        assert letter in known, f"specifier %{letter} is not handled by this test"
        return known[letter]

    return re.sub(r"%(.)", one, text)


def read_environment_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= as systemd reads it: NAME=value lines, comments, quotes stripped."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), f"{path}: bad line {raw!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name] = value
    return values


@dataclass
class ServiceCommand:
    """What systemd would execute for a unit: argv, environment, working directory."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path

    @classmethod
    def from_unit(
        cls, name: str, root: Path, broker: str, namespace: str, instance: str = "1"
    ) -> ServiceCommand:
        unit = Unit.load(name)
        exec_start = unit.value("Service", "ExecStart")
        assert "$" not in exec_start, f"{name}: this test does not expand variables: {exec_start}"
        command = expand_specifiers(exec_start, instance, root)
        argv = shlex.split(command.replace("/opt/fleetrun/venv", str(VENV)))
        # systemd creates these before the first ExecStart, owned by User=.
        for key, base in (("CacheDirectory", "cache"), ("StateDirectory", "state")):
            for value in unit.values("Service", key):
                for folder in expand_specifiers(value, instance, root).split():
                    (root / base / folder).mkdir(parents=True, exist_ok=True)
        # A service's environment: systemd's own few variables, Environment=, then the
        # EnvironmentFile= (which wins over Environment=), then the test's broker and namespace.
        home = root / "state" / "fleetrun"
        home.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
        for assignments in unit.values("Service", "Environment"):
            for assignment in shlex.split(expand_specifiers(assignments, instance, root)):
                key, _, value = assignment.partition("=")
                env[key] = value
        for path in unit.values("Service", "EnvironmentFile"):
            env.update(read_environment_file(INSTALLED[path.lstrip("-")]))
        env["FLEETRUN_BROKER"] = broker
        env["FLEETRUN_NAMESPACE"] = namespace
        env["FLEETRUN_TEST_TAG"] = namespace  # so that the harness finds what is left
        env["PYTHONUNBUFFERED"] = "1"
        working = unit.value("Service", "WorkingDirectory")
        assert working == "/var/lib/fleetrun", f"{name}: WorkingDirectory={working}"
        return cls(argv, env, home)


def start_service(harness: Harness, service: ServiceCommand, label: str) -> subprocess.Popen[bytes]:
    log = harness.logs_dir / f"{label}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            service.argv, env=service.env, cwd=service.cwd, stdout=handle, stderr=subprocess.STDOUT
        )
    process.log_path = log  # type: ignore[attr-defined]
    harness.processes.append(process)
    return process


def consumer_count(url: str, queue: str) -> int:
    """Consumers of ``queue`` (passive declare), 0 when the queue does not exist yet."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    connection = pika.BlockingConnection(params)
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        connection.close()


@pytest.fixture
def fleet(harness: Harness, rabbitmq_url: str) -> Iterator[Harness]:
    """The harness, plus the daemons' own broker objects deleted at the end."""
    harness.broker_urls.add(rabbitmq_url)
    try:
        yield harness
    finally:
        harness.cleanup()
        ns = harness.namespace
        delete_broker_objects(
            rabbitmq_url, [f"{ns}.jobs", f"{ns}.batches"], [f"{ns}.workers", f"{ns}.rpc"]
        )


# -- the units ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNITS)
def test_each_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # Copies whose /opt paths point into this checkout (verify wants the binaries to exist);
    # all units together, since the timer names its service.
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text()
        text = text.replace("/opt/fleetrun/venv", str(VENV))
        text = text.replace("/opt/fleetrun/bin/", f"{DEPLOY / 'scripts'}/")
        (tmp_path / unit).write_text(text)
    target = name.replace("@.", "@1.")  # a template is verified as an instance

    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / target)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Unknown or misspelt directives are only warnings: any output about our units fails.
    ours = [line for line in result.stderr.splitlines() if "fleetrun" in line]
    assert result.returncode == 0 and not ours, result.stderr


def test_the_worker_unit_drains_instead_of_killing_its_runners() -> None:
    unit = Unit.load("fleetrun-worker@.service")

    assert unit.value("Service", "ExecStart") == "/opt/fleetrun/venv/bin/fleetrun worker"
    assert unit.value("Service", "User") == "fleetrun"
    assert unit.value("Service", "KillSignal") == "SIGTERM"
    assert unit.value("Service", "KillMode") == "mixed"
    assert unit.value("Service", "Restart") == "on-failure"
    assert unit.value("Service", "NoNewPrivileges") == "yes"
    assert unit.value("Service", "ProtectSystem") == "strict"
    assert unit.value("Service", "PrivateTmp") == "yes"
    assert unit.value("Service", "OOMPolicy") == "continue"
    assert "%i" in unit.value("Service", "CacheDirectory")
    assert "FLEETRUN_CACHE_DIR=%C/fleetrun/worker-%i" in unit.values("Service", "Environment")
    assert unit.value("Service", "EnvironmentFile") == "/etc/fleetrun/fleetrun.env"


def test_the_worker_stop_timeout_outlasts_the_drain_and_the_default_invocation_timeout() -> None:
    from fleetrun.common.spec import JobSpec

    stop_timeout = int(Unit.load("fleetrun-worker@.service").value("Service", "TimeoutStopSec"))
    drain_timeout = int(read_environment_file(SYSTEMD / "fleetrun.env")["FLEETRUN_DRAIN_TIMEOUT"])
    default_invocation_timeout = JobSpec.model_fields["run_invocation_timeout"].default

    assert default_invocation_timeout < drain_timeout < stop_timeout


def test_every_fleetrun_variable_of_the_env_file_is_a_setting_of_the_daemons() -> None:
    from fleetrun.common.settings import CoordinatorDaemonSettings, WorkerDaemonSettings

    known = {
        f"FLEETRUN_{name.upper()}"
        for model in (WorkerDaemonSettings, CoordinatorDaemonSettings)
        for name in model.model_fields
    }
    text = (SYSTEMD / "fleetrun.env").read_text()
    documented = set(re.findall(r"^#?(FLEETRUN_[A-Z_]+)=", text, flags=re.MULTILINE))

    assert documented - known == set(), "variables that fleetrun does not read"
    wanted = {
        "FLEETRUN_BROKER",
        "FLEETRUN_NAMESPACE",
        "FLEETRUN_PROCESSES",
        "FLEETRUN_PREFETCH",
        "FLEETRUN_CACHE_DIR",
        "FLEETRUN_LOG_LEVEL",
        "FLEETRUN_MAX_JOBS",
        "FLEETRUN_DRAIN_TIMEOUT",
        "FLEETRUN_TLS_CA_FILE",
        "FLEETRUN_TLS_CERT_FILE",
        "FLEETRUN_TLS_KEY_FILE",
    }
    assert wanted - documented == set(), "settings the env file does not document"


def test_every_variable_of_the_env_file_comes_after_a_comment_that_explains_it() -> None:
    lines = (SYSTEMD / "fleetrun.env").read_text().splitlines()
    assignment = re.compile(r"^#?[A-Z][A-Z0-9_]*=")
    for number, line in enumerate(lines):
        if not assignment.match(line):
            continue
        above = number - 1
        while above >= 0 and assignment.match(lines[above]):
            above -= 1  # a group of related variables shares one comment
        assert above >= 0 and lines[above].startswith("# "), f"line {number + 1}: {line}"


# -- the units' command lines, run as they are ----------------------------------------------------


@pytest.mark.rabbitmq
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["fleetrun-worker@.service", "fleetrun-coordinator.service"])
def test_the_check_of_each_daemon_passes_with_the_unit_settings_and_fails_without_a_broker(
    name: str, fleet: Harness, rabbitmq_url: str, tmp_path: Path
) -> None:
    service = ServiceCommand.from_unit(name, tmp_path / "root", rabbitmq_url, fleet.namespace)

    passed = subprocess.run(
        [*service.argv, "--check"],
        env=service.env,
        cwd=service.cwd,
        capture_output=True,
        text=True,
        timeout=45,
    )
    service.env["FLEETRUN_BROKER"] = DEAD_BROKER
    failed = subprocess.run(
        [*service.argv, "--check"],
        env=service.env,
        cwd=service.cwd,
        capture_output=True,
        text=True,
        timeout=45,
    )

    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "127.0.0.1:1" in failed.stdout + failed.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["fleetrun-worker@.service", "fleetrun-coordinator.service"])
def test_a_daemon_with_an_invalid_setting_exits_2_so_that_systemd_does_not_restart_it(
    name: str, harness: Harness, tmp_path: Path
) -> None:
    # The units say RestartPreventExitStatus=2: a typo in the env file is not worth a restart
    # every 10 s. fleetrun's exit code 2 is "the command line (settings) is invalid".
    service = ServiceCommand.from_unit(name, tmp_path / "root", DEAD_BROKER, harness.namespace)
    assert unit_restart_prevented(name) == {"2"}
    bad = "FLEETRUN_PROCESSES" if "worker" in name else "FLEETRUN_MAX_JOBS"
    service.env[bad] = "four"

    result = subprocess.run(
        service.argv, env=service.env, cwd=service.cwd, capture_output=True, text=True, timeout=45
    )

    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert bad.removeprefix("FLEETRUN_").lower() in output
    assert "Traceback" not in output


def unit_restart_prevented(name: str) -> set[str]:
    values = Unit.load(name).values("Service", "RestartPreventExitStatus")
    return {code for value in values for code in value.split()}


@pytest.mark.rabbitmq
@pytest.mark.timeout(90)
def test_the_worker_unit_command_joins_the_batch_queue_and_drains_on_sigterm(
    fleet: Harness, rabbitmq_url: str, tmp_path: Path
) -> None:
    service = ServiceCommand.from_unit(
        "fleetrun-worker@.service", tmp_path / "root", rabbitmq_url, fleet.namespace, instance="3"
    )
    assert service.argv == [str(FLEETRUN), "worker"]
    assert service.env["FLEETRUN_CACHE_DIR"] == str(tmp_path / "root/cache/fleetrun/worker-3")
    batches = f"{fleet.namespace}.batches"

    worker = start_service(fleet, service, "worker")

    def consuming() -> bool:
        if worker.poll() is not None:
            pytest.fail(f"the worker exited with {worker.returncode}:\n{fleet.log_of(worker)}")
        return consumer_count(rabbitmq_url, batches) >= 1

    wait_for(consuming, 30, f"the worker to consume {batches}", interval=0.3)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, fleet.log_of(worker)
    assert consumer_count(rabbitmq_url, batches) == 0


@pytest.mark.rabbitmq
@pytest.mark.timeout(240)
def test_a_job_submitted_to_the_coordinator_unit_runs_on_the_worker_unit_to_its_end(
    fleet: Harness, rabbitmq_url: str, tmp_path: Path
) -> None:
    fleet.make_inputs(6)
    fleet.write_job(LINE_PER_FILE, mini_batch_size=2)
    root = tmp_path / "root"
    coordinator = start_service(
        fleet,
        ServiceCommand.from_unit(
            "fleetrun-coordinator.service", root, rabbitmq_url, fleet.namespace
        ),
        "coordinator",
    )
    worker = start_service(
        fleet,
        ServiceCommand.from_unit("fleetrun-worker@.service", root, rabbitmq_url, fleet.namespace),
        "worker",
    )
    client = [f"--broker={rabbitmq_url}", f"--namespace={fleet.namespace}"]
    client_env = fleet.env()

    submitted = subprocess.run(
        [str(FLEETRUN), "submit", str(fleet.job_file), *client],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = submitted.stdout.split()[0]
    fleet.job_ids.add(job_id)
    waited = subprocess.run(
        [str(FLEETRUN), "wait", job_id, "--quiet", *client],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=180,
    )

    logs = f"\ncoordinator:\n{fleet.log_of(coordinator)}\nworker:\n{fleet.log_of(worker)}"
    assert waited.returncode == 0, waited.stdout + waited.stderr + logs
    assert fleet.output_lines() == fleet.expected_lines()
    assert fleet.summary()["status"] == "succeeded"
    for daemon in (coordinator, worker):
        daemon.send_signal(signal.SIGTERM)
    for daemon in (coordinator, worker):
        assert daemon.wait(60) == 0, logs


@pytest.mark.rabbitmq
@pytest.mark.timeout(60)
def test_the_queue_depth_script_prints_the_depth_that_fleetrun_status_reports(
    fleet: Harness, rabbitmq_url: str
) -> None:
    env = fleet.env(
        FLEETRUN_BROKER=rabbitmq_url,
        FLEETRUN_NAMESPACE=fleet.namespace,
        FLEETRUN_BIN=str(FLEETRUN),
        METRIC_CLOUD="print",
    )

    result = subprocess.run(
        [str(DEPLOY / "scripts" / "publish-queue-depth")],
        env=env,
        capture_output=True,
        text=True,
        timeout=45,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "QueueDepth 0\n"


# -- scripts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_each_shell_script_parses_and_is_executable(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env bash\n")


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_each_shell_script_is_shellcheck_clean(script: Path) -> None:
    shellcheck = tool("shellcheck")

    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr


# -- the drain script against a fake metadata service ---------------------------------------------


class FakeMetadata:
    """Azure's Scheduled Events and EC2's IMDSv2, on 127.0.0.1, as far as the script uses them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.polls = 0
        self.azure_events: list[dict[str, Any]] = []
        self.azure_events_from_poll: dict[int, list[dict[str, Any]]] = {}
        self.acknowledged: list[Any] = []
        self.aws_lifecycle_from_poll: dict[int, str] = {}
        self.aws_spot_from_poll: dict[int, str] = {}
        self.tokens_issued = 0
        self.refused: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, code: int, body: str = "", kind: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                fake.get(self)

            def do_POST(self) -> None:
                fake.post(self)

            def do_PUT(self) -> None:
                fake.put(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def latest(self, table: dict[int, Any], default: Any) -> Any:
        """The entry of ``table`` for the current poll: the last one at or before it."""
        due = [poll for poll in table if poll <= self.polls]
        return table[max(due)] if due else default

    # Azure: /metadata/...; every call must carry `Metadata: true`.
    def get(self, request: Any) -> None:
        path = urlsplit(request.path).path
        with self.lock:
            if path.startswith("/metadata/"):
                if request.headers.get("Metadata") != "true":
                    self.refused.append(path)
                    return request.reply(400, "missing Metadata: true")
                if path == "/metadata/instance/compute/name":
                    return request.reply(200, "fleetrun-workers_3")
                if path == "/metadata/scheduledevents":
                    self.polls += 1
                    events = self.latest(self.azure_events_from_poll, [])
                    document = {"DocumentIncarnation": self.polls, "Events": events}
                    return request.reply(200, json.dumps(document), "application/json")
            if path.startswith("/latest/"):
                if request.headers.get("X-aws-ec2-metadata-token") != "token-1":
                    self.refused.append(path)
                    return request.reply(401)
                if path == "/latest/meta-data/autoscaling/target-lifecycle-state":
                    self.polls += 1
                    return request.reply(
                        200, self.latest(self.aws_lifecycle_from_poll, "InService")
                    )
                if path == "/latest/meta-data/spot/instance-action":
                    notice = self.latest(self.aws_spot_from_poll, "")
                    return request.reply(200, notice) if notice else request.reply(404)
            request.reply(404)

    def post(self, request: Any) -> None:
        length = int(request.headers.get("Content-Length", 0))
        body = request.rfile.read(length)
        with self.lock:
            if request.headers.get("Metadata") != "true":
                self.refused.append(request.path)
                return request.reply(400)
            self.acknowledged.append(json.loads(body))
        request.reply(200)

    def put(self, request: Any) -> None:
        with self.lock:
            ttl = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            if urlsplit(request.path).path != "/latest/api/token" or not ttl:
                return request.reply(400)
            self.tokens_issued += 1
        request.reply(200, "token-1")


@pytest.fixture
def metadata() -> Iterator[FakeMetadata]:
    fake = FakeMetadata()
    try:
        yield fake
    finally:
        fake.close()


def run_drain(
    tmp_path: Path, azure: str, aws: str, timeout: float = 30, **settings: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The drain script with both metadata URLs on 127.0.0.1 and a stop command that records."""
    tool("curl")
    stopped = tmp_path / "stopped.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAIN_")}
    env.update(
        DRAIN_AZURE_IMDS=azure,
        DRAIN_AWS_IMDS=aws,
        DRAIN_POLL_SECONDS="0.1",
        DRAIN_STOP_COMMAND=f'echo stop "$1" >> {shlex.quote(str(stopped))}',
        DRAIN_PYTHON=sys.executable,
        **settings,
    )
    for url in (env["DRAIN_AZURE_IMDS"], env["DRAIN_AWS_IMDS"]):
        assert urlsplit(url).hostname == "127.0.0.1"  # never the real metadata service
    result = subprocess.run(
        [str(DEPLOY / "scripts" / "drain-on-termination")],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = stopped.read_text().splitlines() if stopped.exists() else []
    return result, lines


def closed_port_url() -> str:
    """A 127.0.0.1 URL where nothing listens."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/metadata"


@pytest.mark.timeout(60)
def test_the_drain_script_drains_on_an_azure_terminate_event_for_this_vm_and_acknowledges_it(
    metadata: FakeMetadata, tmp_path: Path
) -> None:
    elsewhere = {
        "EventId": "E-other",
        "EventType": "Terminate",
        "Resources": ["fleetrun-workers_7"],
        "EventStatus": "Scheduled",
    }
    freeze = {"EventId": "E-freeze", "EventType": "Freeze", "Resources": ["fleetrun-workers_3"]}
    mine = {
        "EventId": "E-mine",
        "EventType": "Terminate",
        "Resources": ["fleetrun-workers_3"],
        "EventStatus": "Scheduled",
    }
    metadata.azure_events_from_poll = {1: [elsewhere, freeze], 4: [elsewhere, freeze, mine]}

    result, stopped = run_drain(
        tmp_path, f"{metadata.url}/metadata", f"{metadata.url}/latest", DRAIN_CLOUD="azure"
    )

    assert result.returncode == 0, result.stderr
    assert stopped == ["stop fleetrun-worker@*"]
    assert metadata.polls >= 4
    assert metadata.acknowledged == [{"StartRequests": [{"EventId": "E-mine"}]}]
    assert metadata.refused == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("notice", ["lifecycle", "spot"])
def test_the_drain_script_drains_on_an_aws_termination_notice(
    notice: str, metadata: FakeMetadata, tmp_path: Path
) -> None:
    if notice == "lifecycle":
        metadata.aws_lifecycle_from_poll = {1: "InService", 3: "Terminated"}
    else:
        metadata.aws_spot_from_poll = {3: '{"action": "terminate", "time": "2026-11-23T15:00:00Z"}'}

    result, stopped = run_drain(
        tmp_path, closed_port_url(), f"{metadata.url}/latest", DRAIN_CLOUD="auto"
    )

    assert result.returncode == 0, result.stderr
    assert stopped == ["stop fleetrun-worker@*"]
    assert metadata.polls >= 3 if notice == "lifecycle" else metadata.polls >= 2
    assert metadata.tokens_issued == 1  # one IMDSv2 token, kept between polls
    assert metadata.refused == []
    assert "lifecycle hook's heartbeat timeout" in result.stderr  # no group named: not completed


@pytest.mark.timeout(60)
def test_the_drain_script_polling_once_without_a_notice_stops_nothing(
    metadata: FakeMetadata, tmp_path: Path
) -> None:
    result, stopped = run_drain(
        tmp_path, f"{metadata.url}/metadata", closed_port_url(), DRAIN_ONCE="1"
    )

    assert result.returncode == 0, result.stderr
    assert stopped == []
    assert metadata.polls == 2  # DRAIN_CLOUD=auto asked once to find Azure, then one poll
    assert metadata.acknowledged == []


@pytest.mark.timeout(60)
def test_the_drain_script_without_any_metadata_service_exits_2_and_says_so(
    tmp_path: Path,
) -> None:
    result, stopped = run_drain(tmp_path, closed_port_url(), closed_port_url())

    assert result.returncode == 2
    assert "neither the Azure nor the AWS metadata service answers" in result.stderr
    assert stopped == []


# -- cloud-init -----------------------------------------------------------------------------------


def cloud_config(name: str) -> dict[str, Any]:
    text = (DEPLOY / "cloud-init" / name).read_text()
    assert text.startswith("#cloud-config\n")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


@pytest.mark.parametrize("name", CLOUD_INITS)
def test_each_cloud_init_file_passes_the_cloud_init_schema(name: str) -> None:
    cloud_init = tool("cloud-init")

    result = subprocess.run(
        [cloud_init, "schema", "--config-file", str(DEPLOY / "cloud-init" / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


@pytest.mark.parametrize("name", CLOUD_INITS)
def test_each_cloud_init_file_embeds_the_units_and_scripts_of_deploy_unchanged(name: str) -> None:
    files = {entry["path"]: entry for entry in cloud_config(name)["write_files"]}

    for path, source in INSTALLED.items():
        if path == "/etc/fleetrun/fleetrun.env":
            continue  # a per-cloud excerpt, checked below
        assert files[path]["content"] == source.read_text(), (
            f"{name}: the copy of {source.relative_to(REPO)} differs; paste the file again"
        )
    assert files["/opt/fleetrun/bin/drain-on-termination"]["permissions"] == "0755"


@pytest.mark.parametrize("name", CLOUD_INITS)
def test_each_cloud_init_file_installs_fleetrun_and_enables_the_workers(
    name: str, tmp_path: Path
) -> None:
    config = cloud_config(name)
    files = {entry["path"]: entry for entry in config["write_files"]}

    assert "python3-venv" in config["packages"]
    fleetrun_user = next(u for u in config["users"] if isinstance(u, dict))
    assert config["users"][0] == "default"
    assert fleetrun_user["name"] == "fleetrun" and fleetrun_user["system"] is True
    env_file = files["/etc/fleetrun/fleetrun.env"]
    assert env_file["owner"] == "root:fleetrun" and env_file["permissions"] == "0640"
    assert env_file["defer"] is True  # written once the fleetrun user exists
    (tmp_path / "fleetrun.env").write_text(env_file["content"])
    settings = read_environment_file(tmp_path / "fleetrun.env")
    assert settings["FLEETRUN_BROKER"].startswith("amqp")
    assert int(settings["FLEETRUN_DRAIN_TIMEOUT"]) < int(
        Unit.load("fleetrun-worker@.service").value("Service", "TimeoutStopSec")
    )
    scripts = [entry[2] for entry in config["runcmd"] if isinstance(entry, list)]
    commands = "\n".join(scripts + [e for e in config["runcmd"] if isinstance(e, str)])
    assert "python3 -m venv /opt/fleetrun/venv" in commands
    assert "fleetrun-worker@$i.service" in commands
    assert "systemctl enable --now fleetrun-drain-on-termination.service" in commands
    for script in scripts:
        result = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


# -- containers -----------------------------------------------------------------------------------


def worker_stop_timeout() -> int:
    return int(Unit.load("fleetrun-worker@.service").value("Service", "TimeoutStopSec"))


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, f"not a compose duration: {duration}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def test_the_compose_file_runs_a_broker_a_coordinator_and_two_draining_workers() -> None:
    compose_dir = DEPLOY / "docker"
    compose = yaml.safe_load((compose_dir / "compose.yaml").read_text())
    services = compose["services"]
    drain_timeout = read_environment_file(SYSTEMD / "fleetrun.env")["FLEETRUN_DRAIN_TIMEOUT"]

    broker = services["rabbitmq"]
    assert broker["image"] == "rabbitmq:3.13-management"
    mounts = [volume.split(":") for volume in broker["volumes"]]
    conf = next(m for m in mounts if m[0].endswith("rabbitmq.conf"))
    assert (compose_dir / conf[0]).resolve() == DEPLOY / "rabbitmq" / "rabbitmq.conf"
    assert conf[1].startswith("/etc/rabbitmq/")

    coordinator, worker = services["coordinator"], services["worker"]
    assert coordinator["command"] == ["coordinator"]
    assert worker["command"] == ["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert seconds(worker["stop_grace_period"]) == worker_stop_timeout()
    assert worker["environment"]["FLEETRUN_DRAIN_TIMEOUT"] == drain_timeout
    for service in (coordinator, worker):
        assert urlsplit(service["environment"]["FLEETRUN_BROKER"]).hostname == "rabbitmq"
        assert "jobs:/data" in service["volumes"]
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        context = (compose_dir / service["build"]["context"]).resolve()
        assert context == REPO
        assert (context / service["build"]["dockerfile"]).is_file()
    assert set(compose["volumes"]) >= {"jobs"}


def test_the_dockerfile_builds_a_non_root_image_whose_entrypoint_is_fleetrun() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    instructions = [
        line for line in text.replace("\\\n", " ").splitlines() if line and line[0] != "#"
    ]
    keyword = {line.split()[0]: line.split(None, 1)[1] for line in instructions}

    assert keyword["FROM"] == "python:3.11-slim"
    assert keyword["USER"].split(":")[0] not in ("root", "0")
    assert json.loads(keyword["ENTRYPOINT"])[-1] == "fleetrun"
    assert keyword["STOPSIGNAL"] == "SIGTERM"
    ignored = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    for line in instructions:
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert f"!{source}" in ignored or f"!{source}/" in ignored, source


def test_the_keda_manifest_scales_the_worker_deployment_on_the_batch_queue() -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "keda-scaledobject.yaml").read_text()))
    by_kind = {document["kind"]: document for document in documents}
    deployment = by_kind["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    drain_timeout = read_environment_file(SYSTEMD / "fleetrun.env")["FLEETRUN_DRAIN_TIMEOUT"]

    assert pod["terminationGracePeriodSeconds"] == worker_stop_timeout()
    assert "lifecycle" not in container  # SIGTERM drains: no preStop hook
    assert container["args"] == ["worker"]
    assert env["FLEETRUN_DRAIN_TIMEOUT"]["value"] == drain_timeout
    secret = env["FLEETRUN_BROKER"]["valueFrom"]["secretKeyRef"]

    auth = by_kind["TriggerAuthentication"]
    [target] = auth["spec"]["secretTargetRef"]
    assert target == {"parameter": "host", "name": secret["name"], "key": secret["key"]}

    scaled = by_kind["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["mode"] == "QueueLength"
    assert trigger["metadata"]["queueName"] == f"{env['FLEETRUN_NAMESPACE']['value']}.batches"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


# -- RabbitMQ -------------------------------------------------------------------------------------


def test_the_rabbitmq_conf_consumer_timeout_covers_the_default_invocation_timeout() -> None:
    from fleetrun.common.spec import JobSpec
    from fleetrun.worker.prefetch import MIN_PER_RUNNER

    settings = {}
    for line in (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    timeout = JobSpec.model_fields["run_invocation_timeout"].default
    # The adaptive prefetch for batches of 20 ms or more (every batch near a timeout).
    held_per_runner = MIN_PER_RUNNER

    # A held batch waits for the one before it on its runner, and maybe for init() (3 T + 30 s).
    needed_ms = ((held_per_runner + 3) * timeout + 30) * 1000
    assert int(settings["consumer_timeout"]) > needed_ms
    assert 5 <= int(settings["heartbeat"]) <= 60
    readme = (DEPLOY / "rabbitmq" / "README.md").read_text()
    assert "rabbitmqctl set_policy" in readme and r"'^fleetrun\.batches$'" in readme
    assert "listeners.ssl.default" in (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()


def test_the_main_readme_points_to_the_deployment_guide() -> None:
    readme = (REPO / "README.md").read_text()

    section = readme.split("## Deployment", 1)[1].split("\n## ", 1)[0]
    assert "deploy/README.md" in section
