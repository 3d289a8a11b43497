"""A model server that loads instantly, for simulated workers (benchmarks only).

Everything else of a worker is real: registration, heartbeats, the assignment watch, the
reconciler's slots and route publication are :mod:`worker_agent`'s own code; only the model
server behind the agent and its files are replaced, so the scale benchmark measures the
protocol, not Triton or disk copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker_agent.agent import WorkerAgent
from worker_agent.artifacts import ArtifactStore
from worker_agent.backends import BackendController, ModelKey


class InstantBackend(BackendController):
    """Every load succeeds at once; a loaded version is ready until it is unloaded."""

    kind = "triton"
    protocol = "kserve"

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.loaded: set[ModelKey] = set()

    async def live(self) -> bool:
        return True

    async def discover(self) -> set[ModelKey]:
        return set(self.loaded)

    async def load(self, model: str, version: int, path: Path, wait_s: float) -> None:
        self.loaded.add((model, version))

    async def is_ready(self, model: str, version: int) -> bool:
        return (model, version) in self.loaded

    async def unload(self, model: str, version: int, wait_s: float) -> None:
        self.loaded.discard((model, version))

    def forget_all(self) -> None:
        self.loaded.clear()


class NoFilesStore(ArtifactStore):
    """An artifact store with nothing to pull: the instant backend reads no files."""

    def installed(self, model: str, version: int, uri: str, sha256: str | None) -> bool:
        return True

    def remove(self, model: str, version: int) -> None:
        pass


class SimulatedAgent(WorkerAgent):
    """The real worker agent with an :class:`InstantBackend` as its model server."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._instant: InstantBackend | None = None
        super().__init__(*args, **kwargs)
        assert self.settings.backend_address is not None
        self.store = NoFilesStore(self.model_root, max_bytes=self.settings.max_artifact_bytes)
        self._instant = InstantBackend(self.settings.backend_address)

    # NOTE: WorkerAgent.start() builds its controller from the settings (Triton or
    # TF-Serving) and has no way to be given one; this pins the attribute to the instant
    # backend instead. A `backend=` argument of WorkerAgent would make this unnecessary.
    @property
    def backend(self) -> BackendController | None:
        return self._instant

    @backend.setter
    def backend(self, _controller: BackendController | None) -> None:
        pass
