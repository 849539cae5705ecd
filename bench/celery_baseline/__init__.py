"""The Celery baseline of the throughput benchmark: the same no-op job, a task per mini-batch."""
