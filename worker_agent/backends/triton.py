"""Triton controller: explicit model-control mode over KServe v2 gRPC (tritonclient).

The repository is ``<model-root>/<model>/<version>/...``. The agent owns the model-level
``config.pbtxt``: it is taken from the newest live version's ``config.pbtxt`` (falling back
to the one already there) and its ``version_policy`` is rewritten to ``specific`` with every
version that should be live, so several versions of one model are served at once. A load
or unload of one version is a reload of the model with the new version set.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from worker_agent.backends import BackendController, ModelKey
from worker_agent.errors import BackendError, BackendUnavailableError

log = logging.getLogger("worker_agent.backend.triton")

_GONE = ("UNAVAILABLE", "")


def _error(err: InferenceServerException, what: str) -> BackendError | BackendUnavailableError:
    """A refusal is a BackendError; a server that cannot be reached is transient."""
    status = str(err.status() or "")
    if status.endswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")):
        return BackendUnavailableError(f"{what}: {err.message()}")
    return BackendError(f"{what}: {err.message()}")


class TritonController(BackendController):
    kind = "triton"
    protocol = "kserve"

    def __init__(self, address: str, model_root: Path) -> None:
        super().__init__(address)
        self.model_root = Path(model_root)
        self._versions: dict[str, set[int]] = defaultdict(set)
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._client: InferenceServerClient | None = None
        self._client_address: str | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _conn(self) -> InferenceServerClient:
        if self._client is None or self._client_address != self.address:
            if self._client is not None:
                old = self._client
                self._closing.add(asyncio.get_running_loop().create_task(old.close()))
            self._client = InferenceServerClient(self.address)
            self._client_address = self.address
        return self._client

    async def live(self) -> bool:
        try:
            return bool(await self._conn().is_server_live(client_timeout=3))
        except Exception:
            return False

    async def _index(self) -> list[dict[str, str]]:
        try:
            index = await self._conn().get_model_repository_index(as_json=True, client_timeout=10)
        except InferenceServerException as err:
            raise BackendUnavailableError(f"Triton at {self.address}: {err.message()}") from None
        return list(index.get("models", []))

    async def discover(self) -> set[ModelKey]:
        ready: set[ModelKey] = set()
        for entry in await self._index():
            number = entry.get("version", "")
            if entry.get("state") == "READY" and number.isdigit():
                ready.add((entry["name"], int(number)))
        for name, version in ready:
            self._versions[name].add(version)
        return ready

    def _write_config(self, model: str) -> None:
        versions = sorted(self._versions[model])
        model_dir = self.model_root / model
        config = model_config_pb2.ModelConfig()
        sources = [model_dir / str(v) / "config.pbtxt" for v in reversed(versions)]
        sources.append(model_dir / "config.pbtxt")
        for source in sources:
            if source.is_file():
                try:
                    text_format.Parse(source.read_text(), config)
                except text_format.ParseError as err:
                    raise BackendError(f"invalid {source}: {err}") from None
                break
        config.name = model
        config.version_policy.Clear()
        config.version_policy.specific.versions.extend(versions)
        tmp = model_dir / ".config.pbtxt.tmp"
        tmp.write_text(text_format.MessageToString(config))
        os.replace(tmp, model_dir / "config.pbtxt")

    async def load(self, model: str, version: int, path: Path, wait_s: float) -> None:
        async with self._locks[model]:
            self._versions[model].add(version)
            try:
                self._write_config(model)
                await self._conn().load_model(model, client_timeout=wait_s)
            except InferenceServerException as err:
                self._versions[model].discard(version)
                raise _error(err, f"Triton could not load {model}@{version}") from None
            except BackendError:
                self._versions[model].discard(version)
                raise

    async def is_ready(self, model: str, version: int) -> bool:
        try:
            return bool(await self._conn().is_model_ready(model, str(version), client_timeout=3))
        except Exception:
            return False

    async def unload(self, model: str, version: int, wait_s: float) -> None:
        async with self._locks[model]:
            self._versions[model].discard(version)
            try:
                if self._versions[model]:
                    self._write_config(model)
                    await self._conn().load_model(model, client_timeout=wait_s)
                else:
                    await self._conn().unload_model(model, client_timeout=wait_s)
            except InferenceServerException as err:
                raise _error(err, f"Triton could not unload {model}@{version}") from None
            # NOTE: Triton answers unload before the model is gone; poll the index.
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                states = [
                    e.get("state", "")
                    for e in await self._index()
                    if e.get("name") == model and e.get("version") == str(version)
                ]
                if all(s in _GONE for s in states):
                    return
                await asyncio.sleep(0.1)
            log.warning("%s@%d still not unloaded after %.0fs", model, version, wait_s)

    def forget_all(self) -> None:
        self._versions.clear()
        # NOTE: a channel to a dead server sits in reconnect backoff; start afresh.
        self._client_address = None

    async def close(self) -> None:
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None
