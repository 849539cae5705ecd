"""What ``fleetrun run`` shows while a job runs: a progress line, and a plain word on stalls."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from fleetrun.coordinator.ledger import Counts


class Progress:
    """Rewrites one line on a terminal; writes a line every ``interval`` seconds otherwise."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.interval = 0.5 if self.tty else 10.0
        self._last = 0.0
        self._start = time.monotonic()
        self._width = 0

    def update(
        self, counts: Counts, planned: int, listing_done: bool, *, force: bool = False
    ) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        elapsed = max(now - self._start, 1e-6)
        rate = counts.batches / elapsed
        total = f"{planned}" if listing_done else f"{planned}+"
        eta = ""
        if listing_done and rate > 0 and planned > counts.batches:
            eta = f", about {(planned - counts.batches) / rate:.0f} s left"
        line = (
            f"mini-batches {counts.batches}/{total} done"
            f" ({counts.batches_failed} failed, {counts.batches_retried} retried),"
            f" {counts.items - counts.items_failed} items ok, {counts.items_failed} failed,"
            f" {rate:.0f} batches/s{eta}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
