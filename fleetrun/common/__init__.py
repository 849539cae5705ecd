"""What the coordinator and the worker share: the job spec, messages, storage and broker access."""
