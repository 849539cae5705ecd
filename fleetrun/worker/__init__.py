"""The worker: a supervisor that owns the broker connection, and runner processes for user code."""
