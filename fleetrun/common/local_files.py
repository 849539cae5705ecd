"""Files on a local disk written whole or not at all, as object stores write objects.

A file is written under a temporary name and renamed into place; "first writer wins" (a
batch's part) links it into place instead, which fails if the name is taken. Where Linux
allows it the temporary is an unnamed file (``O_TMPFILE``) linked once: allocating and
naming files is the dearest part of writing small ones on a busy ext4 (0.3-0.8 ms of kernel
time per file on our VMs), and an unnamed file costs about half of a named one linked and
unlinked. Nothing is fsynced: the files survive any process crash, not a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import IO

_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_PROC_FDS = os.path.isdir("/proc/self/fd")
# Unnamed files opened ahead of need, by folder (see prepare_new_file); one set per thread.
_spare_files = threading.local()


def _folder_of(path: str) -> str:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    return folder


@contextlib.contextmanager
def atomic_file(path: str, temporary: str | None = None) -> Iterator[IO[bytes]]:
    """A binary file that appears at ``path`` whole when the block ends, or not at all. It
    grows at ``temporary`` (on the same filesystem), by default a unique name beside it."""
    folder = _folder_of(path)
    if temporary is None:
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    else:
        _folder_of(temporary)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_whole(path: str, data: bytes) -> None:
    """Write ``data`` at ``path``, replacing what was there, whole or not at all."""
    with atomic_file(path) as handle:
        handle.write(data)


def write_new(path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` unless a file is already there (then False): of two writers
    racing, exactly one wins."""
    folder = _folder_of(path)
    linked = _link_unnamed(folder, path, data)
    if linked is not None:
        return linked
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.link(temporary, path)  # fails if the name exists: the first writer wins
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    return True


def prepare_new_file(path: str) -> None:
    """Open, ahead of need, the unnamed file that the next :func:`write_new` in ``path``'s
    folder will fill: a runner does it while it waits for its next batch, rather than after
    the batch."""
    folder = os.path.dirname(path) or "."
    spare: dict[str, int] = getattr(_spare_files, "by_folder", {})
    _spare_files.by_folder = spare
    if folder not in spare and (fd := _open_unnamed(folder)) is not None:
        spare[folder] = fd


def _open_unnamed(folder: str) -> int | None:
    """An unnamed file in ``folder``; None where the system or the filesystem has none."""
    if not (_O_TMPFILE and _PROC_FDS):
        return None
    try:
        return os.open(folder, _O_TMPFILE | os.O_WRONLY, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None  # a filesystem (or kernel) without O_TMPFILE
        raise


def _link_unnamed(folder: str, path: str, data: bytes) -> bool | None:
    """:func:`write_new` with an unnamed file (a prepared one if there is); None where the
    system cannot do it."""
    spare: dict[str, int] = getattr(_spare_files, "by_folder", {})
    prepared = spare.pop(folder, None)
    fd = prepared if prepared is not None else _open_unnamed(folder)
    if fd is None:
        return None
    try:
        with open(fd, "wb", closefd=False) as handle:
            handle.write(data)
        # linkat(2) with AT_SYMLINK_FOLLOW (which os.link uses once a dir fd is given): it fails
        # if the name exists, so the first writer wins.
        os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)
    except FileExistsError:
        return False
    except FileNotFoundError:
        if prepared is None:
            raise
        # The folder was removed and made again since the file was prepared: a fresh one.
        return _link_unnamed(folder, path, data)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
            raise
        # linkat through /proc refused (a restricted /proc, say): named temporaries from now on.
        global _O_TMPFILE
        _O_TMPFILE = 0
        return None
    finally:
        os.close(fd)
    return True
