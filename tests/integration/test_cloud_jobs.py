"""Jobs on object stores: inputs, side inputs, outputs and job state on Azurite and moto's S3.

Real `fleetrun run` and `fleetrun worker` processes; the credentials reach them only through
their environment (``cloud_env``), the way a user sets them. Everything is read back with the
tests' own fsspec filesystems (no listing cache), never through fleetrun.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import posixpath
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from emulators import AZURITE_KEY, Azurite, S3Server, azure_filesystem, s3_filesystem
from helpers import LINE_PER_FILE, Harness, content_of, object_text, object_uris, put_objects

pytestmark = [pytest.mark.timeout(180)]

OUTPUT_FILE = "parallel_run_step.txt"
ERROR_TIMEOUT_S = 30.0


# -- helpers ------------------------------------------------------------------------------------


def nested_files(count: int) -> dict[str, str]:
    """``count`` files at several depths (``p1/007.txt``, ``p0/q1/003.txt``, ...): key → text."""
    files = {}
    for i in range(count):
        folder = f"p{i % 3}/" + (f"q{i % 2}/" if i % 4 else "")
        files[f"{folder}{i:03d}.txt"] = content_of(i)
    return files


def expected_lines(uris: list[str], texts: dict[str, str]) -> list[str]:
    """What ``LINE_PER_FILE`` gives, in lexicographic URI order (``texts``: URI → text)."""
    return [f"{posixpath.basename(uri)} {texts[uri]}" for uri in sorted(uris)]


def uploaded(fs: Any, base_uri: str, files: dict[str, str]) -> dict[str, str]:
    """Upload ``files`` under ``base_uri``; URI → text."""
    put_objects(fs, base_uri, files)
    return {f"{base_uri.rstrip('/')}/{key}": text for key, text in files.items()}


def summary_of(fs: Any, output: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(object_text(fs, f"{output}/summary.json"))
    return data


def assert_succeeded(
    fs: Any, output: str, files: int, batches: int, output_file: str | None
) -> dict[str, Any]:
    """summary.json says every item and batch succeeded, exactly; empty failure reports."""
    summary = summary_of(fs, output)
    assert summary["status"] == "succeeded", summary
    assert summary["reason"] == f"all {batches} mini-batches finished"
    assert summary["items"] == {"total": files, "succeeded": files, "failed": 0}
    assert summary["mini_batches"] == {
        "total": batches,
        "succeeded": batches,
        "failed": 0,
        "retried": 0,
    }
    assert summary["output"] == output_file
    state = json.loads(object_text(fs, f"{output}/_fleetrun/spec.json"))
    assert summary["job_id"] == state["job_id"]
    assert object_text(fs, f"{output}/failed_items.txt") == ""
    assert object_text(fs, f"{output}/errors.jsonl") == ""
    leftovers = [u for u in object_uris(fs, output) if ".tmp-" in u]
    assert not leftovers, f"temporary objects left in the output folder: {leftovers}"
    return summary


def remember_job(harness: Harness, fs: Any, output: str) -> None:
    """Let the harness delete the job's result queue (it looks for spec.json on local disk)."""
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        harness.job_ids.add(json.loads(object_text(fs, f"{output}/_fleetrun/spec.json"))["job_id"])


# -- inputs and outputs across clouds -----------------------------------------------------------


@pytest.mark.rabbitmq
def test_azure_inputs_and_an_s3_output_through_two_workers_give_the_sequential_output(
    harness: Harness,
    rabbitmq_url: str,
    cloud_env: dict[str, str],
    azurite: Azurite,
    s3_server: S3Server,
    azure_container: str,
    s3_bucket: str,
) -> None:
    az, s3 = azure_filesystem(azurite), s3_filesystem(s3_server)
    texts = uploaded(az, f"{azure_container}/in", nested_files(36))
    output = f"{s3_bucket}/out"
    harness.write_job(
        LINE_PER_FILE, inputs=f"{azure_container}/in", output=output, mini_batch_size=4
    )
    workers = [harness.start_worker(rabbitmq_url), harness.start_worker(rabbitmq_url)]
    for worker in workers:
        harness.wait_ready(worker)

    result = harness.run(broker=rabbitmq_url)
    remember_job(harness, s3, output)

    assert result.returncode == 0, result.stderr
    lines = object_text(s3, f"{output}/{OUTPUT_FILE}").splitlines()
    assert lines == expected_lines(list(texts), texts)
    summary = assert_succeeded(s3, output, 36, 9, f"{output}/{OUTPUT_FILE}")
    assert json.loads(result.stdout) == summary
    # The job's state went to the output folder too: spec, code snapshot, one part per batch.
    state = object_uris(s3, f"{output}/_fleetrun")
    assert f"{output}/_fleetrun/code.zip" in state
    assert len([u for u in state if "/_fleetrun/parts/" in u]) == 9


def test_s3_inputs_and_an_azure_output_on_the_embedded_broker_give_the_sequential_output(
    harness: Harness,
    cloud_env: dict[str, str],
    azurite: Azurite,
    s3_server: S3Server,
    azure_container: str,
    s3_bucket: str,
) -> None:
    az, s3 = azure_filesystem(azurite), s3_filesystem(s3_server)
    texts = uploaded(s3, f"{s3_bucket}/in", nested_files(30))
    output = f"{azure_container}/out"
    harness.write_job(
        LINE_PER_FILE,
        inputs=f"{s3_bucket}/in",
        output=output,
        mini_batch_size=4,
        process_count_per_node=2,
    )

    result = harness.run()

    assert result.returncode == 0, result.stderr
    lines = object_text(az, f"{output}/{OUTPUT_FILE}").splitlines()
    assert lines == expected_lines(list(texts), texts)
    summary = assert_succeeded(az, output, 30, 8, f"{output}/{OUTPUT_FILE}")
    state = object_uris(az, f"{output}/_fleetrun")

    # The same command again finds the finished job in the Azure output and reuses it.
    again = harness.run()

    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == summary
    assert summary_of(az, output) == summary
    assert object_uris(az, f"{output}/_fleetrun") == state


GLOB_KEYS = {
    "data/top.txt": True,
    "data/a/1.txt": True,
    "data/a/b/2.txt": True,
    "data/a/b/c/3.txt": True,
    "data/x/same.txt": True,  # two files of one name in one mini-batch
    "data/y/same.txt": True,
    "data/z/9.txt": True,
    "data/a/notes.md": False,
    "data/a/1.txt.bak": False,
    "data/b/table.csv": False,
    "data/b/txt": False,
    "data/a.txt/inner.md": False,
    "data2/5.txt": False,
    "other/4.txt": False,
    "top.txt": False,
}


@pytest.mark.parametrize("protocol", ["s3", "az"])
def test_a_glob_over_nested_prefixes_takes_only_the_matching_keys(
    harness: Harness,
    cloud_env: dict[str, str],
    azurite: Azurite,
    s3_server: S3Server,
    azure_container: str,
    s3_bucket: str,
    protocol: str,
) -> None:
    fs, root = (
        (s3_filesystem(s3_server), s3_bucket)
        if protocol == "s3"
        else (azure_filesystem(azurite), azure_container)
    )
    files = {key: f"g{n}" for n, key in enumerate(GLOB_KEYS)}
    texts = uploaded(fs, root, files)
    matching = [f"{root}/{key}" for key, match in GLOB_KEYS.items() if match]
    output = f"{root}/out"
    harness.write_job(
        LINE_PER_FILE, inputs=f"{root}/data/**/*.txt", output=output, mini_batch_size=2
    )

    result = harness.run()

    assert result.returncode == 0, result.stderr
    lines = object_text(fs, f"{output}/{OUTPUT_FILE}").splitlines()
    assert lines == expected_lines(matching, texts)
    assert lines[4:6] == ["same.txt g4", "same.txt g5"]
    assert_succeeded(fs, output, 7, 4, f"{output}/{OUTPUT_FILE}")


# Keys whose order a careless listing or merge gets wrong: '-' and '.' sort before '/',
# capitals before small letters, and non-ASCII after everything else.
TRICKY_KEYS = ["p0-x/a.txt", "p0.txt", "P9/b.txt", "with space/a+b=c.txt", "ünï/çödé.txt"]


def test_inputs_on_two_clouds_come_out_in_lexicographic_uri_order_across_both(
    harness: Harness,
    cloud_env: dict[str, str],
    azurite: Azurite,
    s3_server: S3Server,
    azure_container: str,
    s3_bucket: str,
) -> None:
    az, s3 = azure_filesystem(azurite), s3_filesystem(s3_server)
    # The same keys on both clouds, with other texts: only the URI order can tell them apart.
    files = nested_files(10) | {key: f"t{n}" for n, key in enumerate(TRICKY_KEYS)}
    on_azure = uploaded(az, f"{azure_container}/in", files)
    on_s3 = uploaded(s3, f"{s3_bucket}/data", {k: f"s3-{v}" for k, v in files.items()})
    single = uploaded(s3, f"{s3_bucket}/extra", {"one.txt": "single"})
    put_objects(s3, f"{s3_bucket}/data", {"p0/skip.csv": "not an input"})
    # The S3 glob is listed first in the spec, and a file it matches is named again on its
    # own: az:// still sorts before s3://, and that file is an input once.
    harness.write_job(
        LINE_PER_FILE,
        inputs=[
            f"{s3_bucket}/data/**/*.txt",
            f"{s3_bucket}/extra/one.txt",
            f"{azure_container}/in",
            f"{s3_bucket}/data/p0/000.txt",
        ],
        mini_batch_size=3,
        process_count_per_node=2,
    )

    result = harness.run()

    assert result.returncode == 0, result.stderr
    texts = on_azure | on_s3 | single
    expected = expected_lines(list(texts), texts)
    assert expected[:15] == expected_lines(list(on_azure), on_azure)
    assert harness.output_lines() == expected
    summary = harness.summary()
    assert summary["items"] == {"total": 31, "succeeded": 31, "failed": 0}
    assert summary["mini_batches"]["total"] == 11


# -- side inputs and the script's own files -----------------------------------------------------

WITH_MODEL = """\
import argparse
import os
from pathlib import Path

MODEL = ""
WEIGHTS = ""


def init():
    global MODEL, WEIGHTS
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    args, _ = parser.parse_known_args()
    MODEL = args.model
    folder = Path(MODEL)
    WEIGHTS = (folder / "weights.txt").read_text() + "+" + (folder / "sub" / "bias.txt").read_text()


def run(mini_batch):
    kind = "dir" if os.path.isdir(MODEL) else "missing"
    return [f"{os.path.basename(p)} {open(p).read()} {WEIGHTS} {kind} {MODEL}" for p in mini_batch]
"""


def test_a_side_input_folder_on_azure_reaches_init_as_a_local_folder(
    harness: Harness, cloud_env: dict[str, str], azurite: Azurite, azure_container: str
) -> None:
    az = azure_filesystem(azurite)
    put_objects(az, f"{azure_container}/models", {"weights.txt": "w3", "sub/bias.txt": "b7"})
    harness.make_inputs(6)
    harness.write_job(
        WITH_MODEL,
        side_inputs={"model": f"{azure_container}/models/"},
        arguments=["--threshold", "0.5"],
        mini_batch_size=2,
        process_count_per_node=2,
    )

    result = harness.run()

    assert result.returncode == 0, result.stderr
    lines = harness.output_lines()
    assert [line.rsplit(" ", 3)[0] for line in lines] == harness.expected_lines()
    models = set()
    for line in lines:
        _, weights, kind, model = line.rsplit(" ", 3)
        assert (weights, kind) == ("w3+b7", "dir"), line
        models.add(model)
    # Fetched once into the worker's cache, and given to every runner as a local folder.
    assert len(models) == 1
    assert Path(models.pop()).resolve().is_relative_to(harness.cache_dir.resolve())


EXTRA_FILES = """\
import os

from fleetrun import context


def run(mini_batch):
    rows = "".join(f"{os.path.basename(p)} {open(p).read()}\\n" for p in mini_batch)
    folder = context.output_dir / "scores"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"batch-{context.minibatch_index:03d}.txt").write_text(rows)
    (context.output_dir / f"count-{context.minibatch_index:03d}.txt").write_text(
        str(len(mini_batch))
    )
    return mini_batch
"""


def test_files_a_summary_only_script_writes_to_output_dir_end_up_in_the_s3_output(
    harness: Harness, cloud_env: dict[str, str], s3_server: S3Server, s3_bucket: str
) -> None:
    s3 = s3_filesystem(s3_server)
    harness.make_inputs(10)
    output = f"{s3_bucket}/out"
    harness.write_job(
        EXTRA_FILES,
        output=output,
        output_action="summary_only",
        mini_batch_size=4,
        process_count_per_node=2,
    )

    result = harness.run()

    assert result.returncode == 0, result.stderr
    assert_succeeded(s3, output, 10, 3, None)
    top = [u for u in object_uris(s3, output) if "/_fleetrun/" not in u]
    assert top == [
        f"{output}/count-000.txt",
        f"{output}/count-001.txt",
        f"{output}/count-002.txt",
        f"{output}/errors.jsonl",
        f"{output}/failed_items.txt",
        f"{output}/scores/batch-000.txt",
        f"{output}/scores/batch-001.txt",
        f"{output}/scores/batch-002.txt",
        f"{output}/summary.json",
    ]
    rows = "".join(object_text(s3, f"{output}/scores/batch-{i:03d}.txt") for i in range(3))
    assert rows.splitlines() == harness.expected_lines()
    assert [object_text(s3, f"{output}/count-{i:03d}.txt") for i in range(3)] == ["4", "4", "2"]


# -- errors: fast, naming the URI and the fix ---------------------------------------------------


def run_expecting_failure(harness: Harness, broker: str | None = None) -> tuple[int, str]:
    """Run the job; it must fail with exit 1 or 2 within ERROR_TIMEOUT_S. (code, stderr)"""
    started = time.monotonic()
    try:
        result = harness.run(broker=broker, timeout=ERROR_TIMEOUT_S + 5)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"fleetrun run was still running after {exc.timeout:g} s instead of failing; "
            f"its stderr:\n{(exc.stderr or b'').decode(errors='replace')[-3000:]}"
        )
    elapsed = time.monotonic() - started
    print(f"exit {result.returncode} after {elapsed:.1f} s:\n{result.stderr}")
    assert result.returncode in (1, 2), (result.returncode, result.stderr)
    assert elapsed < ERROR_TIMEOUT_S, f"took {elapsed:.1f} s to fail:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr


@pytest.mark.parametrize("protocol", ["s3", "az"])
def test_a_missing_output_bucket_or_container_fails_fast_naming_it(
    harness: Harness, cloud_env: dict[str, str], protocol: str
) -> None:
    missing = f"{protocol}://fleetrun-missing-{uuid.uuid4().hex[:8]}"
    harness.make_inputs(3)
    harness.write_job(LINE_PER_FILE, output=f"{missing}/out")

    _, stderr = run_expecting_failure(harness)

    assert missing in stderr
    assert "does not exist" in stderr and "create it" in stderr, stderr


@pytest.mark.parametrize("where", ["s3 bucket", "s3 prefix", "azure container", "azure prefix"])
def test_a_missing_input_location_fails_fast_naming_it(
    harness: Harness,
    cloud_env: dict[str, str],
    azure_container: str,
    s3_bucket: str,
    where: str,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    missing = {
        "s3 bucket": f"s3://fleetrun-missing-{suffix}/in",
        "s3 prefix": f"{s3_bucket}/missing-{suffix}",
        "azure container": f"az://fleetrun-missing-{suffix}/in",
        "azure prefix": f"{azure_container}/missing-{suffix}",
    }[where]
    harness.write_job(LINE_PER_FILE, inputs=missing)

    _, stderr = run_expecting_failure(harness)

    assert missing in stderr
    assert re.search(r"check the path|create it|fix the URI", stderr), stderr


# A well-formed key (base64, 64 bytes) that is not the account's: Azurite checks signatures.
WRONG_KEY = base64.b64encode(bytes(range(7, 71))).decode()


@pytest.mark.parametrize("where", ["inputs", "output"])
def test_a_wrong_azure_account_key_fails_fast_saying_access_is_refused_without_the_key(
    harness: Harness,
    cloud_env: dict[str, str],
    azurite: Azurite,
    azure_container: str,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    az = azure_filesystem(azurite)
    put_objects(az, f"{azure_container}/in", {"a.txt": "a", "b.txt": "b"})
    wrong = azurite.connection_string.replace(AZURITE_KEY, WRONG_KEY)
    assert wrong != azurite.connection_string
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong)
    if where == "inputs":
        harness.write_job(LINE_PER_FILE, inputs=f"{azure_container}/in")
    else:
        harness.make_inputs(3)
        harness.write_job(LINE_PER_FILE, output=f"{azure_container}/out")

    _, stderr = run_expecting_failure(harness)

    assert azure_container in stderr
    assert "access refused" in stderr, stderr
    assert "AZURE_STORAGE_CONNECTION_STRING" in stderr, stderr
    for secret in (WRONG_KEY, AZURITE_KEY, WRONG_KEY[:16], AZURITE_KEY[:16]):
        assert secret not in stderr
    for path in harness.root.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert WRONG_KEY[:16] not in text and AZURITE_KEY[:16] not in text, path


@pytest.mark.parametrize(
    "options",
    [{"s3": {"secret": "x"}}, {"az": {"account_key": "x"}}, {"az": {"connection_string": "x"}}],
)
def test_credentials_in_storage_options_are_refused_with_exit_2(
    harness: Harness,
    cloud_env: dict[str, str],
    s3_server: S3Server,
    s3_bucket: str,
    options: dict[str, Any],
) -> None:
    harness.make_inputs(2)
    harness.write_job(LINE_PER_FILE, output=f"{s3_bucket}/out", storage_options=options)

    code, stderr = run_expecting_failure(harness)

    assert code == 2
    assert "storage_options" in stderr and "environment" in stderr, stderr
    assert not object_uris(s3_filesystem(s3_server), f"{s3_bucket}/out")


FAILS_ON_B = """\
import os


def run(mini_batch):
    lines = []
    for p in mini_batch:
        if os.path.basename(p).startswith("b"):
            raise ValueError(f"cannot score {os.path.basename(p)}")
        lines.append(f"{os.path.basename(p)} {open(p).read()}")
    return lines
"""


def test_no_credential_ends_up_in_the_job_state_outputs_or_logs(
    harness: Harness,
    cloud_env: dict[str, str],
    azurite: Azurite,
    azure_container: str,
) -> None:
    az = azure_filesystem(azurite)
    put_objects(az, f"{azure_container}/in", {"a1.txt": "1", "a2.txt": "2", "b1.txt": "3"})
    # abfs:// is adlfs's other name for az://; the same environment serves both.
    container = azure_container.replace("az://", "abfs://")
    output = f"{container}/out"
    harness.write_job(
        FAILS_ON_B,
        inputs=f"{container}/in",
        output=output,
        mini_batch_size=1,
        run_max_try=1,
    )

    result = harness.run()

    assert result.returncode == 0, result.stderr  # one failed batch is allowed by default
    summary = summary_of(az, output)
    assert summary["items"] == {"total": 3, "succeeded": 2, "failed": 1}
    assert object_text(az, f"{output}/failed_items.txt") == f"{container}/in/b1.txt\n"
    assert "cannot score b1.txt" in object_text(az, f"{output}/errors.jsonl")
    secrets = (AZURITE_KEY, AZURITE_KEY[:16], "AccountKey", azurite.connection_string)
    objects = object_uris(az, output)
    assert f"{output}/_fleetrun/spec.json" in objects
    for uri in objects:
        if uri.endswith(".zip"):
            continue
        text = object_text(az, uri)
        for secret in secrets:
            assert secret not in text, f"{secret[:10]}... in {uri}"
    local = [p for p in harness.root.rglob("*") if p.is_file() and "job" not in p.parts]
    assert any(p.suffix == ".jsonl" for p in local), "the runner logs were expected in the cache"
    for path in local:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{secret[:10]}... in {path}"
    for secret in secrets:
        assert secret not in result.stdout + result.stderr


def test_a_refused_spec_does_not_echo_the_secret_it_refuses(
    harness: Harness, cloud_env: dict[str, str], s3_bucket: str
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    harness.make_inputs(2)
    harness.write_job(
        LINE_PER_FILE, output=f"{s3_bucket}/out", storage_options={"s3": {"secret": secret}}
    )

    code, stderr = run_expecting_failure(harness)

    assert code == 2
    assert "secret" in stderr  # the key is named...
    assert secret not in stderr  # ...but its value is not printed (CI logs are widely readable)


def test_a_missing_side_input_fails_fast_naming_it(
    harness: Harness, cloud_env: dict[str, str], azure_container: str
) -> None:
    missing = f"{azure_container}/no-such-model"
    harness.make_inputs(4)
    harness.write_job(LINE_PER_FILE, side_inputs={"model": missing}, mini_batch_size=2)

    _, stderr = run_expecting_failure(harness)

    assert missing in stderr
    assert re.search(r"does not exist|not found|check the path", stderr), stderr


@pytest.mark.rabbitmq
def test_a_worker_that_cannot_read_a_side_input_fails_the_job_and_keeps_serving(
    harness: Harness,
    rabbitmq_url: str,
    cloud_env: dict[str, str],
    azurite: Azurite,
    azure_container: str,
    s3_server: S3Server,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    put_objects(azure_filesystem(azurite), f"{azure_container}/models", {"weights.txt": "w"})
    harness.make_inputs(4)
    output = f"{s3_bucket}/out"
    side = f"{azure_container}/models"
    harness.write_job(
        LINE_PER_FILE, output=output, side_inputs={"model": side}, mini_batch_size=2, run_max_try=1
    )
    # The worker's machine has a wrong key; the coordinator's is right.
    good = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", good.replace(AZURITE_KEY, WRONG_KEY))
    worker = harness.start_worker(rabbitmq_url, processes=1)
    harness.wait_ready(worker)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", good)

    code, stderr = run_expecting_failure(harness, broker=rabbitmq_url)
    remember_job(harness, s3_filesystem(s3_server), output)

    assert code == 1
    assert worker.poll() is None, f"the worker stopped:\n{harness.log_of(worker)}"
    errors = object_text(s3_filesystem(s3_server), f"{output}/errors.jsonl")
    assert side in errors and "access refused" in errors, errors
    assert side in stderr, stderr
    assert WRONG_KEY not in errors + harness.log_of(worker)


@pytest.mark.rabbitmq
def test_a_worker_that_cannot_read_the_inputs_records_why_and_how_to_fix_it(
    harness: Harness,
    rabbitmq_url: str,
    cloud_env: dict[str, str],
    azurite: Azurite,
    azure_container: str,
    s3_server: S3Server,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    put_objects(azure_filesystem(azurite), f"{azure_container}/in", {"a.txt": "a", "b.txt": "b"})
    output = f"{s3_bucket}/out"
    harness.write_job(LINE_PER_FILE, inputs=f"{azure_container}/in", output=output, run_max_try=1)
    good = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", good.replace(AZURITE_KEY, WRONG_KEY))
    worker = harness.start_worker(rabbitmq_url, processes=1)
    harness.wait_ready(worker)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", good)

    code, stderr = run_expecting_failure(harness, broker=rabbitmq_url)
    remember_job(harness, s3_filesystem(s3_server), output)

    assert code == 1
    lines = object_text(s3_filesystem(s3_server), f"{output}/errors.jsonl").splitlines()
    assert lines
    for line in lines:
        message = json.loads(line)["message"]
        assert azure_container in message, message
        assert "access refused" in message and "AZURE_STORAGE_CONNECTION_STRING" in message
        assert WRONG_KEY not in message
    assert "access refused" in stderr, stderr


SLOW_OWN_FILES = """\
import os
import time

from fleetrun import context


def run(mini_batch):
    path = context.output_dir / f"batch-{context.minibatch_index:03d}.txt"
    with open(path, "w") as out:
        for p in mini_batch:
            out.write(f"{os.path.basename(p)} {open(p).read()}\\n")
            out.flush()
            time.sleep(0.05)
    return mini_batch
"""


@pytest.mark.rabbitmq
def test_two_workers_sharing_a_cache_upload_each_scripts_files_whole(
    harness: Harness,
    rabbitmq_url: str,
    cloud_env: dict[str, str],
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    s3 = s3_filesystem(s3_server)
    harness.make_inputs(40)
    output = f"{s3_bucket}/out"
    harness.write_job(
        SLOW_OWN_FILES, output=output, output_action="summary_only", mini_batch_size=4
    )
    # Two workers on one machine with one cache folder (jobs.py supports exactly that).
    workers = [harness.start_worker(rabbitmq_url, processes=1) for _ in range(2)]
    for worker in workers:
        harness.wait_ready(worker)

    result = harness.run(broker=rabbitmq_url)
    remember_job(harness, s3, output)

    assert result.returncode == 0, result.stderr
    expected = harness.expected_lines()
    found = {u for u in object_uris(s3, output) if "/batch-" in u}
    assert found == {f"{output}/batch-{i:03d}.txt" for i in range(10)}
    for i in range(10):
        text = object_text(s3, f"{output}/batch-{i:03d}.txt")
        assert text.splitlines() == expected[i * 4 : (i + 1) * 4], f"batch-{i:03d}.txt"


FILES_FROM_EVERY_HOOK = """\
from fleetrun import context


def init():
    (context.output_dir / "from-init.txt").write_text("init")


def run(mini_batch):
    (context.output_dir / f"from-run-{context.minibatch_index}.txt").write_text("run")
    return mini_batch


def shutdown():
    (context.output_dir / "from-shutdown.txt").write_text("shutdown")
"""


def test_files_written_to_output_dir_in_init_run_and_shutdown_all_reach_the_s3_output(
    harness: Harness, cloud_env: dict[str, str], s3_server: S3Server, s3_bucket: str
) -> None:
    s3 = s3_filesystem(s3_server)
    harness.make_inputs(4)
    output = f"{s3_bucket}/out"
    harness.write_job(
        FILES_FROM_EVERY_HOOK, output=output, output_action="summary_only", mini_batch_size=2
    )

    result = harness.run()

    # With a local output folder, output_dir is that folder and all three files land there;
    # an object-store output must hold the same once `fleetrun run` is back.
    assert result.returncode == 0, result.stderr
    names = {posixpath.basename(u) for u in object_uris(s3, output) if "/_fleetrun/" not in u}
    assert {"from-init.txt", "from-run-0.txt", "from-run-1.txt"} <= names
    assert "from-shutdown.txt" in names, sorted(names)


@pytest.mark.parametrize("protocol", ["s3", "az"])
def test_folder_marker_objects_are_not_taken_as_input_files(
    harness: Harness,
    cloud_env: dict[str, str],
    azurite: Azurite,
    s3_server: S3Server,
    azure_container: str,
    s3_bucket: str,
    protocol: str,
) -> None:
    fs, root = (
        (s3_filesystem(s3_server), s3_bucket)
        if protocol == "s3"
        else (azure_filesystem(azurite), azure_container)
    )
    # Zero-byte "folder/" objects, as the S3 console's "Create folder" and several Azure tools
    # make them; they are folders to the user, not files.
    files = {"in/": "", "in/a.txt": "1", "in/sub/": "", "in/sub/b.txt": "2", "in/empty/": ""}
    texts = uploaded(fs, root, files)
    real = {uri: text for uri, text in texts.items() if not uri.endswith("/")}
    harness.write_job(LINE_PER_FILE, inputs=[f"{root}/in", f"{root}/in/**"], mini_batch_size=1)

    result = harness.run()

    assert result.returncode == 0, result.stderr
    assert harness.output_lines() == expected_lines(list(real), real)
    assert harness.summary()["items"] == {"total": 2, "succeeded": 2, "failed": 0}
    assert harness.failed_items() == []
