"""Storage helpers, each run on a local folder (as a path and as a file:// URI) and on memory://.

fsspec's ``memory://`` filesystem stands in for an object store: it takes the remote road
through the helpers (no temporary files, no hard links), with no service to run.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from fleetrun.common import local_files, storage
from fleetrun.common.listing import list_inputs

# Names chosen so that sorting folder by folder and sorting full paths could disagree:
# '-' and '.' sort before '/', '0' after it, upper case before lower case.
TRICKY_NAMES = [
    "a/b.txt",
    "a/b/c.txt",
    "a-b.txt",
    "a/B.txt",
    "a.txt",
    "a0.txt",
    "a b.txt",
    "a/b/c/d.png",
    "a/b-c/e.png",
    "z.png",
]


@pytest.fixture(params=["local", "file-uri", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty folder: a local path, the same as a file:// URI, or a memory:// prefix."""
    if request.param == "local":
        yield str(tmp_path / "root")
    elif request.param == "file-uri":
        yield f"file://{tmp_path / 'root'}"
    else:
        uri = f"memory://{uuid.uuid4().hex}"
        yield uri
        fs = fsspec.filesystem("memory")
        if fs.exists(uri):
            fs.rm(uri, recursive=True)


def make_files(root: str, names: list[str]) -> list[str]:
    uris = [storage.join(root, name) for name in names]
    for uri in uris:
        storage.write_bytes(uri, uri.encode())
    return uris


def test_a_folder_lists_in_lexicographic_order_of_the_full_path(root: str) -> None:
    uris = make_files(root, TRICKY_NAMES)
    listed = list(list_inputs([root]))
    assert listed == sorted(uris)
    assert listed[:3] == [storage.join(root, n) for n in ("a b.txt", "a-b.txt", "a.txt")]


def test_several_inputs_merge_into_one_sorted_stream_without_duplicates(root: str) -> None:
    uris = make_files(root, TRICKY_NAMES)
    inputs = [
        storage.join(root, "a"),
        storage.join(root, "z.png"),
        storage.join(root, "a", "b"),  # inside the first input: listed once
        storage.join(root, "a-b.txt"),
    ]
    listed = list(list_inputs(inputs))
    expected = sorted(
        u
        for u in uris
        if u.startswith(storage.join(root, "a") + "/") or u.endswith(("/z.png", "/a-b.txt"))
    )
    assert listed == expected
    assert len(listed) == len(set(listed))


def test_a_recursive_glob_finds_matches_at_every_depth(root: str) -> None:
    uris = make_files(root, TRICKY_NAMES)
    listed = list(list_inputs([storage.join(root, "**", "*.png")]))
    assert listed == sorted(u for u in uris if u.endswith(".png"))


def test_a_one_level_glob_finds_only_the_files_directly_in_the_folder(root: str) -> None:
    make_files(root, TRICKY_NAMES)
    listed = list(list_inputs([storage.join(root, "*.txt")]))
    assert listed == [storage.join(root, n) for n in ("a b.txt", "a-b.txt", "a.txt", "a0.txt")]


def test_a_single_file_input_lists_just_that_file(root: str) -> None:
    make_files(root, TRICKY_NAMES)
    single = storage.join(root, "a", "b.txt")
    assert list(list_inputs([single])) == [single]


def test_a_missing_input_raises_file_not_found_naming_it(root: str) -> None:
    make_files(root, ["present.txt"])
    missing = storage.join(root, "absent")
    with pytest.raises(FileNotFoundError, match="absent"):
        list(list_inputs([missing]))


def test_write_bytes_replaces_the_content_whole_and_leaves_no_temporary_files(root: str) -> None:
    uri = storage.join(root, "state", "result.bin")
    assert not storage.exists(uri)
    assert storage.write_bytes(uri, b"first version")
    assert storage.write_bytes(uri, b"second")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"second"
    assert storage.list_names(storage.join(root, "state")) == ["result.bin"]


def test_an_exclusive_write_keeps_the_first_writers_content(root: str) -> None:
    uri = storage.join(root, "parts", "000000001.part")
    assert storage.write_bytes(uri, b"first", exclusive=True) is True
    assert storage.write_bytes(uri, b"second", exclusive=True) is False
    assert storage.read_bytes(uri) == b"first"
    assert storage.list_names(storage.join(root, "parts")) == ["000000001.part"]


def test_list_names_gives_the_sorted_file_names_directly_in_a_folder(root: str) -> None:
    make_files(root, ["d/b.txt", "d/a.txt", "d/sub/c.txt", "d/C.txt"])
    assert storage.list_names(storage.join(root, "d")) == ["C.txt", "a.txt", "b.txt"]
    assert storage.list_names(storage.join(root, "nowhere")) == []


def test_a_failed_atomic_write_keeps_the_previous_content(root: str) -> None:
    uri = storage.join(root, "out", "predictions.txt")
    storage.write_bytes(uri, b"previous output\n")
    with pytest.raises(RuntimeError), storage.atomic_writer(uri) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("the assembly failed midway")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"previous output\n"
    assert storage.list_names(storage.join(root, "out")) == ["predictions.txt"]


def test_a_finished_atomic_write_replaces_the_content(root: str) -> None:
    uri = storage.join(root, "out", "predictions.txt")
    storage.write_bytes(uri, b"previous output\n")
    with storage.atomic_writer(uri) as handle:
        handle.write(b"new ")
        handle.write(b"output\n")
    assert storage.read_bytes(uri) == b"new output\n"
    assert storage.list_names(storage.join(root, "out")) == ["predictions.txt"]


def test_an_exclusive_write_prepared_ahead_survives_its_folder_being_made_again(
    tmp_path: Path,
) -> None:
    # A runner prepares the file of its next part while it waits; if the state folder is
    # removed and made again meanwhile, the part is still written.
    folder = tmp_path / "parts"
    folder.mkdir()
    storage.prepare_new_file(str(folder / "000000001.part"))
    shutil.rmtree(folder)
    folder.mkdir()

    assert storage.write_bytes(str(folder / "000000001.part"), b"one", exclusive=True)
    storage.prepare_new_file(str(folder / "000000002.part"))
    assert storage.write_bytes(str(folder / "000000002.part"), b"two", exclusive=True)
    assert not storage.write_bytes(str(folder / "000000002.part"), b"late", exclusive=True)
    assert (folder / "000000001.part").read_bytes() == b"one"
    assert (folder / "000000002.part").read_bytes() == b"two"


def test_an_exclusive_write_falls_back_to_a_named_temporary_where_linkat_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A restricted /proc (some containers) refuses to link an unnamed file into place.
    real_link = os.link

    def refusing_link(src: str, dst: str, **kwargs: object) -> None:
        if str(src).startswith("/proc/"):
            raise PermissionError(1, "Operation not permitted")
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(local_files, "_O_TMPFILE", local_files._O_TMPFILE)  # restored afterwards
    monkeypatch.setattr(os, "link", refusing_link)
    part = tmp_path / "parts" / "000000001.part"

    assert storage.write_bytes(str(part), b"one", exclusive=True)
    assert not storage.write_bytes(str(part), b"late", exclusive=True)
    assert part.read_bytes() == b"one"
    assert sorted(p.name for p in part.parent.iterdir()) == ["000000001.part"]
