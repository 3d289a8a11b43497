"""TF-Serving controller: the agent owns the whole ``ModelServerConfig``.

TF-Serving replaces its entire model config on ``HandleReloadConfigRequest``, so every
change sends the full config: every assigned model with a ``specific`` version policy
listing all of its live versions. Readiness is ``GetModelStatus`` == AVAILABLE. Only the
light generated stubs under ``protos.tfs`` are used (never TensorFlow).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from pathlib import Path

import grpc

from protos.tfs.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)
from protos.tfs.tensorflow_serving.config import model_server_config_pb2
from worker_agent.backends import BackendController, ModelKey
from worker_agent.errors import BackendError, BackendUnavailableError

log = logging.getLogger("worker_agent.backend.tfserving")

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
_PROBE_MODEL = "__modelgate_liveness_probe__"


class TFServingController(BackendController):
    kind = "tfserving"
    protocol = "tfserving"

    def __init__(
        self, address: str, model_root: Path, *, server_model_root: Path | None = None
    ) -> None:
        super().__init__(address)
        self.model_root = Path(model_root)
        #: The model root as the server sees it (e.g. a container mount).
        self.server_model_root = Path(server_model_root or model_root)
        self._versions: dict[str, set[int]] = defaultdict(set)
        self._lock = asyncio.Lock()
        self._channel: grpc.aio.Channel | None = None
        self._channel_address: str | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _stub(self) -> model_service_pb2_grpc.ModelServiceStub:
        if self._channel is None or self._channel_address != self.address:
            if self._channel is not None:
                old = self._channel
                self._closing.add(asyncio.get_running_loop().create_task(old.close()))
            self._channel = grpc.aio.insecure_channel(self.address)
            self._channel_address = self.address
        return model_service_pb2_grpc.ModelServiceStub(self._channel)

    def config(self) -> model_server_config_pb2.ModelServerConfig:
        """The full config this agent wants the server to hold."""
        config = model_server_config_pb2.ModelServerConfig()
        for name in sorted(self._versions):
            versions = sorted(self._versions[name])
            if not versions:
                continue
            entry = config.model_config_list.config.add()
            entry.name = name
            entry.base_path = str(self.server_model_root / name)
            entry.model_platform = "tensorflow"
            entry.model_version_policy.specific.versions.extend(versions)
        return config

    async def _apply(self) -> None:
        request = model_management_pb2.ReloadConfigRequest(config=self.config())
        try:
            response = await self._stub().HandleReloadConfigRequest(request, timeout=30)
        except grpc.aio.AioRpcError as err:
            raise BackendUnavailableError(
                f"TF-Serving at {self.address}: {err.code().name}: {err.details()}"
            ) from None
        if response.status.error_code != 0:
            raise BackendError(
                f"TF-Serving rejected the model config: {response.status.error_message}"
            )

    async def _status(
        self, model: str, version: int | None
    ) -> list[get_model_status_pb2.ModelVersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        try:
            response = await self._stub().GetModelStatus(request, timeout=5)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise BackendUnavailableError(
                f"TF-Serving at {self.address}: {err.code().name}: {err.details()}"
            ) from None
        return list(response.model_version_status)

    async def live(self) -> bool:
        try:
            await self._status(_PROBE_MODEL, None)
            return True
        except BackendUnavailableError:
            return False

    async def discover(self) -> set[ModelKey]:
        found: set[ModelKey] = set()
        names = (
            {p.name for p in self.model_root.iterdir() if p.is_dir()}
            if self.model_root.is_dir()
            else set()
        )
        for name in sorted(n for n in names if not n.startswith(".")):
            for status in await self._status(name, None):
                if status.state == AVAILABLE:
                    found.add((name, int(status.version)))
        for name, version in found:
            self._versions[name].add(version)
        return found

    async def sync(self) -> None:
        async with self._lock:
            await self._apply()

    async def load(self, model: str, version: int, path: Path, wait_s: float) -> None:
        async with self._lock:
            self._versions[model].add(version)
            try:
                await self._apply()
            except BackendError:
                self._versions[model].discard(version)
                raise

    async def is_ready(self, model: str, version: int) -> bool:
        try:
            statuses = await self._status(model, version)
        except BackendUnavailableError:
            return False
        return any(s.version == version and s.state == AVAILABLE for s in statuses)

    async def load_error(self, model: str, version: int) -> str | None:
        try:
            statuses = await self._status(model, version)
        except BackendUnavailableError:
            return None
        for s in statuses:
            if s.version == version and s.state != AVAILABLE and s.status.error_code != 0:
                return f"TF-Serving could not load {model}@{version}: {s.status.error_message}"
        return None

    async def unload(self, model: str, version: int, wait_s: float) -> None:
        async with self._lock:
            self._versions[model].discard(version)
            if not self._versions[model]:
                del self._versions[model]
            await self._apply()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not await self.is_ready(model, version):
                return
            await asyncio.sleep(0.1)
        log.warning("%s@%d still available after %.0fs", model, version, wait_s)

    def forget_all(self) -> None:
        self._versions.clear()
        # NOTE: a channel to a dead server sits in reconnect backoff; start afresh.
        self._channel_address = None

    async def close(self) -> None:
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
