"""The coordinator: plans a job, publishes its batches, collects results, writes the outputs."""
