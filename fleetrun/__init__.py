"""fleetrun: run an init()/run(mini_batch) entry script over many files on a fleet of machines.

import fleetrun

spec = fleetrun.load_spec("job.yaml")
summary = fleetrun.run(spec)                      # embedded broker, local runners
summary = fleetrun.run(spec, broker="amqp://...")  # every fleetrun worker on RabbitMQ
"""

from fleetrun.api import plan, run
from fleetrun.common.errors import (
    BrokerError,
    BrokerUnavailable,
    EntryScriptError,
    FleetrunError,
    SpecError,
    StorageError,
)
from fleetrun.common.spec import JobSpec, load_spec
from fleetrun.coordinator.outputs import Summary

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "EntryScriptError",
    "FleetrunError",
    "JobSpec",
    "SpecError",
    "StorageError",
    "Summary",
    "load_spec",
    "plan",
    "run",
]
