"""Which tries of a batch have started: the record that makes a crashed holder's try count.

A worker records a try as started before a runner gets the batch. When the batch comes back
from the broker (its holder was killed, cut off, or drained), the next holder counts the
returns whose try had started and ignores the others, so a batch that a dead or draining
worker merely held costs no try.

On a local disk each worker process appends one line per try to a log of its own,
``<state>/tries/<host>-<pid>-<random>-<run id>.log``: creating a file per try cost as much
CPU as all the rest of a no-op batch on our VMs (0.3-0.8 ms of kernel time per file when ext4
is busy), while an append costs a few microseconds. Each run of a job gets new logs, so a
state folder cleared for a rerun never swallows the new run's records. An object store cannot
append: there each try is an empty marker object, ``<state>/tries/<batch>-<try>``. Looking a
try up (only for a batch the broker returned) reads every worker's logs, or asks for the
marker.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections import OrderedDict

from fleetrun.common import storage
from fleetrun.common.storage import StorageOptions

# Logs kept open at once; a worker serving many runs reopens the older ones when needed.
OPEN_LOGS = 32


def _name(index: int, attempt: int) -> str:
    return f"{index:09d}-{attempt:03d}"


def _folder(state_uri: str) -> str:
    return storage.join(state_uri, "tries")


class TryRecords:
    """The tries one worker process started, and the look-up of any worker's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: OrderedDict[str, int] = OrderedDict()  # log path -> fd, most recent last
        self._prefix = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def mark(
        self, state_uri: str, run_id: str, index: int, attempt: int, options: StorageOptions
    ) -> None:
        """Record that try ``attempt`` of batch ``index`` is starting."""
        if not storage.is_local(state_uri):
            storage.touch(storage.join(_folder(state_uri), _name(index, attempt)), options)
            return
        line = f"{_name(index, attempt)}\n".encode()
        with self._lock:
            os.write(self._fd(state_uri, run_id), line)  # O_APPEND: one whole line per write

    def started(self, state_uri: str, index: int, attempt: int, options: StorageOptions) -> bool:
        """Whether any worker recorded try ``attempt`` of batch ``index`` as started."""
        return self.count_started(state_uri, index, attempt, 1, options) == 1

    def count_started(
        self, state_uri: str, index: int, first: int, most: int, options: StorageOptions
    ) -> int:
        """How many of tries ``first``, ``first + 1``, ... (at most ``most``) were recorded as
        started, stopping at the first that was not. The logs are read once for all of them."""
        folder = _folder(state_uri)
        if storage.is_local(state_uri):
            logs = b"\n" + b"".join(
                storage.read_bytes(storage.join(folder, log))
                for log in storage.list_names(folder)
                if log.endswith(".log")
            )

            def recorded(attempt: int) -> bool:
                return f"\n{_name(index, attempt)}\n".encode() in logs
        else:

            def recorded(attempt: int) -> bool:
                return storage.exists(storage.join(folder, _name(index, attempt)), options)

        count = 0
        while count < most and recorded(first + count):
            count += 1
        return count

    def close(self) -> None:
        with self._lock:
            for fd in self._open.values():
                os.close(fd)
            self._open.clear()

    def _fd(self, state_uri: str, run_id: str) -> int:
        folder = storage.local_path(_folder(state_uri))
        path = os.path.join(folder, f"{self._prefix}-{run_id}.log")
        fd = self._open.get(path)
        if fd is not None:
            self._open.move_to_end(path)
            return fd
        if len(self._open) >= OPEN_LOGS:
            os.close(self._open.popitem(last=False)[1])
        os.makedirs(folder, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        self._open[path] = fd
        return fd
