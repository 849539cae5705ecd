"""Fixtures of the chaos suite: real fleetrun processes on RabbitMQ, killed and restarted."""

from helpers import harness

__all__ = ["harness"]
