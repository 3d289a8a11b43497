"""Load plugin packages for the gateway: fetch by sha256, unpack, import in isolation, run.

Isolation: a plugin's own top-level modules (``utils.py``, ...) are imported with the
plugin's folder first on ``sys.path`` and then moved out of ``sys.modules`` under a private
prefix, so two plugins (or two versions of one) that both ship ``utils.py`` never see each
other's. NOTE: import your own modules at module level; an ``import utils`` run later,
inside a function, no longer finds the plugin's folder on ``sys.path``.

Execution: whether a hook is a coroutine is decided once, at load. ``async`` and coroutine
hooks run on the event loop, ``thread`` hooks in the gateway's bounded thread pool, and
``process`` plugins in a process pool of their own whose workers (started with ``spawn``)
import and ``load`` the plugin themselves (so CPU-heavy hooks do not hold the gateway's GIL).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from registry.downloads import (
    DownloadError,
    DownloadUnavailableError,
    download,
    file_sha256,
    verify_sha256,
)
from registry.errors import DeadlineExceededError, InvalidArgumentError
from udl.package import DEFAULT_MAX_BYTES, PluginManifest, Stage, unpack
from udl.sdk import InvalidInput, Plugin, PluginError, Request, Response

log = logging.getLogger("udl.loader")

_IMPORT_LOCK = threading.Lock()


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


def import_plugin_class(directory: Path, manifest: PluginManifest, alias: str) -> type[Plugin]:
    """Import the entrypoint class from ``directory`` with its modules kept private."""
    own = {p.stem for p in directory.glob("*.py")} | {
        p.name for p in directory.iterdir() if (p / "__init__.py").exists()
    }

    def is_own(name: str) -> bool:
        return name.split(".")[0] in own

    with _IMPORT_LOCK:
        stashed = {n: sys.modules.pop(n) for n in list(sys.modules) if is_own(n)}
        sys.path.insert(0, str(directory))
        importlib.invalidate_caches()
        try:
            module = importlib.import_module(manifest.module)
        finally:
            sys.path.remove(str(directory))
            for name in [n for n in sys.modules if is_own(n)]:
                sys.modules[f"{alias}.{name}"] = sys.modules.pop(name)
            sys.modules.update(stashed)
    cls = getattr(module, manifest.class_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, Plugin)):
        raise InvalidArgumentError(
            f"entrypoint {manifest.entrypoint!r} is not a udl.Plugin subclass"
        )
    return cls


# -- process executor: each worker process holds its own plugin instance -------------------

_CHILD_PLUGIN: Plugin | None = None
#: Why this worker has no plugin: ("Type: message", traceback text).
_CHILD_LOAD_ERROR: tuple[str, str] | None = None


def _child_init(directory: str, manifest_json: str, alias: str, config: dict[str, Any]) -> None:
    global _CHILD_PLUGIN, _CHILD_LOAD_ERROR
    # NOTE: an initializer that raises breaks the pool (BrokenProcessPool) and the plugin's
    # own error is lost; keep it for _child_load_error to report instead.
    try:
        manifest = PluginManifest.model_validate_json(manifest_json)
        plugin = import_plugin_class(Path(directory), manifest, alias)()
        _run_sync(plugin.load, config)
    except Exception as err:
        _CHILD_LOAD_ERROR = (f"{type(err).__name__}: {err}", traceback.format_exc())
    else:
        _CHILD_PLUGIN = plugin


def _child_load_error() -> tuple[str, str] | None:
    return _CHILD_LOAD_ERROR


def _run_sync(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _child_call(stage: str, *args: Any) -> Any:
    if _CHILD_PLUGIN is None:  # a worker started later, whose load failed
        assert _CHILD_LOAD_ERROR is not None
        raise RuntimeError(f"the plugin did not load in this worker:\n{_CHILD_LOAD_ERROR[1]}")
    try:
        return _run_sync(getattr(_CHILD_PLUGIN, stage), *args)
    except InvalidInput:
        raise
    except Exception:
        # NOTE: user exceptions may not pickle; send the traceback text instead.
        raise RuntimeError(traceback.format_exc()) from None


class LoadedPlugin:
    """One loaded plugin version, ready to run hooks with timeouts and error mapping."""

    def __init__(
        self,
        manifest: PluginManifest,
        sha256: str,
        directory: Path,
        instance: Plugin | None,
        process_pool: ProcessPoolExecutor | None,
        thread_pool: Executor,
    ) -> None:
        self.manifest = manifest
        self.sha256 = sha256
        self.directory = directory
        self._instance = instance
        self._process_pool = process_pool
        self._thread_pool = thread_pool
        # Decided once: which hooks are coroutines (only meaningful in-process).
        self._is_async = {
            stage: instance is not None and inspect.iscoroutinefunction(getattr(instance, stage))
            for stage in ("load", "preprocess", "postprocess", "unload")
        }

    @property
    def key(self) -> str:
        """``name@version``."""
        return f"{self.manifest.name}@{self.manifest.version}"

    async def _run(self, stage: Stage, request_id: str, *args: Any) -> Any:
        timeout = self.manifest.timeout(stage)
        where = f"plugin {self.key} {stage}"
        try:
            return await asyncio.wait_for(self._call(stage, *args), timeout)
        except InvalidInput as err:
            raise InvalidInput(f"{err} ({where}, request {request_id})") from None
        except TimeoutError:
            raise PluginTimeoutError(
                f"{where} exceeded its {timeout:g}s timeout (request {request_id})"
            ) from None
        except Exception as err:
            if self._process_pool is not None:  # the child sent its traceback as text
                log.error("%s failed (request %s):\n%s", where, request_id, err)
            else:
                log.error("%s failed (request %s)", where, request_id, exc_info=err)
            raise PluginFailedError(f"{where} failed (request {request_id})") from None

    async def _call(self, stage: Stage, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._process_pool is not None:
            return await loop.run_in_executor(self._process_pool, _child_call, stage, *args)
        assert self._instance is not None
        hook = getattr(self._instance, stage)
        if self._is_async[stage]:
            return await hook(*args)
        if self.manifest.executor == "async":  # the author asked for the event loop
            return hook(*args)
        return await loop.run_in_executor(self._thread_pool, hook, *args)

    async def preprocess(self, request: Request) -> Request:
        result = await self._run("preprocess", request.request_id, request)
        return self._check(result, Request, "preprocess", request.request_id)

    async def postprocess(self, response: Response, request: Request) -> Response:
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
        """Call ``unload`` (best effort) and release the process pool."""
        try:
            if self._instance is not None:
                await self._run("unload", "unload")
        except PluginError:
            log.warning("plugin %s unload failed", self.key)
        if self._process_pool is not None:
            self._process_pool.shutdown(wait=False, cancel_futures=True)


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
    loop = asyncio.get_running_loop()
    try:
        if manifest.executor == "process":
            pool = ProcessPoolExecutor(
                max_workers=process_workers,
                # NOTE: spawn, not fork: forking a process that runs gRPC's threads is unsafe.
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_child_init,
                initargs=(str(directory), manifest.model_dump_json(), alias, config),
            )
            # Start a worker now so a broken plugin fails at load, not on the first call.
            failure = await asyncio.wait_for(loop.run_in_executor(pool, _child_load_error), timeout)
            if failure is not None:
                pool.shutdown(wait=False, cancel_futures=True)
                log.error("plugin %s failed to load (in its worker process):\n%s", key, failure[1])
                raise PluginLoadError(f"plugin {key} failed to load: {failure[0]}")
            return LoadedPlugin(manifest, sha256, directory, None, pool, thread_pool)
        cls = await asyncio.to_thread(import_plugin_class, directory, manifest, alias)
        instance = cls()
        if inspect.iscoroutinefunction(instance.load):
            await asyncio.wait_for(instance.load(config), timeout)
        else:
            await asyncio.wait_for(
                loop.run_in_executor(thread_pool, instance.load, config), timeout
            )
        return LoadedPlugin(manifest, sha256, directory, instance, None, thread_pool)
    except TimeoutError:
        raise PluginLoadError(f"plugin {key} load exceeded its {timeout:g}s timeout") from None
    except PluginLoadError:
        raise
    except Exception as err:
        log.exception("plugin %s failed to load", key)
        raise PluginLoadError(f"plugin {key} failed to load: {type(err).__name__}: {err}") from None
