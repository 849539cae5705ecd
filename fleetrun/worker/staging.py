"""Giving ``run()`` local paths: local inputs as they are, remote ones fetched to a cache folder."""

from __future__ import annotations

import hashlib
import posixpath
import shutil
from pathlib import Path
from typing import Any

from fleetrun.common import storage
from fleetrun.common.storage import StorageOptions


def _fetch(uri: str, fs: Any, paths: list[str], targets: list[str]) -> None:
    storage.call(uri, lambda: fs.get(paths, targets))


class StagedBatch:
    """The local paths of one batch's inputs; :meth:`cleanup` removes what was fetched."""

    def __init__(self, local_paths: list[str], folder: Path | None) -> None:
        self.local_paths = local_paths
        self._folder = folder

    def cleanup(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


def stage(items: list[str], folder: Path, options: StorageOptions) -> StagedBatch:
    """Fetch the remote items of a batch into ``folder``; local items are never copied."""
    remote = [uri for uri in items if not storage.is_local(uri)]
    if not remote:
        return StagedBatch([storage.local_path(uri) for uri in items], None)
    folder.mkdir(parents=True, exist_ok=True)
    local: dict[str, str] = {}
    for uri in remote:
        # Keep the file name (scripts often parse it); a hash prefix keeps equal names apart.
        digest = hashlib.sha1(uri.encode()).hexdigest()[:8]
        local[uri] = str(folder / digest / posixpath.basename(uri.rstrip("/")))
        Path(local[uri]).parent.mkdir(parents=True, exist_ok=True)
    by_fs: dict[int, tuple[Any, list[str], list[str], str]] = {}
    for uri in remote:
        fs, path = storage.filesystem(uri, options)
        entry = by_fs.setdefault(id(fs), (fs, [], [], uri))
        entry[1].append(path)
        entry[2].append(local[uri])
    for fs, paths, targets, first in by_fs.values():
        # fsspec fetches a list concurrently; errors come out translated, naming a URI.
        _fetch(first, fs, paths, targets)
    return StagedBatch([local.get(uri, storage.local_path(uri)) for uri in items], folder)
