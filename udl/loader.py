"""Load plugin packages for the gateway: fetch by sha256, unpack, import in isolation, run.

Isolation: see :mod:`udl.isolation` (a plugin's own modules never collide with another's).

Execution is decided once, at load: which hooks the plugin overrides (the others are
skipped: a plugin without ``postprocess`` costs nothing after the backend call), and how
each runs. Coroutine hooks and the plain hooks of an ``async`` plugin run on the event loop,
the plain hooks of a ``thread`` plugin in the gateway's bounded thread pool (one hand-off
per stage), and ``process`` plugins in worker processes of their own that import and
``load`` the plugin themselves, so CPU-heavy hooks do not hold the gateway's GIL
(:mod:`udl.workers`: one round trip per stage over a socket). Every stage has its timeout
(``asyncio.timeout``: a timer, no task per call); a ``thread`` hook past it keeps its
thread until it returns, a ``process`` worker past it is killed and replaced.

A ``process`` plugin's ``postprocess`` receives the request without its ``tensors`` (the
model's inputs, which stay in the gateway): everything else (payload, content type,
parameters, metadata, ids) is there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, get_args

import grpc

from registry.downloads import (
    DownloadError,
    DownloadUnavailableError,
    download,
    file_sha256,
    verify_sha256,
)
from registry.errors import DeadlineExceededError, InvalidArgumentError
from udl.isolation import import_plugin_class, overridden_hooks
from udl.package import DEFAULT_MAX_BYTES, PluginManifest, Stage, unpack
from udl.sdk import InvalidInput, Plugin, PluginError, Request, Response
from udl.workers import HookFailed, WorkerLoadFailed, WorkerLost, WorkerPool

log = logging.getLogger("udl.loader")


class PluginLoadError(PluginError):
    """A plugin version could not be fetched, verified, imported or loaded."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class PluginTimeoutError(PluginError, DeadlineExceededError):
    """A hook ran past its stage timeout."""


class PluginFailedError(PluginError):
    """A hook raised something other than :class:`udl.InvalidInput`."""


def fetch_package(
    url: str,
    sha256: str,
    cache_dir: Path,
    *,
    token: str | None = None,
    timeout_s: float = 30.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """Return the package bytes for ``sha256``: from ``cache_dir`` or downloaded from ``url``.

    ``file://`` URLs and paths are read directly. The content must hash to ``sha256``.
    """
    cached = cache_dir / f"{sha256}.zip"
    if cached.exists() and file_sha256(cached) == sha256:
        return cached.read_bytes()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{sha256}.{os.getpid()}.tmp"
    try:
        if url.startswith("file://") or url.startswith("/"):
            shutil.copyfile(url.removeprefix("file://"), tmp)
            verify_sha256(url, sha256, file_sha256(tmp))
        else:
            download(url, tmp, max_bytes=max_bytes, timeout_s=timeout_s, sha256=sha256, token=token)
    except (DownloadError, DownloadUnavailableError) as err:
        tmp.unlink(missing_ok=True)
        raise PluginLoadError(f"could not fetch the plugin package: {err}") from None
    tmp.replace(cached)
    return cached.read_bytes()


def unpack_once(data: bytes, sha256: str, cache_dir: Path) -> tuple[Path, PluginManifest]:
    """Unpack a package into ``cache_dir/<sha256>`` (atomically; reused when present)."""
    target = cache_dir / sha256
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}.", dir=cache_dir)) / "pkg"
    try:
        manifest = unpack(data, staging)
        if not target.exists():
            staging.rename(target)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    return target, manifest


class LoadedPlugin:
    """One loaded plugin version, ready to run hooks with timeouts and error mapping.

    Either ``instance`` (in the gateway: ``async`` and ``thread``) or ``workers``
    (``process``) runs the hooks.
    """

    def __init__(
        self,
        manifest: PluginManifest,
        sha256: str,
        directory: Path,
        instance: Plugin | None,
        workers: WorkerPool | None,
        thread_pool: Executor,
    ) -> None:
        self.manifest = manifest
        self.sha256 = sha256
        self.directory = directory
        #: The call hooks the plugin overrides; the others are skipped.
        self.hooks = workers.hooks if workers is not None else frozenset()
        if instance is not None:
            self.hooks = overridden_hooks(type(instance))
        self._instance = instance
        self._workers = workers
        self._thread_pool = thread_pool
        self._timeouts = {stage: manifest.timeout(stage) for stage in get_args(Stage)}
        #: Decided once, per stage: the in-gateway hook, whether it is a coroutine function,
        #: and whether it runs on the event loop.
        self._hook: dict[str, Callable[..., Any]] = {}
        self._coroutine: dict[str, bool] = {}
        self._on_loop: dict[str, bool] = {}
        if instance is not None:
            for stage in ("preprocess", "postprocess", "unload"):
                hook = self._hook[stage] = getattr(instance, stage)
                self._coroutine[stage] = inspect.iscoroutinefunction(hook)
                self._on_loop[stage] = self._coroutine[stage] or manifest.executor == "async"

    @property
    def key(self) -> str:
        """``name@version``."""
        return f"{self.manifest.name}@{self.manifest.version}"

    async def _run(self, stage: Stage, request_id: str, *args: Any) -> Any:
        timeout = self._timeouts[stage]
        try:
            if self._workers is not None:
                return await self._workers.call(stage, args, timeout)
            hook = self._hook[stage]
            if self._coroutine[stage]:
                async with asyncio.timeout(timeout):
                    return await hook(*args)
            if self._on_loop[stage]:  # the author asked for the event loop: no timeout
                return hook(*args)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(timeout):
                return await loop.run_in_executor(self._thread_pool, hook, *args)
        except InvalidInput as err:
            raise InvalidInput(f"{err} ({self._where(stage)}, request {request_id})") from None
        except TimeoutError:
            raise PluginTimeoutError(
                f"{self._where(stage)} exceeded its {timeout:g}s timeout (request {request_id})"
            ) from None
        except (HookFailed, WorkerLost) as err:  # the worker sent its traceback as text
            log.error("%s failed (request %s):\n%s", self._where(stage), request_id, err)
            raise PluginFailedError(f"{self._where(stage)} failed (request {request_id})") from None
        except Exception as err:
            log.error("%s failed (request %s)", self._where(stage), request_id, exc_info=err)
            raise PluginFailedError(f"{self._where(stage)} failed (request {request_id})") from None

    def _where(self, stage: str) -> str:
        return f"plugin {self.key} {stage}"

    async def preprocess(self, request: Request) -> Request:
        if "preprocess" not in self.hooks:
            return request
        result = await self._run("preprocess", request.request_id, request)
        return self._check(result, Request, "preprocess", request.request_id)

    async def postprocess(self, response: Response, request: Request) -> Response:
        if "postprocess" not in self.hooks:
            return response
        if self._workers is not None:  # NOTE: the model's inputs stay here (module docstring)
            request = dataclasses.replace(request, tensors={})
        result = await self._run("postprocess", request.request_id, response, request)
        return self._check(result, Response, "postprocess", request.request_id)

    def _check(self, value: Any, kind: type, stage: str, request_id: str) -> Any:
        if not isinstance(value, kind):
            raise PluginFailedError(
                f"plugin {self.key} {stage} returned {type(value).__name__}, expected "
                f"udl.{kind.__name__} (request {request_id})"
            )
        return value

    async def close(self) -> None:
        """Call ``unload`` (best effort) and stop the worker processes."""
        if self._workers is not None:  # each worker unloads its own instance
            await self._workers.close(grace=self._timeouts["unload"])
            return
        try:
            await self._run("unload", "unload")
        except PluginError:
            log.warning("plugin %s unload failed", self.key)


async def load_plugin(
    data: bytes,
    sha256: str,
    config: dict[str, Any],
    cache_dir: Path,
    thread_pool: ThreadPoolExecutor,
    process_workers: int = 1,
) -> LoadedPlugin:
    """Unpack, import and ``load(config)`` one plugin version; PluginLoadError on failure."""
    try:
        directory, manifest = await asyncio.to_thread(unpack_once, data, sha256, cache_dir)
    except InvalidArgumentError as err:
        raise PluginLoadError(f"invalid plugin package {sha256[:12]}: {err}") from None
    key = f"{manifest.name}@{manifest.version}"
    alias = f"_udl_{manifest.name.replace('.', '_').replace('-', '_')}_{sha256[:12]}"
    timeout = manifest.timeout("load")
    try:
        if manifest.executor == "process":
            init = (str(directory), manifest.model_dump_json(), alias, config)
            workers = WorkerPool(key, init, process_workers, timeout)
            try:
                await workers.start()
            except WorkerLoadFailed as err:
                summary, text = err.args
                log.error("plugin %s failed to load (in its worker process):\n%s", key, text)
                raise PluginLoadError(f"plugin {key} failed to load: {summary}") from None
            except WorkerLost as err:  # e.g. the plugin's load ended its process
                raise PluginLoadError(f"plugin {key} failed to load: {err}") from None
            return LoadedPlugin(manifest, sha256, directory, None, workers, thread_pool)
        cls = await asyncio.to_thread(import_plugin_class, directory, manifest, alias)
        instance = cls()
        async with asyncio.timeout(timeout):
            if inspect.iscoroutinefunction(instance.load):
                await instance.load(config)
            else:
                await asyncio.get_running_loop().run_in_executor(thread_pool, instance.load, config)
        return LoadedPlugin(manifest, sha256, directory, instance, None, thread_pool)
    except TimeoutError:
        raise PluginLoadError(f"plugin {key} load exceeded its {timeout:g}s timeout") from None
    except PluginLoadError:
        raise
    except Exception as err:
        log.exception("plugin %s failed to load", key)
        raise PluginLoadError(f"plugin {key} failed to load: {type(err).__name__}: {err}") from None
