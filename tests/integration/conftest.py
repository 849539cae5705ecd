"""Fixtures of the integration suite: real fleetrun processes on the embedded broker or RabbitMQ."""

from helpers import harness

__all__ = ["harness"]
