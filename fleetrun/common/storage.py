"""Storage access: every read, write and listing of fleetrun goes through here, on fsspec.

Two things fsspec does not promise are added here. Atomic writes on a local disk
(:mod:`fleetrun.common.local_files`); object stores (S3, Azure Blob, GCS) make each object
whole-or-absent by themselves. And errors that tell a person what
to do: a third-party exception is retried when it is transient (a timeout, a 5xx, throttling)
and otherwise translated into a :class:`StorageError` naming the URI and the likely fix.
``FileNotFoundError`` is kept as it is, since a missing object is often an expected outcome.

Credentials never pass through here: the SDKs find them in the environment or their standard
chains (``AZURE_STORAGE_CONNECTION_STRING``, ``AWS_*``, managed identities, instance roles).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from fleetrun.common import local_files
from fleetrun.common.errors import StorageError

StorageOptions = Mapping[str, Mapping[str, Any]]
T = TypeVar("T")

# Listing caches make exists()/info() lie after another process writes (storage.md, gotcha 13);
# a fleet is nothing but other processes writing.
_REMOTE_DEFAULTS: dict[str, Any] = {"use_listings_cache": False}
_EXTRAS = {"gs": "gcs", "gcs": "gcs"}
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


def protocol_of(uri: str) -> str:
    """``s3`` for ``s3://bucket/key``, ``file`` for plain paths and ``file://`` URIs."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep else "file"


def is_local(uri: str) -> bool:
    return protocol_of(uri) in ("file", "local")


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (``file:///x`` → ``/x``)."""
    return uri.split("://", 1)[1] if "://" in uri else uri


def resolve_uri(uri: str, base_dir: Path) -> str:
    """Make a plain relative path absolute against ``base_dir``; URIs are kept as they are."""
    if not is_local(uri):
        return uri.rstrip("/") if not uri.endswith("://") else uri
    path = Path(os.path.expanduser(local_path(uri)))
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri.rstrip("/"), *parts)


def with_protocol(uri: str, path: str) -> str:
    """A path as fsspec returns it (``bucket/key``), as a URI of ``uri``'s protocol."""
    if is_local(uri):
        return path if "://" not in uri else f"file://{path}"
    return f"{uri.split('://', 1)[0]}://{path.lstrip('/')}"


def filesystem(uri: str, options: StorageOptions | None = None) -> tuple[Any, str]:
    """The fsspec filesystem for ``uri`` (with the spec's options for its protocol) and the path."""
    # Imported here: a runner of a job on local files never needs fsspec (~40 ms to import).
    from fsspec.core import url_to_fs

    protocol = protocol_of(uri)
    kwargs = {} if is_local(uri) else dict(_REMOTE_DEFAULTS)
    kwargs.update((options or {}).get(protocol, {}))
    try:
        fs, path = url_to_fs(uri, **kwargs)
    except ImportError as exc:
        hint = f"pip install 'fleetrun[{_EXTRAS.get(protocol, protocol)}]'"
        raise StorageError(f"no filesystem for {uri}: {exc}; install it with {hint}") from exc
    except ValueError as exc:
        raise translate(exc, uri) from exc
    return fs, str(path)


# -- errors ------------------------------------------------------------------------------------


def _status(exc: BaseException) -> int:
    for attribute in ("status_code", "status"):
        value = getattr(exc, attribute, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata", {})
        return int(meta.get("HTTPStatusCode", 0) or 0)
    return 0


def is_transient(exc: BaseException) -> bool:
    """A timeout, a dropped connection, throttling or a server error: worth another go."""
    if isinstance(exc, FileNotFoundError | PermissionError | FileExistsError | IsADirectoryError):
        return False
    if isinstance(exc, TimeoutError | ConnectionResetError | ConnectionAbortedError):
        return True
    name = type(exc).__name__
    if name in {
        "ServiceResponseError",
        "ServiceResponseTimeoutError",
        "ServerDisconnectedError",
        "ReadTimeoutError",
        "ClientPayloadError",
        "IncompleteReadError",
    }:
        return True
    return _status(exc) in _TRANSIENT_STATUS


def translate(exc: BaseException, uri: str) -> BaseException:
    """The exception a person should see for ``exc`` on ``uri``."""
    if isinstance(exc, FileNotFoundError | FileExistsError | StorageError):
        return exc
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else name
    protocol = protocol_of(uri)
    creds = {
        "s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role",
        "az": "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with a key or a "
        "managed identity",
    }.get("az" if protocol in ("az", "abfs", "abfss") else protocol, "the credentials")
    if name == "ResourceNotFoundError" or "ContainerNotFound" in text or "NoSuchBucket" in text:
        return StorageError(
            f"{uri}: the container or bucket does not exist ({text}); create it, or fix the URI"
        )
    if (
        isinstance(exc, PermissionError)
        or name in {"ClientAuthenticationError", "NoCredentialsError", "PartialCredentialsError"}
        or _status(exc) in (401, 403)
    ):
        return StorageError(
            f"{uri}: access refused ({text}). Check {creds} in the environment of every "
            "machine, and that they may read and write this location."
        )
    if "Must provide either a connection_string" in text or "credentials" in text.lower():
        return StorageError(f"{uri}: no credentials found ({text}). Set {creds}.")
    if name in {
        "ServiceRequestError",
        "EndpointConnectionError",
        "ClientConnectorError",
        "ConnectTimeoutError",
    } or isinstance(exc, ConnectionError):
        endpoint = "AWS_ENDPOINT_URL" if protocol == "s3" else "the endpoint"
        return StorageError(
            f"{uri}: the storage endpoint cannot be reached ({text}). Check {endpoint}, the "
            "network and the firewall."
        )
    return StorageError(f"{uri}: {name}: {text}")


def call(uri: str, operation: Callable[[], T], *, retry: bool = True) -> T:
    """Run one storage operation on ``uri``: transient errors are retried with backoff, the
    others (and transient ones that persist) come out translated."""
    delays = RETRY_DELAYS if retry else ()
    for delay in (*delays, None):
        try:
            return operation()
        except Exception as exc:
            if delay is not None and is_transient(exc):
                time.sleep(delay)
                continue
            translated = translate(exc, uri)
            if translated is exc:
                raise
            raise translated from exc
    raise AssertionError("unreachable")


# -- reading and writing -----------------------------------------------------------------------


def exists(uri: str, options: StorageOptions | None = None) -> bool:
    if is_local(uri):
        return os.path.exists(local_path(uri))
    fs, path = filesystem(uri, options)
    return bool(call(uri, lambda: fs.exists(path)))


def read_bytes(uri: str, options: StorageOptions | None = None) -> bytes:
    if is_local(uri):
        return Path(local_path(uri)).read_bytes()
    fs, path = filesystem(uri, options)
    return bytes(call(uri, lambda: fs.cat_file(path)))


def open_file(uri: str, mode: str = "rb", options: StorageOptions | None = None) -> IO[Any]:
    if is_local(uri):
        if "w" in mode:
            os.makedirs(os.path.dirname(local_path(uri)) or ".", exist_ok=True)
        return open(local_path(uri), mode)
    kwargs = dict(_REMOTE_DEFAULTS) | dict((options or {}).get(protocol_of(uri), {}))
    import fsspec

    opened: IO[Any] = call(uri, lambda: fsspec.open(uri, mode, **kwargs).open())
    return opened


@contextlib.contextmanager
def atomic_writer(
    uri: str, options: StorageOptions | None = None, *, temporary: str | None = None
) -> Iterator[IO[bytes]]:
    """A binary file that appears at ``uri`` whole when the block ends, or not at all.

    On failure the previous object at ``uri``, if any, is left as it was. The file grows at
    ``temporary`` (a URI on the same filesystem or bucket; by default a unique name beside
    ``uri``) and is moved into place at the end.
    """
    if is_local(uri):
        with local_files.atomic_file(
            local_path(uri), None if temporary is None else local_path(temporary)
        ) as handle:
            yield handle
        return
    # Stream into a temporary object, then move it into place (a server-side copy): readers
    # never see a half object, and a failure leaves the previous one alone.
    fs, path = filesystem(uri, options)
    folder, name = posixpath.split(path)
    if temporary is None:
        temporary = posixpath.join(folder, f".tmp-{uuid.uuid4().hex[:12]}-{name}")
    else:
        temporary = filesystem(temporary, options)[1]
    remote = call(uri, lambda: fs.open(temporary, "wb"), retry=False)
    try:
        yield remote
        call(uri, remote.close, retry=False)
        call(uri, lambda: fs.mv(temporary, path))
    except BaseException:
        # An exception inside a streamed upload would commit the part written so far
        # (storage.md, gotcha 15): abort it, and delete whatever got committed anyway.
        discard = getattr(remote, "discard", None)
        if callable(discard):
            with contextlib.suppress(Exception):
                discard()
        with contextlib.suppress(Exception):
            remote.close()
        with contextlib.suppress(Exception):
            if fs.exists(temporary):
                fs.rm_file(temporary)
        raise


def write_bytes(
    uri: str, data: bytes, options: StorageOptions | None = None, *, exclusive: bool = False
) -> bool:
    """Write ``data`` whole or not at all. With ``exclusive`` an existing object wins.

    Returns False when ``exclusive`` and the object already existed (nothing was written).
    """
    if not is_local(uri):
        fs, path = filesystem(uri, options)
        mode = "create" if exclusive else "overwrite"
        try:
            # "create" is a conditional put (S3 If-None-Match, Azure overwrite=False): of two
            # writers racing, exactly one wins.
            call(uri, lambda: fs.pipe_file(path, data, mode=mode))
        except FileExistsError:
            return False
        except FileNotFoundError as exc:  # an object store says this of a missing bucket
            raise StorageError(
                f"{uri}: the container or bucket does not exist ({exc}); create it, or fix the URI"
            ) from exc
        return True
    if exclusive:
        return local_files.write_new(local_path(uri), data)
    local_files.write_whole(local_path(uri), data)
    return True


def prepare_new_file(uri: str) -> None:
    """Make ready, while there is time, the file that the next exclusive write beside ``uri``
    will fill (see :func:`local_files.prepare_new_file`). Nothing for object stores."""
    if is_local(uri):
        local_files.prepare_new_file(local_path(uri))


def touch(uri: str, options: StorageOptions | None = None) -> None:
    """Create an empty marker object (its existence is all it says)."""
    if is_local(uri):
        path = local_path(uri)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        return
    write_bytes(uri, b"", options)


def list_names(uri: str, options: StorageOptions | None = None) -> list[str]:
    """The names (not paths) of the files directly inside folder ``uri``; empty if absent."""
    if is_local(uri):
        try:
            return sorted(e.name for e in os.scandir(local_path(uri)) if e.is_file())
        except FileNotFoundError:
            return []
    fs, path = filesystem(uri, options)
    try:
        entries = call(uri, lambda: fs.ls(path, detail=True))
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e["name"]) for e in entries if e["type"] == "file")


def remove_tree(uri: str, options: StorageOptions | None = None) -> None:
    """Delete a folder and everything below it; absent is fine."""
    fs, path = filesystem(uri, options)
    with contextlib.suppress(FileNotFoundError):
        call(uri, lambda: fs.rm(path, recursive=True))
