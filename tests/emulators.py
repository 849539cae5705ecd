"""Real local object stores for the tests: Azurite (Azure Blob) and moto's S3 server.

A pytest plugin (``pytest_plugins`` in ``tests/conftest.py``). Each server is started once per
session on a free port of 127.0.0.1, as its own process in its own session, with its log in a
temporary file, and stopped at the end. The clients are pointed at them the way a user points
fleetrun at a cloud: by the environment (``cloud_env``), never by mocks.

When a server cannot start (Azurite not installed, a timeout), its tests are skipped, except
under ``CI=true``, where they fail and say how to fix it (``make tools``).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from services import unavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / "tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
MOTO_BIN = Path(sys.executable).parent / "moto_server"

# Azurite's well-known development account (public, the same in every Azurite).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
S3_KEY = "testing"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

# Variables from a developer's shell that would send the clients elsewhere than the emulators.
_INTERFERING = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
)


@dataclass(frozen=True)
class Azurite:
    """A running Azurite blob service."""

    port: int
    log: Path

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={self.blob_endpoint};"
        )

    @property
    def env(self) -> dict[str, str]:
        """The environment a user sets to reach it."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}


@dataclass(frozen=True)
class S3Server:
    """A running moto server (S3 and the rest of moto's services)."""

    port: int
    log: Path

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment a user sets to reach it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }


class ServerUnavailable(Exception):
    """The emulator could not be started; the message says why."""


def _unavailable(name: str, reason: str, fix: str) -> NoReturn:
    unavailable(f"{name} is not available: {reason}. Fix: {fix}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _http_status(url: str) -> int | None:
    """The HTTP status ``url`` answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (its own session), then SIGKILL after a grace time."""
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)


def _start(
    command: list[str], log: Path, ready_url: str, ready: set[int] | None
) -> subprocess.Popen[bytes]:
    """Start ``command`` and wait until ``ready_url`` answers (with a status in ``ready``).

    ``ready=None`` accepts any HTTP answer. Raises :class:`ServerUnavailable` with the log's
    last lines when the process exits or does not answer within the time limit.
    """
    with log.open("ab") as handle:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=log.parent,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerUnavailable(
                f"`{' '.join(command)}` exited with {process.returncode}; log {log}:\n{_tail(log)}"
            )
        status = _http_status(ready_url)
        if status is not None and (ready is None or status in ready):
            return process
        time.sleep(0.1)
    _stop(process)
    raise ServerUnavailable(
        f"{ready_url} did not answer within {START_TIMEOUT_S:.0f} s (last status {status}); "
        f"log {log}:\n{_tail(log)}"
    )


def _start_on_free_port(
    command_for: Any, ready_path: str, ready: set[int] | None, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server on a free port, trying again if another process took the port meanwhile."""
    last: ServerUnavailable | None = None
    for _ in range(3):
        port = _free_port()
        try:
            process = _start(command_for(port), log, f"http://127.0.0.1:{port}{ready_path}", ready)
        except ServerUnavailable as exc:
            last = exc
            if "EADDRINUSE" not in str(exc) and "Address already in use" not in str(exc):
                break
            continue
        return process, port
    raise ServerUnavailable(str(last))


@pytest.fixture(scope="session")
def emulator_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the emulators' logs, under pytest's temporary folder (kept after the run)."""
    return tmp_path_factory.mktemp("emulators")


@pytest.fixture(scope="session")
def azurite(emulator_logs: Path) -> Iterator[Azurite]:
    """Azurite's blob service, in memory, on a free port of 127.0.0.1."""
    fix = "run `make tools`, which installs Azurite with npm into tools/azurite"
    if not os.access(AZURITE_BIN, os.X_OK):
        _unavailable("Azurite", f"{AZURITE_BIN.relative_to(REPO_ROOT)} is not installed", fix)
    log = emulator_logs / "azurite.log"

    def command(port: int) -> list[str]:
        # --skipApiVersionCheck: the Python SDK speaks a newer API version than Azurite knows.
        return [
            str(AZURITE_BIN),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]

    try:
        # An unauthenticated list answers 403 once the service is up.
        process, port = _start_on_free_port(command, f"/{AZURITE_ACCOUNT}?comp=list", None, log)
    except ServerUnavailable as exc:
        _unavailable("Azurite", str(exc), fix)
    try:
        yield Azurite(port=port, log=log)
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def s3_server(emulator_logs: Path) -> Iterator[S3Server]:
    """moto's server (S3) on a free port of 127.0.0.1."""
    fix = "run `make install`: moto[server] is a dev dependency"
    if not os.access(MOTO_BIN, os.X_OK):
        _unavailable("moto_server", f"{MOTO_BIN} is not installed", fix)
    log = emulator_logs / "moto.log"

    def command(port: int) -> list[str]:
        return [str(MOTO_BIN), "-H", "127.0.0.1", "-p", str(port)]

    try:
        process, port = _start_on_free_port(command, "/moto-api/", {200}, log)
    except ServerUnavailable as exc:
        _unavailable("moto_server", str(exc), fix)
    try:
        yield S3Server(port=port, log=log)
    finally:
        _stop(process)


@functools.cache
def azure_filesystem(server: Azurite) -> Any:
    """An adlfs filesystem on ``server`` of the tests' own, outside fsspec's instance cache and
    without a listing cache (so it always sees what other clients wrote)."""
    import adlfs

    return adlfs.AzureBlobFileSystem(
        connection_string=server.connection_string,
        skip_instance_cache=True,
        use_listings_cache=False,
    )


@functools.cache
def s3_filesystem(server: S3Server) -> Any:
    """An s3fs filesystem on ``server`` of the tests' own, outside fsspec's instance cache and
    without a listing cache (so it always sees what other clients wrote)."""
    import s3fs

    return s3fs.S3FileSystem(
        key=S3_KEY,
        secret=S3_KEY,
        endpoint_url=server.endpoint_url,
        skip_instance_cache=True,
        use_listings_cache=False,
    )


def _bucket_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def azure_container(azurite: Azurite) -> Iterator[str]:
    """A fresh, empty container on Azurite: its ``az://<name>`` URI. Deleted afterwards."""
    fs = azure_filesystem(azurite)
    name = _bucket_name()
    fs.mkdir(name)  # not makedirs: that is a silent no-op on adlfs
    try:
        yield f"az://{name}"
    finally:
        with suppress(Exception):
            fs.rmdir(name)  # deletes the container and every blob in it, in one call


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty bucket on moto: its ``s3://<name>`` URI. Deleted afterwards."""
    fs = s3_filesystem(s3_server)
    name = _bucket_name()
    fs.mkdir(name)
    try:
        yield f"s3://{name}"
    finally:
        with suppress(Exception):
            fs.rm(name, recursive=True)


def _set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, str]:
    for name in _INTERFERING:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def azure_env(monkeypatch: pytest.MonkeyPatch, azurite: Azurite) -> dict[str, str]:
    """The Azure part of ``cloud_env``, for tests that need only Azurite."""
    return _set_env(monkeypatch, azurite.env)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> dict[str, str]:
    """The S3 part of ``cloud_env``, for tests that need only moto."""
    return _set_env(monkeypatch, s3_server.env)


@pytest.fixture
def cloud_env(
    monkeypatch: pytest.MonkeyPatch, azurite: Azurite, s3_server: S3Server
) -> dict[str, str]:
    """Point ``az://``/``abfs://`` and ``s3://`` at the emulators, as a user would: by env.

    Returns the variables set, to pass on to subprocesses (``{**os.environ, **cloud_env}``;
    ``os.environ`` holds them already for the test's duration). The SDKs read them when a
    filesystem is created, so fsspec instances created under another environment must not be
    reused (fsspec caches instances by their arguments).
    """
    return _set_env(monkeypatch, {**azurite.env, **s3_server.env})
