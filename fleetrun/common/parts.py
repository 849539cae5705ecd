"""A batch's result part: its :class:`BatchResult` as a JSON line, then its output lines.

Parts are stored at ``<state>/parts/<index>.part`` (a deterministic name, so a retry or a
second run of the batch meets the first one's part instead of adding another). The part alone
says the batch is finished, which is what makes a restarted coordinator or a redelivered batch
idempotent.
"""

from __future__ import annotations

from collections.abc import Iterator

from fleetrun.common import storage
from fleetrun.common.messages import BatchResult
from fleetrun.common.storage import StorageOptions


def part_uri(state_uri: str, index: int) -> str:
    return storage.join(state_uri, "parts", f"{index:09d}.part")


def encode_part(header: BatchResult, lines: list[str]) -> bytes:
    body = "".join(f"{line}\n" for line in lines)
    return header.model_dump_json().encode() + b"\n" + body.encode()


def read_part_header(uri: str, options: StorageOptions | None = None) -> BatchResult:
    with storage.open_file(uri, "rb", options) as handle:
        first: bytes = handle.readline()
    result: BatchResult = BatchResult.from_bytes(first)
    return result


def write_first(
    uri: str, header: bytes, body: bytes, options: StorageOptions | None = None
) -> bytes:
    """Write a batch's part (its encoded header line, then ``body``) unless another try of
    the batch wrote it first: the first writer wins. The encoded header of the part that
    stands."""
    if storage.write_bytes(uri, header + b"\n" + body, options, exclusive=True):
        return header
    return read_part_header(uri, options).to_bytes()


def iter_part_body(
    uri: str, options: StorageOptions | None = None, chunk: int = 1 << 20
) -> Iterator[bytes]:
    """The output lines of a part, in chunks, without its header line."""
    with storage.open_file(uri, "rb", options) as handle:
        handle.readline()
        while block := handle.read(chunk):
            yield block
