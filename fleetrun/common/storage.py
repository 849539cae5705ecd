"""Storage access: every read, write and listing goes through here, on fsspec.

Local paths take a faster road for two things fsspec does not promise: atomic replacement
(write to a temporary name, then rename or link) and first-writer-wins creation. Object stores
(S3, Azure Blob, GCS) give both whole-or-nothing objects by themselves, so a plain put is used
there.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import posixpath
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from fleetrun.common.errors import StorageError

StorageOptions = Mapping[str, Mapping[str, Any]]
_GLOB_CHARS = set("*?[")


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


def filesystem(uri: str, options: StorageOptions | None = None) -> tuple[Any, str]:
    """The fsspec filesystem for ``uri`` (with the spec's options for its protocol) and the path."""
    protocol = protocol_of(uri)
    kwargs = dict((options or {}).get(protocol, {}))
    try:
        fs, path = url_to_fs(uri, **kwargs)
        return fs, str(path)
    except ImportError as exc:
        extra = {"s3": "s3", "az": "azure", "abfs": "azure", "gs": "gcs", "gcs": "gcs"}
        hint = f"pip install 'fleetrun[{extra.get(protocol, protocol)}]'"
        raise StorageError(f"no filesystem for {uri}: {exc}; install it with {hint}") from exc


def _with_protocol(uri: str, path: str) -> str:
    protocol = protocol_of(uri)
    if protocol == "file" and "://" not in uri:
        return path
    return f"{uri.split('://', 1)[0]}://{path.lstrip('/') if protocol != 'file' else path}"


def _walk_sorted(fs: Any, path: str) -> Iterator[str]:
    """Every file under ``path`` in lexicographic order of the full path, one level at a time."""
    entries = fs.ls(path, detail=True, refresh=True)
    # Sorting a folder's children by name, with '/' after folder names, and descending into each
    # folder in place yields the files in the order of their full path strings.
    keyed = sorted(
        (entry["name"].rstrip("/") + ("/" if entry["type"] == "directory" else ""), entry)
        for entry in entries
    )
    for key, entry in keyed:
        if entry["type"] == "directory":
            yield from _walk_sorted(fs, key.rstrip("/"))
        else:
            yield entry["name"]


def _list_one(uri: str, options: StorageOptions | None) -> Iterator[str]:
    fs, path = filesystem(uri, options)
    if _GLOB_CHARS.intersection(path):
        for found in sorted(fs.glob(path)):
            if fs.isfile(found):
                yield _with_protocol(uri, found)
        return
    if not fs.exists(path):
        raise FileNotFoundError(f"input {uri} does not exist: check the path in 'inputs'")
    if fs.isfile(path):
        yield _with_protocol(uri, path)
        return
    for found in _walk_sorted(fs, path):
        yield _with_protocol(uri, found)


def list_inputs(uris: Iterable[str], options: StorageOptions | None = None) -> Iterator[str]:
    """Stream every input file of ``uris`` in lexicographic URI order, without duplicates.

    Each input is listed lazily, folder by folder, and the inputs are merged, so the first
    files come out before a large listing finishes.
    """
    previous = None
    for uri in heapq.merge(*(_list_one(u, options) for u in uris)):
        if uri != previous:
            yield uri
            previous = uri


def exists(uri: str, options: StorageOptions | None = None) -> bool:
    if is_local(uri):
        return os.path.exists(local_path(uri))
    fs, path = filesystem(uri, options)
    return bool(fs.exists(path))


def read_bytes(uri: str, options: StorageOptions | None = None) -> bytes:
    if is_local(uri):
        return Path(local_path(uri)).read_bytes()
    fs, path = filesystem(uri, options)
    return bytes(fs.cat_file(path))


def open_file(uri: str, mode: str = "rb", options: StorageOptions | None = None) -> IO[Any]:
    if is_local(uri):
        if "w" in mode:
            os.makedirs(os.path.dirname(local_path(uri)) or ".", exist_ok=True)
        return open(local_path(uri), mode)
    return fsspec.open(uri, mode, **dict((options or {}).get(protocol_of(uri), {}))).open()  # type: ignore[no-any-return]


def write_bytes(
    uri: str, data: bytes, options: StorageOptions | None = None, *, exclusive: bool = False
) -> bool:
    """Write ``data`` whole or not at all. With ``exclusive`` an existing object wins.

    Returns False when ``exclusive`` and the object already existed (nothing was written).
    """
    if not is_local(uri):
        fs, path = filesystem(uri, options)
        if exclusive and fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return True
    path = local_path(uri)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if exclusive:
            try:
                os.link(temporary, path)  # fails if the name exists: the first writer wins
            except FileExistsError:
                return False
            return True
        os.replace(temporary, path)
        temporary = ""
        return True
    finally:
        if temporary:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


def list_names(uri: str, options: StorageOptions | None = None) -> list[str]:
    """The names (not paths) of the files directly inside folder ``uri``; empty if absent."""
    if is_local(uri):
        try:
            return sorted(e.name for e in os.scandir(local_path(uri)) if e.is_file())
        except FileNotFoundError:
            return []
    fs, path = filesystem(uri, options)
    try:
        entries = fs.ls(path, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e["name"]) for e in entries if e["type"] == "file")


def remove_tree(uri: str, options: StorageOptions | None = None) -> None:
    """Delete a folder and everything below it; absent is fine."""
    fs, path = filesystem(uri, options)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)
