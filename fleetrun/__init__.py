"""fleetrun: run an init()/run(mini_batch) entry script over many files on a fleet of machines.

    import fleetrun

    spec = fleetrun.load_spec("job.yaml")
    summary = fleetrun.run(spec)                      # embedded broker, local runners
    summary = fleetrun.run(spec, broker="amqp://...")  # every fleetrun worker on RabbitMQ

Names are imported on first use, so an entry script's ``from fleetrun import context`` (in
every runner process) does not load the coordinator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_WHERE = {
    "plan": "fleetrun.api",
    "run": "fleetrun.api",
    "BrokerError": "fleetrun.common.errors",
    "BrokerUnavailable": "fleetrun.common.errors",
    "EntryScriptError": "fleetrun.common.errors",
    "FleetrunError": "fleetrun.common.errors",
    "SpecError": "fleetrun.common.errors",
    "StorageError": "fleetrun.common.errors",
    "JobSpec": "fleetrun.common.spec",
    "load_spec": "fleetrun.common.spec",
    "Summary": "fleetrun.coordinator.outputs",
}

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


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'fleetrun' has no attribute {name!r}")
