"""One exception tree for everything fleetrun raises on purpose.

Third-party errors are translated at the boundary (``raise BrokerUnavailable(...) from exc``) so
callers can tell a retryable failure (the broker or the storage went away) from a poison one (a
bad spec, a bad script) without knowing pika or fsspec. Storage keeps fsspec's built-in
``FileNotFoundError`` family where a missing object is an expected outcome.
"""


class FleetrunError(Exception):
    """Base of every error fleetrun raises on purpose."""


class SpecError(FleetrunError):
    """The job spec is invalid; the message names the key and the fix."""


class StorageError(FleetrunError):
    """A storage location could not be read or written."""


class BrokerError(FleetrunError):
    """The broker refused an operation."""


class Unroutable(BrokerError):
    """The message's queue does not exist (for a result: its job's coordinator is gone)."""


class BrokerUnavailable(BrokerError):
    """No broker answered; retryable once the broker is back."""


class ConnectionLost(BrokerError):
    """The connection a delivery or a publish belonged to is gone; the broker requeues the rest."""


class EntryScriptError(FleetrunError):
    """The entry script cannot be loaded or broke the contract (no run(), wrong return type)."""


class JobAborted(FleetrunError):
    """The job crossed a failure threshold or was cancelled."""
