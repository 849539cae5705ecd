"""Listing a job's inputs: lazily, in lexicographic URI order, without a listing cache.

The generic path walks one folder level at a time with ``fs.ls`` (children sorted by name, with
a folder's name followed by ``/``, which yields files in the order of their full paths). S3 and
Azure Blob list a whole prefix flat, in key order, page by page: there the pages are streamed
as they come (fsspec has no public paginated listing, so this reaches into s3fs's and adlfs's
async listing), so a prefix of millions of keys starts yielding after its first page.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, NamedTuple

from fsspec.utils import glob_translate

from fleetrun.common.storage import StorageOptions, call, filesystem, with_protocol

_GLOB_CHARS = set("*?[")
_FOLDER_MARKERS = ("is_directory", "hdi_isfolder")


def _drain(
    loop: asyncio.AbstractEventLoop, agen: AsyncIterator[Any], chunk: int = 1000
) -> Iterator[Any]:
    """Consume an async generator that runs on fsspec's I/O loop, from this thread, up to
    ``chunk`` items per hop between the threads (one hop per key cost more than the listing)."""

    async def step() -> list[Any]:
        items: list[Any] = []
        async for item in agen:
            items.append(item)
            if len(items) >= chunk:
                break
        return items

    while items := asyncio.run_coroutine_threadsafe(step(), loop).result():
        yield from items


class InputFile(NamedTuple):
    """One listed input: its URI and, where the listing says, its size in bytes."""

    uri: str
    size: int | None = None


def _s3_keys(fs: Any, path: str) -> Iterator[tuple[str, int | None]]:
    bucket, _, prefix = path.partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    for entry in _drain(fs.loop, fs._iterdir(bucket, prefix=prefix, delimiter="")):
        if entry.get("type") == "file" and not entry["name"].endswith("/"):
            yield entry["name"], entry.get("size")


def _azure_blobs(fs: Any, path: str) -> Iterator[tuple[str, int | None]]:
    container, _, prefix = path.partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""

    async def blobs() -> AsyncIterator[tuple[str, int | None]]:
        async with fs.service_client.get_container_client(container=container) as client:
            async for blob in client.list_blobs(name_starts_with=prefix, include=["metadata"]):
                metadata = blob.metadata or {}
                if blob.name.endswith("/") or _is_folder_marker(metadata):
                    continue  # a folder marker blob, not a file
                yield f"{container}/{blob.name}", blob.size

    yield from _drain(fs.loop, blobs())


def _is_folder_marker(metadata: dict[str, Any] | None) -> bool:
    """Tools that "create a folder" in a bucket leave a marker object; it is not an input."""
    return any(str((metadata or {}).get(k, "")).lower() == "true" for k in _FOLDER_MARKERS)


def _walk_local(path: str) -> Iterator[tuple[str, int | None]]:
    """A local folder, depth first in name order. ``os.scandir`` tells files from folders
    without a ``stat`` per entry; sizes are left unknown (a tabular plan asks for the few it
    needs), which lists 20,000 files about six times faster than ``fs.ls(detail=True)``."""
    with os.scandir(path) as found:  # names alone: half the cost of a tuple per entry
        names = [e.name + "/" if e.is_dir() else e.name for e in found]
    names.sort()
    prefix = path if path.endswith("/") else path + "/"
    for name in names:
        if name.endswith("/"):
            yield from _walk_local(prefix + name[:-1])
        else:
            yield prefix + name, None


def _walk_sorted(fs: Any, path: str) -> Iterator[tuple[str, int | None]]:
    entries = fs.ls(path, detail=True)
    keyed = sorted(
        (entry["name"].rstrip("/") + ("/" if entry["type"] == "directory" else ""), entry)
        for entry in entries
    )
    for key, entry in keyed:
        if entry["type"] == "directory":
            yield from _walk_sorted(fs, key.rstrip("/"))
        else:
            yield entry["name"], entry.get("size")


def _flat_lister(fs: Any) -> Callable[[Any, str], Iterator[tuple[str, int | None]]] | None:
    kind = type(fs).__name__
    if kind == "S3FileSystem" and hasattr(fs, "_iterdir"):
        return _s3_keys
    if kind == "AzureBlobFileSystem" and hasattr(fs, "service_client"):
        return _azure_blobs
    return None


def _list_one(uri: str, options: StorageOptions | None) -> Iterator[InputFile]:
    fs, path = filesystem(uri, options)
    flat = _flat_lister(fs)
    if _GLOB_CHARS.intersection(path) and flat is not None:
        # On an object store: list the pattern's fixed prefix flat (streaming, in key order,
        # raw key names, so folder markers show as such) and match the keys to the pattern.
        pattern = re.compile(glob_translate(path))
        fixed = path[: min(path.find(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
        keys = flat(fs, fixed)
        while (found := call(uri, lambda: next(keys, None), retry=False)) is not None:
            if pattern.match(found[0]):
                yield InputFile(with_protocol(uri, found[0]), found[1])
        return
    if _GLOB_CHARS.intersection(path):
        matches = call(uri, lambda: fs.glob(path, detail=True))
        for name in sorted(matches):
            info = matches[name]
            marker = name.endswith("/") or _is_folder_marker(info.get("metadata"))
            if info.get("type") == "file" and not marker:
                yield InputFile(with_protocol(uri, name), info.get("size"))
        return
    info = call(uri, lambda: _info_or_none(fs, path))
    if info is None:
        raise FileNotFoundError(f"input {uri} does not exist: check the path in 'inputs'")
    if info.get("type") == "file":
        yield InputFile(with_protocol(uri, path), info.get("size"))
        return
    if type(fs).__name__ == "LocalFileSystem":
        pages = _walk_local(path.rstrip("/") or "/")
    else:
        pages = (flat or _walk_sorted)(fs, path.rstrip("/"))
    # A thousand entries per call: error translation per entry cost as much as the listing.
    while chunk := call(uri, lambda: list(itertools.islice(pages, 1000)), retry=False):
        for name, size in chunk:
            yield InputFile(with_protocol(uri, name), size)


def _info_or_none(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = fs.info(path)
    except FileNotFoundError:
        return None
    return info


def list_input_files(
    uris: Iterable[str], options: StorageOptions | None = None
) -> Iterator[InputFile]:
    """Stream every input file of ``uris`` in lexicographic URI order, without duplicates.

    Each input is listed lazily and the inputs are merged, so the first files come out before
    a large listing finishes, even when the inputs are on different clouds.
    """
    listings = [_list_one(u, options) for u in uris]
    merged = listings[0] if len(listings) == 1 else heapq.merge(*listings, key=lambda f: f.uri)
    previous = None
    for found in merged:
        if found.uri != previous:
            yield found
            previous = found.uri


def list_inputs(uris: Iterable[str], options: StorageOptions | None = None) -> Iterator[str]:
    """The URIs of :func:`list_input_files`."""
    for found in list_input_files(uris, options):
        yield found.uri
