"""The Celery app: one task per mini-batch doing what the fleetrun no-op entry script does.

The worker runs ``celery -A bench.celery_baseline.app worker ...`` with the broker and the queue
in ``BENCH_CELERY_BROKER`` and ``BENCH_CELERY_QUEUE``; the driver builds the same app with
:func:`make_app`. The settings are the ones the issue names (acks_late, prefetch multiplier 1)
plus what keeps the run private on a shared broker: a queue unique to the run, no remote
control (no pidbox queues), no events. The queue is classic: with quorum queues Celery >= 5.5
declares 28 ``celery_delayed_*`` queues of its own, and Celery is slower on them (see
``shared/reference/rabbitmq.md`` (e)(4)).
"""

from __future__ import annotations

import os

from celery import Celery  # type: ignore[import-untyped]

TASK_NAME = "bench.noop_batch"


def noop_batch(paths: list[str]) -> list[str]:
    return [os.path.basename(p) for p in paths]


def make_app(broker: str, queue: str) -> Celery:
    app = Celery("fleetrun-bench", broker=broker, backend="rpc://")
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_create_missing_queues=True,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_expires=None,
        accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
    )
    app.task(name=TASK_NAME)(noop_batch)
    return app


app = make_app(
    os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("BENCH_CELERY_QUEUE", "bench-celery"),
)
