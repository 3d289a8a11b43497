"""The contract between modelgate's roles: ZooKeeper layout, typed records, and a kazoo wrapper.

Nothing outside this package writes raw ZooKeeper paths: use :mod:`registry.layout` for
paths, :mod:`registry.records` for what is stored there, and :class:`Registry` to read,
write and watch them.
"""

from registry.client import EphemeralNode, Registry, Transaction, TreeEvent
from registry.errors import (
    ConflictError,
    InvalidRecordError,
    ModelgateError,
    NotFoundError,
    ZooKeeperUnavailableError,
)

__all__ = [
    "ConflictError",
    "EphemeralNode",
    "InvalidRecordError",
    "ModelgateError",
    "NotFoundError",
    "Registry",
    "Transaction",
    "TreeEvent",
    "ZooKeeperUnavailableError",
]
