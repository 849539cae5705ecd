"""A worker killed -9 while it writes result parts to an object store: the output stays exact."""

from __future__ import annotations

import json
import posixpath
import signal
from typing import Any

import pytest
from emulators import Azurite, S3Server, azure_filesystem, s3_filesystem
from helpers import (
    Harness,
    content_of,
    descendants,
    kill_pid,
    object_text,
    object_uris,
    put_objects,
    wait_for,
)

from fleetrun.common.messages import BatchResult

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(240)]

FILES = 60
BATCH = 3
BATCHES = FILES // BATCH

SLOW = """\
import os
import time


def run(mini_batch):
    lines = []
    for p in mini_batch:
        time.sleep(0.1)
        lines.append(f"{os.path.basename(p)} {open(p).read()}")
    return lines
"""


@pytest.mark.parametrize(
    ("output_on", "killed"),
    [("s3", "the worker and its runners"), ("azure", "the worker daemon only")],
)
def test_a_worker_killed_while_writing_parts_to_the_cloud_leaves_an_exact_output(
    harness: Harness,
    rabbitmq_url: str,
    cloud_env: dict[str, str],
    azurite: Azurite,
    s3_server: S3Server,
    azure_container: str,
    s3_bucket: str,
    output_on: str,
    killed: str,
) -> None:
    s3 = s3_filesystem(s3_server)
    files = {f"d{i % 4}/{i:03d}.txt": content_of(i) for i in range(FILES)}
    put_objects(s3, f"{s3_bucket}/in", files)
    inputs = sorted(f"{s3_bucket}/in/{key}" for key in files)
    texts = {f"{s3_bucket}/in/{key}": text for key, text in files.items()}
    expected = [f"{posixpath.basename(uri)} {texts[uri]}" for uri in inputs]
    if output_on == "s3":
        out_fs, output = s3, f"{s3_bucket}/out"
    else:
        out_fs, output = azure_filesystem(azurite), f"{azure_container}/out"
    harness.write_job(SLOW, inputs=f"{s3_bucket}/in", output=output, mini_batch_size=BATCH)
    doomed = harness.start_worker(rabbitmq_url, processes=1)
    survivor = harness.start_worker(rabbitmq_url, processes=1)
    harness.wait_ready(doomed)
    harness.wait_ready(survivor)
    run = harness.start_run(broker=rabbitmq_url)
    parts = f"{output}/_fleetrun/parts"

    wait_for(lambda: len(object_uris(out_fs, parts)) >= BATCHES // 3, 90, "a third of the parts")
    runners = harness.runner_pids(doomed)
    victims = [doomed.pid, *descendants(doomed.pid)] if killed.endswith("runners") else [doomed.pid]
    for pid in victims:
        kill_pid(pid, signal.SIGKILL)
    doomed.wait(10)
    assert len(object_uris(out_fs, parts)) < BATCHES, "the job must not be over at the kill"

    assert run.wait(150) == 0, harness.log_of(run)
    with_state = json.loads(object_text(out_fs, f"{output}/_fleetrun/spec.json"))
    harness.job_ids.add(with_state["job_id"])
    assert runners, "the killed worker had a runner"
    # Every part is whole: a JSON header, then exactly the rows it announces, of its own batch.
    part_uris = object_uris(out_fs, parts)
    assert part_uris == [f"{parts}/{i:09d}.part" for i in range(BATCHES)]
    for index, uri in enumerate(part_uris):
        header_line, _, body = object_text(out_fs, uri).partition("\n")
        header = BatchResult.model_validate_json(header_line)
        assert (header.index, header.status, header.succeeded) == (index, "succeeded", BATCH)
        assert body.splitlines() == expected[index * BATCH : (index + 1) * BATCH], uri
    lines = object_text(out_fs, f"{output}/parallel_run_step.txt").splitlines()
    assert len(lines) == len(set(lines)), "duplicate lines in the output"
    assert lines == expected
    summary: dict[str, Any] = json.loads(object_text(out_fs, f"{output}/summary.json"))
    assert summary["status"] == "succeeded"
    assert summary["items"] == {"total": FILES, "succeeded": FILES, "failed": 0}
    counts = summary["mini_batches"]
    assert (counts["total"], counts["succeeded"], counts["failed"]) == (BATCHES, BATCHES, 0)
    # Only the batches the dead worker held (one running, one staged) may have cost a try.
    assert counts["retried"] <= 2
    assert not [u for u in object_uris(out_fs, output) if ".tmp-" in u]


def test_a_coordinator_killed_with_its_state_on_azure_resumes_to_an_exact_output(
    harness: Harness,
    rabbitmq_url: str,
    cloud_env: dict[str, str],
    azurite: Azurite,
    azure_container: str,
) -> None:
    az = azure_filesystem(azurite)
    files = {f"d{i % 4}/{i:03d}.txt": content_of(i) for i in range(FILES)}
    put_objects(az, f"{azure_container}/in", files)
    texts = {f"{azure_container}/in/{key}": text for key, text in files.items()}
    expected = [f"{posixpath.basename(uri)} {texts[uri]}" for uri in sorted(texts)]
    output = f"{azure_container}/out"
    harness.write_job(SLOW, inputs=f"{azure_container}/in", output=output, mini_batch_size=BATCH)
    workers = [harness.start_worker(rabbitmq_url, processes=1) for _ in range(2)]
    for worker in workers:
        harness.wait_ready(worker)
    first = harness.start_run(broker=rabbitmq_url)
    parts, ledger = f"{output}/_fleetrun/parts", f"{output}/_fleetrun/ledger"

    wait_for(
        lambda: object_uris(az, ledger) and len(object_uris(az, parts)) >= BATCHES // 3,
        90,
        "a third of the parts and a ledger file",
    )
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert not az.exists(f"{output}/summary.json")

    again = harness.run(broker=rabbitmq_url)
    harness.job_ids.add(json.loads(object_text(az, f"{output}/_fleetrun/spec.json"))["job_id"])

    assert again.returncode == 0, again.stderr
    lines = object_text(az, f"{output}/parallel_run_step.txt").splitlines()
    assert len(lines) == len(set(lines)), "duplicate lines in the output"
    assert lines == expected
    summary: dict[str, Any] = json.loads(object_text(az, f"{output}/summary.json"))
    assert summary["status"] == "succeeded"
    assert summary["items"] == {"total": FILES, "succeeded": FILES, "failed": 0}
    counts = summary["mini_batches"]
    assert (counts["total"], counts["succeeded"], counts["failed"]) == (BATCHES, BATCHES, 0)
    assert not [u for u in object_uris(az, output) if ".tmp-" in u]
