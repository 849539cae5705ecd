"""One contract for fleetrun's storage helpers, on every backend a fleet uses.

The same tests run on a local folder, fsspec's in-memory filesystem, Azure Blob (Azurite) and
S3 (moto's server), through ``fleetrun.common.storage`` and ``fleetrun.common.parts`` exactly as
fleetrun calls them: URIs only, the cloud endpoints and keys from the environment. "Another
process" is a second filesystem instance of the same backend, outside fsspec's caches, the way
a runner or another worker sees the store.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adlfs
import pytest
import s3fs
from emulators import Azurite, S3Server, azure_filesystem, s3_filesystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from fleetrun.common import parts, storage
from fleetrun.common.errors import StorageError
from fleetrun.common.listing import list_inputs
from fleetrun.common.messages import BatchResult

pytestmark = pytest.mark.timeout(60)

BACKENDS = ["local", "memory", "azure", "s3"]

# Input names chosen so that the order of full URIs is not the order of a naive walk:
# '-' < '.' < '/' < '0' and 'B' < 'b', and a file sorts before a folder of the same stem.
NAMES = [
    "a-b.txt",
    "a.txt",
    "a/B.txt",
    "a/b.txt",
    "a/b/c.txt",
    "a/b/c/d.png",
    "a/x1.txt",
    "a/y.txt",
    "a0.txt",
    "b/deep/x3.txt",
    "b/x2.png",
    "b/x2.txt",
    "top.png",
    "x0.txt",
    "z/img.png",
]


@dataclass
class Store:
    """A folder of one backend, empty at the start of the test and only the test's own."""

    backend: str
    root: str
    other: Any  # a second filesystem instance: "another process"

    def uri(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def path(self, uri: str) -> str:
        """``uri`` as a path of :attr:`other`."""
        return str(type(self.other)._strip_protocol(uri))

    def put(self, folder: str, files: dict[str, bytes]) -> None:
        """Write ``files`` under ``folder``, as another process."""
        self.other.pipe({self.path(storage.join(folder, n)): data for n, data in files.items()})

    def peek(self, uri: str) -> bytes:
        """The bytes of ``uri``, as another process reads them."""
        return bytes(self.other.cat_file(self.path(uri)))

    def seed_inputs(self) -> str:
        folder = self.uri("inputs")
        self.put(folder, {name: name.encode() for name in NAMES})
        return folder


def _fresh_cloud_instances() -> None:
    """Start each test as a fresh process would: no fsspec instances (and listings) cached."""
    adlfs.AzureBlobFileSystem.clear_instance_cache()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend: str = request.param
    _fresh_cloud_instances()
    if backend == "local":
        yield Store(backend, str(tmp_path / "store"), LocalFileSystem(auto_mkdir=True))
    elif backend == "memory":
        root = f"memory://t-{uuid.uuid4().hex[:12]}"
        other = MemoryFileSystem()
        try:
            yield Store(backend, root, other)
        finally:
            with suppress(FileNotFoundError):
                other.rm(other._strip_protocol(root), recursive=True)
    elif backend == "azure":
        request.getfixturevalue("azure_env")
        server: Azurite = request.getfixturevalue("azurite")
        yield Store(backend, request.getfixturevalue("azure_container"), azure_filesystem(server))
    else:
        request.getfixturevalue("s3_env")
        moto: S3Server = request.getfixturevalue("s3_server")
        yield Store(backend, request.getfixturevalue("s3_bucket"), s3_filesystem(moto))


# --- whole-object writes and reads ---------------------------------------------------------


def test_bytes_written_are_the_bytes_read_back(store: Store) -> None:
    uri = store.uri("state", "nested", "blob.bin")
    data = bytes(range(256)) * 40

    assert storage.write_bytes(uri, data) is True

    assert storage.read_bytes(uri) == data
    assert store.peek(uri) == data


def test_writing_bytes_again_replaces_the_object(store: Store) -> None:
    uri = store.uri("state", "summary.json")
    storage.write_bytes(uri, b"the first, longer content\n")

    assert storage.write_bytes(uri, b"second\n") is True

    assert storage.read_bytes(uri) == b"second\n"
    assert store.peek(uri) == b"second\n"


def test_an_exclusive_write_keeps_the_first_writers_bytes(store: Store) -> None:
    uri = store.uri("parts", "000000001.part")

    assert storage.write_bytes(uri, b"first", exclusive=True) is True
    assert storage.write_bytes(uri, b"second", exclusive=True) is False

    assert storage.read_bytes(uri) == b"first"
    assert store.peek(uri) == b"first"


def test_an_exclusive_write_loses_to_an_object_another_process_wrote_after_a_listing(
    store: Store,
) -> None:
    folder = store.uri("parts")
    store.put(folder, {"000000001.part": b"one"})
    assert storage.list_names(folder) == ["000000001.part"]
    store.put(folder, {"000000002.part": b"theirs"})

    assert (
        storage.write_bytes(storage.join(folder, "000000002.part"), b"mine", exclusive=True)
        is False
    )

    assert store.peek(storage.join(folder, "000000002.part")) == b"theirs"


def test_concurrent_exclusive_writers_have_exactly_one_winner(store: Store) -> None:
    uri = store.uri("parts", "000000007.part")
    writers = 6
    barrier = threading.Barrier(writers)
    won: dict[int, bool] = {}

    def write(number: int) -> None:
        barrier.wait()
        won[number] = storage.write_bytes(uri, f"writer {number}".encode(), exclusive=True)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    winners = [number for number, ok in won.items() if ok]
    assert len(won) == writers
    assert len(winners) == 1, f"writers {winners} all think they wrote the part"
    assert store.peek(uri) == f"writer {winners[0]}".encode()


def test_exists_is_true_for_a_written_object_and_false_for_a_missing_one(store: Store) -> None:
    uri = store.uri("state", "spec.json")
    assert storage.exists(uri) is False

    storage.write_bytes(uri, b"{}")

    assert storage.exists(uri) is True
    assert storage.exists(store.uri("state", "code.zip")) is False


def test_an_object_another_process_writes_after_a_listing_is_seen(store: Store) -> None:
    folder = store.uri("ledger")
    store.put(folder, {"a.json": b"a"})
    assert storage.list_names(folder) == ["a.json"]
    assert storage.exists(storage.join(folder, "b.json")) is False

    store.put(folder, {"b.json": b"b"})

    assert storage.list_names(folder) == ["a.json", "b.json"]
    assert storage.exists(storage.join(folder, "b.json")) is True
    assert storage.read_bytes(storage.join(folder, "b.json")) == b"b"


def test_an_object_another_process_removes_after_a_listing_is_gone(store: Store) -> None:
    folder = store.uri("ledger")
    store.put(folder, {"a.json": b"a", "b.json": b"b"})
    assert storage.list_names(folder) == ["a.json", "b.json"]
    assert storage.exists(storage.join(folder, "a.json")) is True

    store.other.rm(store.path(storage.join(folder, "a.json")))

    assert storage.exists(storage.join(folder, "a.json")) is False
    assert storage.list_names(folder) == ["b.json"]


# --- listings --------------------------------------------------------------------------------


def test_list_names_gives_the_files_directly_in_a_folder_sorted(store: Store) -> None:
    folder = store.uri("parts")
    store.put(
        folder,
        {"b.part": b"b", "a.part": b"a", "C.part": b"c", "sub/c.part": b"", "sub/deep/d": b""},
    )

    assert storage.list_names(folder) == ["C.part", "a.part", "b.part"]


def test_list_names_of_a_missing_folder_is_empty(store: Store) -> None:
    store.put(store.uri("elsewhere"), {"x.txt": b"x"})

    assert storage.list_names(store.uri("parts")) == []


def test_list_inputs_gives_full_uris_in_lexicographic_order(store: Store) -> None:
    folder = store.seed_inputs()

    listed = list(list_inputs([folder]))

    assert listed == sorted(storage.join(folder, name) for name in NAMES)
    if store.backend in ("memory", "azure", "s3"):
        assert all(uri.startswith(store.root.split("://")[0] + "://") for uri in listed)


def test_an_input_that_is_a_whole_bucket_or_container_lists_every_file(store: Store) -> None:
    store.put(store.root, {"x/1.txt": b"1", "0.txt": b"0", "x-y.txt": b"2"})

    listed = list(list_inputs([store.root]))

    assert listed == [store.uri("0.txt"), store.uri("x-y.txt"), store.uri("x", "1.txt")]


def test_a_recursive_glob_matches_files_at_every_depth(store: Store) -> None:
    folder = store.seed_inputs()

    listed = list(list_inputs([storage.join(folder, "**", "*.png")]))

    expected = ["a/b/c/d.png", "b/x2.png", "top.png", "z/img.png"]
    assert listed == sorted(storage.join(folder, name) for name in expected)


def test_a_glob_with_a_folder_wildcard_matches_one_level_down(store: Store) -> None:
    folder = store.seed_inputs()

    listed = list(list_inputs([storage.join(folder, "*", "x*.txt")]))

    assert listed == [storage.join(folder, "a/x1.txt"), storage.join(folder, "b/x2.txt")]


def test_a_single_file_input_is_listed_as_itself(store: Store) -> None:
    folder = store.seed_inputs()
    uri = storage.join(folder, "a/b.txt")

    assert list(list_inputs([uri])) == [uri]


def test_several_inputs_are_merged_in_order_without_duplicates(store: Store) -> None:
    folder = store.seed_inputs()
    inputs = [storage.join(folder, "b"), storage.join(folder, "a"), storage.join(folder, "a/b.txt")]

    listed = list(list_inputs(inputs))

    expected = [n for n in NAMES if n.startswith(("a/", "b/"))]
    assert listed == sorted(storage.join(folder, name) for name in expected)


def test_a_missing_input_raises_file_not_found(store: Store) -> None:
    store.seed_inputs()

    with pytest.raises(FileNotFoundError):
        list(list_inputs([store.uri("no-such-folder")]))
    with pytest.raises(FileNotFoundError):
        list(list_inputs([store.uri("inputs", "no-such-file.txt")]))


# --- streams, removal, result parts ----------------------------------------------------------


def test_a_file_written_through_open_file_streams_back(store: Store) -> None:
    uri = store.uri("out", "deep", "rows.txt")
    lines = [f"row {n:06d} " + "x" * 50 + "\n" for n in range(20_000)]  # ~1.3 MB

    with storage.open_file(uri, "wb") as handle:
        for start in range(0, len(lines), 1_000):
            handle.write("".join(lines[start : start + 1_000]).encode())

    with storage.open_file(uri, "rb") as handle:
        first = handle.readline()
        chunks = [first]
        while block := handle.read(64 * 1024):
            chunks.append(block)
    assert first == lines[0].encode()
    assert b"".join(chunks) == "".join(lines).encode()
    assert store.peek(uri) == "".join(lines).encode()


def test_an_atomic_writer_shows_the_object_only_when_the_block_ends(store: Store) -> None:
    uri = store.uri("out", "rows.txt")

    with storage.atomic_writer(uri) as handle:
        handle.write(b"row 1\n")
        handle.write(b"row 2\n")
        assert storage.exists(uri) is False

    assert storage.read_bytes(uri) == b"row 1\nrow 2\n"
    assert storage.list_names(store.uri("out")) == ["rows.txt"]  # no temporary left behind


def test_an_atomic_writer_that_fails_leaves_the_previous_object(store: Store) -> None:
    uri = store.uri("out", "summary.json")
    storage.write_bytes(uri, b"previous")

    with (
        pytest.raises(RuntimeError, match="the entry script broke"),
        storage.atomic_writer(uri) as handle,
    ):
        handle.write(b"half of the new")
        raise RuntimeError("the entry script broke")

    assert store.peek(uri) == b"previous"
    assert storage.list_names(store.uri("out")) == ["summary.json"]


def test_an_atomic_writer_that_fails_leaves_no_object(store: Store) -> None:
    uri = store.uri("out", "rows.txt")

    with (
        pytest.raises(RuntimeError, match="the entry script broke"),
        storage.atomic_writer(uri) as handle,
    ):
        handle.write(b"half of the rows")
        raise RuntimeError("the entry script broke")

    assert storage.exists(uri) is False
    assert storage.list_names(store.uri("out")) == []


def test_an_atomic_writer_can_grow_the_file_at_a_named_temporary(store: Store) -> None:
    # How the output file is joined during a job: in the job's state folder, where a rerun
    # after a crash overwrites what the crashed run left.
    uri = store.uri("out", "rows.txt")
    temporary = store.uri("out", "_state", "output.partial")
    storage.write_bytes(temporary, b"left by a crashed run")

    with storage.atomic_writer(uri, temporary=temporary) as handle:
        handle.write(b"row 1\n")
        assert storage.exists(uri) is False

    assert storage.read_bytes(uri) == b"row 1\n"
    assert storage.exists(temporary) is False
    with pytest.raises(RuntimeError), storage.atomic_writer(uri, temporary=temporary) as handle:
        handle.write(b"half")
        raise RuntimeError("the job was aborted")
    assert storage.read_bytes(uri) == b"row 1\n"
    assert storage.exists(temporary) is False


@pytest.mark.parametrize("store", ["azure", "s3"], indirect=True)
def test_writing_into_a_missing_bucket_or_container_says_so(store: Store) -> None:
    protocol = store.root.split("://")[0]
    uri = f"{protocol}://t-missing-{uuid.uuid4().hex[:8]}/out/summary.json"

    with pytest.raises(StorageError, match="does not exist"):
        storage.write_bytes(uri, b"{}")


def test_remove_tree_deletes_a_folder_and_everything_below_it(store: Store) -> None:
    store.put(
        store.root,
        {
            "state/parts/1.part": b"1",
            "state/parts/2.part": b"2",
            "state/ledger/x.json": b"x",
            "state/spec.json": b"{}",
            "state-other/keep.txt": b"keep",
            "state.txt": b"keep",
        },
    )
    assert storage.list_names(store.uri("state", "parts")) == ["1.part", "2.part"]

    storage.remove_tree(store.uri("state"))

    assert storage.exists(store.uri("state", "spec.json")) is False
    assert storage.list_names(store.uri("state", "parts")) == []
    with pytest.raises(FileNotFoundError):
        list(list_inputs([store.uri("state")]))
    assert store.peek(store.uri("state-other", "keep.txt")) == b"keep"
    assert store.peek(store.uri("state.txt")) == b"keep"


def test_removing_a_missing_tree_is_fine(store: Store) -> None:
    store.put(store.root, {"other/x.txt": b"x"})

    storage.remove_tree(store.uri("no-such-state"))

    assert store.peek(store.uri("other", "x.txt")) == b"x"


def test_a_result_part_keeps_its_header_and_lines(store: Store) -> None:
    state = store.uri("out", "_fleetrun")
    header = BatchResult(
        job_id="job-1",
        run_id="run-1",
        index=3,
        status="succeeded",
        items=3,
        succeeded=3,
        failed=0,
        attempt=1,
    )
    lines = ["a.png 7", "b.png 1", "ünïcode ✓ " + "y" * 200]
    uri = parts.part_uri(state, 3)

    assert storage.write_bytes(uri, parts.encode_part(header, lines), exclusive=True) is True

    assert uri == storage.join(state, "parts", "000000003.part")
    assert storage.list_names(storage.join(state, "parts")) == ["000000003.part"]
    assert parts.read_part_header(uri) == header
    body = b"".join(parts.iter_part_body(uri, chunk=16))
    assert body.decode() == "".join(f"{line}\n" for line in lines)
