"""The backend object of each route protocol, and the one an instance is called with."""

from __future__ import annotations

from gateway.backends.base import Backend
from gateway.backends.channels import ChannelPool
from gateway.backends.rest import RestBackend
from gateway.backends.tfserving import TFServingBackend
from gateway.backends.triton import TritonBackend
from gateway.table import Instance


class Backends:
    """One backend object per protocol, over one channel pool and one HTTP client."""

    def __init__(self, max_message_bytes: int) -> None:
        self.pool = ChannelPool(max_message_bytes)
        self.rest = RestBackend()
        self._by_protocol: dict[str, Backend] = {
            "kserve": TritonBackend(self.pool),
            "tfserving": TFServingBackend(self.pool),
            "rest": self.rest,
        }

    def of(self, instance: Instance) -> Backend:
        """The backend that speaks ``instance``'s protocol."""
        return self._by_protocol[instance.protocol]

    async def close(self) -> None:
        await self.pool.close()
        await self.rest.close()
