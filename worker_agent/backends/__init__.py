"""Model-server controllers: one interface, one module per backend kind."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from registry.records import BackendKind, RouteProtocol

ModelKey = tuple[str, int]


class BackendController(ABC):
    """Tells one model server what to load; answers liveness and readiness.

    Methods are coroutines; none blocks the event loop. ``load`` returns once the server
    accepted the request (it may still be loading: poll :meth:`is_ready`); ``unload``
    returns once the version is gone (or ``wait_s`` passed).
    """

    kind: BackendKind
    protocol: RouteProtocol

    def __init__(self, address: str) -> None:
        self.address = address

    def set_address(self, address: str) -> None:
        """The server moved (e.g. a relaunch on another port)."""
        self.address = address

    @abstractmethod
    async def live(self) -> bool:
        """True if the server answers."""

    @abstractmethod
    async def discover(self) -> set[ModelKey]:
        """Versions loaded and ready right now; the controller adopts them as its own."""

    async def sync(self) -> None:  # noqa: B027 - optional hook
        """Push the controller's full desired state to the server (after :meth:`discover`)."""

    @abstractmethod
    async def load(self, model: str, version: int, path: Path, wait_s: float) -> None:
        """Ask the server to load ``model@version`` from ``path``."""

    @abstractmethod
    async def is_ready(self, model: str, version: int) -> bool:
        """True if the server can serve ``model@version`` now."""

    async def load_error(self, model: str, version: int) -> str | None:
        """A definite load failure the server reports for ``model@version``, if any."""
        return None

    @abstractmethod
    async def unload(self, model: str, version: int, wait_s: float) -> None:
        """Ask the server to unload ``model@version`` and wait until it is gone."""

    @abstractmethod
    def forget_all(self) -> None:
        """The server restarted empty: nothing is loaded any more."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
