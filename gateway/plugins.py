"""The gateway's plugins: one loaded plugin version per model, hot-swapped on ZooKeeper changes.

When the routing table shows a model whose ``plugin``/``plugin_config`` differs from what
is loaded, the plugin record (``/plugins/<name>/<version>``) is read, its package fetched
and verified by sha256, imported in isolation and ``load``-ed with the model's config
(see :mod:`udl.loader`). Only then does it replace the version serving the model; calls
already running keep the version they started with, which is unloaded when the last of
them finishes. A version that fails to fetch, import or load leaves the previous one
serving; the error goes to the ``/gateways/<id>`` record, the log and the metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import FailedPreconditionError, ModelUnavailableError
from gateway.flow import JSON_FLOW, Flow, PluginFlow
from gateway.metrics import GatewayMetrics
from gateway.table import ModelEntry
from registry import Registry, layout
from registry.errors import ModelgateError, NotFoundError
from registry.records import GatewayPluginStatus
from registry.records import Plugin as PluginRecord
from udl.loader import LoadedPlugin, PluginLoadError, fetch_package, load_plugin

log = logging.getLogger("gateway.plugins")

#: What a model asks for: (``name@version``, its plugin_config as canonical JSON).
Spec = tuple[str, str]


@dataclass(eq=False)
class _Loaded:
    plugin: LoadedPlugin
    spec: Spec
    users: int = 0
    retired: bool = False


@dataclass(eq=False)
class _Slot:
    """The plugin state of one model."""

    spec: Spec
    serving: _Loaded | None = None
    error: str | None = None
    loading: asyncio.Task[None] | None = None
    #: Set once the first load attempt for the current spec has finished.
    settled: asyncio.Event = field(default_factory=asyncio.Event)


def spec_of(entry: ModelEntry) -> Spec | None:
    plugin = entry.record.plugin
    if not plugin:
        return None
    return plugin, json.dumps(entry.record.plugin_config, sort_keys=True)


class PluginHost:
    """Loads, serves and swaps the plugins of the models in the routing table."""

    def __init__(
        self,
        registry: Registry,
        metrics: GatewayMetrics,
        *,
        cache_dir: Path | None = None,
        blob_token: str | None = None,
        threads: int = 8,
        processes: int = 2,
        on_change: Callable[[dict[str, GatewayPluginStatus]], None] | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self._tmp = None if cache_dir else tempfile.TemporaryDirectory(prefix="modelgate-udl-")
        self.cache_dir = Path(cache_dir or self._tmp.name)  # type: ignore[union-attr]
        self.blob_token = blob_token
        self.processes = processes
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="udl")
        self.on_change = on_change
        self._slots: dict[str, _Slot] = {}
        self._closing: set[asyncio.Task[None]] = set()

    # -- following the routing table ----------------------------------------------------

    def sync(self, models: Mapping[str, ModelEntry], names: Iterable[str]) -> None:
        """Follow the table ``models`` for the changed ``names``: start loads for models
        whose plugin changed; retire the plugins of models that are gone or have none."""
        changed = False
        for name in names:
            entry = models.get(name)
            spec = None if entry is None else spec_of(entry)
            slot = self._slots.get(name)
            if spec is None:
                if slot is not None:
                    self._drop(name)
                    changed = True
                continue
            if slot is not None and slot.spec == spec:
                continue
            if slot is None:
                slot = self._slots[name] = _Slot(spec)
            else:
                slot.spec, slot.settled = spec, asyncio.Event()
            slot.loading = asyncio.ensure_future(self._load(name, slot, spec))
            changed = True
        if changed:
            self._publish()

    async def _load(self, model: str, slot: _Slot, spec: Spec) -> None:
        key, config = spec
        try:
            plugin = await self._fetch_and_load(key, json.loads(config))
        except Exception as err:
            self.metrics.plugin_loads.labels(key, "failed").inc()
            if slot.spec == spec:
                slot.error = (
                    str(err)
                    if isinstance(err, ModelgateError)
                    else (f"{type(err).__name__}: {err}")
                )
                kept = f"; {slot.serving.plugin.key} keeps serving" if slot.serving else ""
                log.error("model %s: plugin %s not loaded: %s%s", model, key, err, kept)
        else:
            self.metrics.plugin_loads.labels(key, "loaded").inc()
            if self._slots.get(model) is not slot or slot.spec != spec:
                self._retire(_Loaded(plugin, spec))  # superseded while loading
            else:
                old, slot.serving, slot.error = slot.serving, _Loaded(plugin, spec), None
                log.info("model %s: plugin %s serving", model, key)
                if old is not None:
                    self._retire(old)
        finally:
            if slot.spec == spec:
                slot.loading = None
                slot.settled.set()
                self._publish()

    async def _fetch_and_load(self, key: str, config: dict[str, Any]) -> LoadedPlugin:
        name, _, version = key.partition("@")
        try:
            record, _ = await asyncio.to_thread(
                self.registry.get, layout.plugin(name, version), PluginRecord
            )
        except NotFoundError:
            raise PluginLoadError(
                f"plugin {key} is not registered; push it with `modelgate plugins push`"
            ) from None
        data = await asyncio.to_thread(
            fetch_package, record.blob_url, record.sha256, self.cache_dir, token=self.blob_token
        )
        plugin = await load_plugin(
            data, record.sha256, config, self.cache_dir, self.pool, self.processes
        )
        if plugin.key != key:
            await plugin.close()
            raise PluginLoadError(f"package registered as {key} declares {plugin.key}")
        return plugin

    # -- serving calls ------------------------------------------------------------------

    @asynccontextmanager
    async def flow(self, entry: ModelEntry, wait_s: float) -> AsyncIterator[Flow]:
        """The flow for one ``Invoke``/tensor call on ``entry``; holds its plugin version.

        Waits up to ``wait_s`` for a plugin that is still loading for the first time.
        """
        spec = spec_of(entry)
        if spec is None:
            yield JSON_FLOW
            return
        slot = self._slots.get(entry.name)
        if slot is None:  # the table listener has not seen this model yet
            self.sync({entry.name: entry}, (entry.name,))
            slot = self._slots[entry.name]
        if slot.serving is None and not slot.settled.is_set():
            try:
                await asyncio.wait_for(slot.settled.wait(), max(wait_s, 0.0))
            except TimeoutError:
                pass
        held = slot.serving
        if held is None:
            if slot.error:
                raise FailedPreconditionError(
                    f"model {entry.name!r}: plugin {spec[0]} is not loaded: {slot.error}"
                )
            raise ModelUnavailableError(
                f"model {entry.name!r}: plugin {spec[0]} is still loading; retry"
            )
        held.users += 1
        try:
            yield PluginFlow(held.plugin, self.metrics)
        finally:
            held.users -= 1
            if held.retired and held.users == 0:
                self._close(held)

    # -- status and shutdown ------------------------------------------------------------

    def status(self) -> dict[str, GatewayPluginStatus]:
        """Per model: the plugin version serving it and the last load error."""
        return {
            model: GatewayPluginStatus(
                serving=slot.serving.plugin.key if slot.serving else None, error=slot.error
            )
            for model, slot in sorted(self._slots.items())
        }

    def _publish(self) -> None:
        if self.on_change is not None:
            self.on_change(self.status())

    def _drop(self, model: str) -> None:
        slot = self._slots.pop(model)
        if slot.serving is not None:
            self._retire(slot.serving)

    def _retire(self, loaded: _Loaded) -> None:
        loaded.retired = True
        if loaded.users == 0:
            self._close(loaded)

    def _close(self, loaded: _Loaded) -> None:
        task = asyncio.ensure_future(loaded.plugin.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for slot in self._slots.values():
            if slot.loading is not None:
                slot.loading.cancel()
        for name in list(self._slots):
            self._drop(name)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._tmp is not None:
            self._tmp.cleanup()
