"""The ledger: how each batch of a job ended, counted once however often it ran.

Result messages are acked only after the records they carry are written to the job's state
folder (``ledger/<run>-<seq>.jsonl``), so a coordinator that crashes and comes back counts each
batch exactly once: it reads the ledger, then the headers of parts finished since the last
write, and ignores result messages for batches it already has.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field

from fleetrun.common import storage
from fleetrun.common.messages import BatchResult
from fleetrun.common.parts import read_part_header
from fleetrun.common.storage import StorageOptions

_PART_NAME = re.compile(r"^(\d+)\.part$")


@dataclass
class Counts:
    items: int = 0
    items_failed: int = 0
    batches: int = 0
    batches_failed: int = 0
    batches_retried: int = 0


@dataclass
class Ledger:
    state_uri: str
    options: StorageOptions
    results: dict[int, BatchResult] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    _unwritten: list[BatchResult] = field(default_factory=list)
    _prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _seq: int = 0
    _last_write: float = field(default_factory=time.monotonic)

    @property
    def folder(self) -> str:
        return storage.join(self.state_uri, "ledger")

    @classmethod
    def load(cls, state_uri: str, options: StorageOptions) -> Ledger:
        """What earlier runs of the job finished: the ledger files, then any newer parts."""
        ledger = cls(state_uri, options)
        for name in storage.list_names(ledger.folder, options):
            data = storage.read_bytes(storage.join(ledger.folder, name), options)
            for line in data.splitlines():
                if line.strip():
                    ledger.add(BatchResult.from_bytes(line), durable=True)
        parts = storage.join(state_uri, "parts")
        for name in storage.list_names(parts, options):
            match = _PART_NAME.match(name)
            if match and int(match.group(1)) not in ledger.results:
                ledger.add(read_part_header(storage.join(parts, name), options))
        return ledger

    def add(self, result: BatchResult, *, durable: bool = False) -> bool:
        """Record a batch's end; False if it was already recorded."""
        if result.index in self.results:
            return False
        self.results[result.index] = result
        c = self.counts
        c.batches += 1
        c.items += result.items
        c.items_failed += result.failed
        c.batches_failed += 1 if is_failed_batch(result) else 0
        c.batches_retried += 1 if result.attempt > 1 else 0
        if not durable:
            self._unwritten.append(result)
        return True

    @property
    def unwritten(self) -> int:
        return len(self._unwritten)

    def due(self, max_records: int = 1000, max_age: float = 0.5) -> bool:
        return bool(self._unwritten) and (
            len(self._unwritten) >= max_records or time.monotonic() - self._last_write >= max_age
        )

    def write(self) -> None:
        """Make every recorded result durable (one new ledger file)."""
        self._last_write = time.monotonic()
        if not self._unwritten:
            return
        self._seq += 1
        body = b"".join(r.to_bytes() + b"\n" for r in self._unwritten)
        name = f"{self._prefix}-{self._seq:06d}.jsonl"
        storage.write_bytes(storage.join(self.folder, name), body, self.options)
        self._unwritten.clear()


def is_failed_batch(result: BatchResult) -> bool:
    """Failed: all its tries failed, or run() returned fewer results than inputs."""
    return result.status == "failed" or result.failed > 0
