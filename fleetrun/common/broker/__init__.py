"""Broker access: one interface, two implementations (RabbitMQ over pika, and embedded)."""

from fleetrun.common.broker.base import Connection, Consumer, Delivery, connect

__all__ = ["Connection", "Consumer", "Delivery", "connect"]
