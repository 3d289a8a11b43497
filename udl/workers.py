"""The process executor: worker processes that each hold their own instance of one plugin.

Each worker is ``python -m udl.workers <fd>``, started under ``setpriv --pdeathsig KILL``
(so it dies with the gateway) with one end of a socket pair; the gateway's event loop holds
the other end (an asyncio protocol, no threads). A hook call is one frame each way:

    header (body length, call id, status, number of out-of-band buffers)
    the buffers' lengths | pickle (protocol 5) | the out-of-band buffers

numpy arrays travel as out-of-band buffers (no copy into the pickle) and arrive as arrays
over the received frame. A worker runs one call at a time; the gateway sends each call to
the ready worker with the fewest calls in flight.

A worker that runs past a stage's timeout, or whose process dies, is replaced: its process
is killed, its calls in flight fail (:class:`WorkerLost`) and a new worker is started with
the plugin loaded; the other workers keep serving. When its channel closes (the plugin is
closing), a worker calls the plugin's ``unload`` and exits.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import udl
from registry.processes import die_with_parent
from udl.sdk import InvalidInput

log = logging.getLogger("udl.workers")

T = TypeVar("T")

#: Body length, call id, status, number of out-of-band buffers.
_HEADER = struct.Struct("<IIBH")
_LENGTH = struct.Struct("<I")

#: Reply statuses.
_OK, _INVALID, _FAILED = 0, 1, 2

#: The folder that holds the ``udl`` package (first on the worker's ``PYTHONPATH``).
_SOURCE_ROOT = str(Path(udl.__file__).resolve().parents[1])


class WorkerLost(Exception):
    """The worker that ran a call was stopped or died before it answered."""


class HookFailed(Exception):
    """A hook raised in its worker; the message is the worker's traceback text."""


class WorkerLoadFailed(Exception):
    """The plugin did not load in a new worker: ``(summary, traceback text)``."""


def _frame(call_id: int, status: int, items: tuple[Any, ...]) -> list[bytes | memoryview]:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(tuple(_pack(i) for i in items), protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    lengths = b"".join(_LENGTH.pack(r.nbytes) for r in raws)
    size = len(lengths) + len(data) + sum(r.nbytes for r in raws)
    return [_HEADER.pack(size, call_id, status, len(raws)), lengths, data, *raws]


def _items(body: bytearray, buffer_count: int) -> tuple[Any, ...]:
    view = memoryview(body)
    lengths = [_LENGTH.unpack_from(view, i * _LENGTH.size)[0] for i in range(buffer_count)]
    start = buffer_count * _LENGTH.size
    position = end = len(view) - sum(lengths)
    buffers = []
    for length in lengths:
        buffers.append(view[position : position + length])
        position += length
    return tuple(_unpack(i) for i in pickle.loads(view[start:end], buffers=buffers))


# NOTE: requests and responses travel as their fields, their arrays as (dtype, shape,
# out-of-band buffer): pickling a dataclass and numpy's own array reduction cost several
# times more than the rest of a round trip.
_MESSAGES: dict[type, int] = {udl.Request: 1, udl.Response: 2}
_CLASSES = {kind: cls for cls, kind in _MESSAGES.items()}


def _pack(item: Any) -> tuple[int, Any]:
    kind = _MESSAGES.get(type(item))
    if kind is None or not isinstance(item.tensors, dict):
        return 0, item
    state = dict(item.__dict__)
    state["tensors"] = [_pack_tensor(name, t) for name, t in item.tensors.items()]
    return kind, state


def _pack_tensor(name: str, tensor: Any) -> tuple[str, str | None, Any, Any]:
    if not isinstance(tensor, np.ndarray) or tensor.dtype.kind in "OVMm":  # no plain buffer
        return name, None, None, tensor  # pickled as it is
    data = tensor if tensor.flags.c_contiguous else tensor.copy(order="C")
    return name, tensor.dtype.str, tensor.shape, pickle.PickleBuffer(data.data)


def _unpack(packed: tuple[int, Any]) -> Any:
    kind, state = packed
    if kind == 0:
        return state
    state["tensors"] = {
        name: value if dtype is None else np.frombuffer(value, dtype).reshape(shape)
        for name, dtype, shape, value in state["tensors"]
    }
    message: Any = object.__new__(_CLASSES[kind])
    message.__dict__.update(state)
    return message


class WorkerState(enum.Enum):
    STARTING = "starting"  # process started, plugin loading
    READY = "ready"
    STOPPED = "stopped"  # killed, dead or closed: never used again


class _Worker(asyncio.Protocol):
    """One worker process and the gateway's end of its channel."""

    def __init__(self, on_lost: Callable[[_Worker, str], None]) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.state = WorkerState.STARTING
        #: Done once the worker leaves STARTING (ready, or stopped).
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self._on_lost = on_lost
        self._ids = itertools.count(1)
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def submit(self, stage: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        assert self._transport is not None
        call_id = next(self._ids)
        frame = _frame(call_id, _OK, (stage, *args))
        future = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        self._transport.writelines(frame)
        return future

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEADER.size:
            size, call_id, status, buffer_count = _HEADER.unpack_from(buffer)
            end = _HEADER.size + size
            if len(buffer) < end:
                return
            body = buffer[_HEADER.size : end]
            del buffer[:end]
            future = self.pending.pop(call_id, None)
            if future is None or future.done():  # its caller timed out or went away
                continue
            try:
                (value,) = _items(body, buffer_count)
            except Exception as err:  # e.g. a class only the plugin's worker can import
                future.set_exception(
                    HookFailed(f"its answer could not be read: {type(err).__name__}: {err}")
                )
                continue
            if status == _OK:
                future.set_result(value)
            elif status == _INVALID:
                future.set_exception(InvalidInput(value))
            else:
                future.set_exception(HookFailed(value))

    def connection_lost(self, exc: Exception | None) -> None:
        code = self.proc.poll() if self.proc is not None else None
        # NOTE: the channel may close a moment before the process has exited
        self._on_lost(self, f"exited with {code}" if code is not None else "ended its channel")

    def ready(self) -> None:
        self.state = WorkerState.READY
        if not self.settled.done():
            self.settled.set_result(None)

    def stop(self, reason: str) -> None:
        """Fail the calls in flight with ``reason`` and close the channel: the worker
        unloads the plugin and exits (killed if it does not: :meth:`WorkerPool._reap`)."""
        self.state = WorkerState.STOPPED
        if not self.settled.done():
            self.settled.set_result(None)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(WorkerLost(reason))
        self.pending.clear()
        if self._transport is not None:
            self._transport.close()


class WorkerPool:
    """The worker processes of one ``process`` plugin version.

    ``init`` is what each worker loads: (package folder, manifest JSON, module alias,
    plugin config).
    """

    def __init__(
        self, key: str, init: tuple[str, str, str, dict[str, Any]], size: int, load_timeout: float
    ) -> None:
        self.key = key
        self._init = init
        self._load_timeout = load_timeout
        self._workers: list[_Worker] = []
        self._size = max(size, 1)
        self._closing = False
        self._background: set[asyncio.Task[Any]] = set()
        #: The call hooks the plugin overrides, as its workers report them.
        self.hooks: frozenset[str] = frozenset()

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the plugin.

        Raises TimeoutError past the load timeout, :class:`WorkerLoadFailed` when the plugin
        does not load; no worker is left running then.
        """
        self._workers = [_Worker(self._lost) for _ in range(self._size)]
        boots = [self._track(self._boot(w)) for w in self._workers]
        try:
            (self.hooks, *_) = await asyncio.gather(*boots)
        except BaseException:
            await self.close()
            raise

    async def _boot(self, worker: _Worker) -> frozenset[str]:
        """Start ``worker``'s process and load the plugin in it; the hooks it overrides."""
        try:
            async with asyncio.timeout(self._load_timeout):
                await self._spawn(worker)
                try:
                    hooks: frozenset[str] = await worker.submit("load", self._init)
                except HookFailed as err:
                    raise WorkerLoadFailed(*err.args[0]) from None
        except BaseException:
            worker.stop("did not load the plugin")
            if worker.proc is not None:
                await self._reap(worker.proc, 0.0)
            raise
        worker.ready()
        return hooks

    async def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair()
        try:
            worker.proc = _start_process(theirs)
        finally:
            theirs.close()
        await asyncio.get_running_loop().connect_accepted_socket(lambda: worker, ours)

    async def call(self, stage: str, args: tuple[Any, ...], seconds: float) -> Any:
        """Run ``stage`` in a worker within ``seconds``. Raises TimeoutError (the worker is
        replaced), :class:`WorkerLost`, :class:`HookFailed` or ``udl.InvalidInput``.

        When no worker is ready (all are being replaced), the call first waits for one to
        load the plugin (bounded by the load timeout): that wait is not the hook's time.
        """
        worker = await self._ready_worker()
        try:
            async with asyncio.timeout(seconds):
                return await worker.submit(stage, args)
        except TimeoutError:
            self._replace(worker, f"ran past the {seconds:g}s timeout of {stage}")
            raise

    async def _ready_worker(self) -> _Worker:
        restarted = False
        while True:
            ready = [w for w in self._workers if w.state is WorkerState.READY]
            if ready:
                return min(ready, key=lambda w: len(w.pending))
            if self._closing:
                raise WorkerLost("the plugin is closing")
            starting = [w.settled for w in self._workers if w.state is WorkerState.STARTING]
            if not starting:
                if restarted:
                    raise WorkerLost("no worker process could load the plugin")
                restarted = True
                for worker in list(self._workers):  # replacements that failed to load
                    self._replace(worker, "had stopped")
                continue
            await asyncio.wait(starting, return_when=asyncio.FIRST_COMPLETED)

    def _lost(self, worker: _Worker, reason: str) -> None:
        if self._closing or worker.state is WorkerState.STOPPED:
            return
        if worker.state is WorkerState.STARTING:
            # NOTE: its load fails (and is logged); replacing it here would loop on a
            # plugin whose load kills its process. The next call tries again.
            worker.stop(f"its worker process {reason}")
        else:
            self._replace(worker, reason)

    def _replace(self, worker: _Worker, reason: str) -> None:
        """Kill ``worker`` (its calls in flight fail) and start another in its place."""
        if worker not in self._workers or self._closing:
            return
        if worker.state is not WorkerState.STOPPED:
            pid = worker.proc.pid if worker.proc else None
            log.error("plugin %s: worker process %s %s; starting another", self.key, pid, reason)
            worker.stop(f"its worker process {reason}")
            if worker.proc is not None:
                self._track(self._reap(worker.proc, 0.0))
        new = self._workers[self._workers.index(worker)] = _Worker(self._lost)
        self._track(self._boot_logged(new))

    async def _boot_logged(self, worker: _Worker) -> None:
        try:
            await self._boot(worker)
        except (TimeoutError, WorkerLoadFailed, WorkerLost) as err:
            log.error("plugin %s: a new worker process did not load the plugin: %s",
                      self.key, err)  # fmt: skip

    def _track(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @staticmethod
    async def _reap(proc: subprocess.Popen[bytes], grace: float) -> None:
        """Wait up to ``grace`` seconds for ``proc`` to exit, then SIGKILL it; reap it."""
        if grace > 0:
            try:
                await asyncio.to_thread(proc.wait, grace)
                return
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        await asyncio.to_thread(proc.wait)

    async def close(self, grace: float = 5.0) -> None:
        """Close every worker's channel (it unloads the plugin and exits); SIGKILL those
        still running after ``grace`` seconds. No worker process is left behind."""
        self._closing = True
        for task in list(self._background):
            task.cancel()
        for worker in self._workers:
            worker.stop("the plugin is closing")
        await asyncio.gather(
            *(self._reap(w.proc, grace) for w in self._workers if w.proc is not None),
            *self._background,
            return_exceptions=True,
        )


def _start_process(channel: socket.socket) -> subprocess.Popen[bytes]:
    """``python -m udl.workers`` serving on ``channel``, killed when the gateway dies.

    NOTE: call it from the event loop's thread, which lives as long as the gateway: the
    parent-death signal fires when the thread that started the process ends.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE_ROOT, env.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(
        [*die_with_parent(), sys.executable, "-m", "udl.workers", str(channel.fileno())],
        pass_fds=(channel.fileno(),),
        stdin=subprocess.DEVNULL,
        env=env,
    )


# -- the worker process ----------------------------------------------------------------------


def _receive(sock: socket.socket) -> tuple[int, int, bytearray] | None:
    header = _read(sock, _HEADER.size)
    if header is None:
        return None
    size, call_id, _, buffer_count = _HEADER.unpack(header)
    body = _read(sock, size)
    if body is None:
        return None
    return call_id, buffer_count, body


def _read(sock: socket.socket, size: int) -> bytearray | None:
    data = bytearray(size)
    view = memoryview(data)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return data


def _send(sock: socket.socket, call_id: int, status: int, value: Any) -> None:
    try:
        parts = _frame(call_id, status, (value,))
    except Exception:  # NOTE: a hook's answer (or exception) that does not pickle
        parts = _frame(call_id, _FAILED, (traceback.format_exc(),))
    sock.sendall(b"".join(parts))


class _Serving:
    """The worker's side: the plugin instance and its hooks, each run to completion."""

    def __init__(self) -> None:
        self.plugin: udl.Plugin | None = None
        self.loop = asyncio.new_event_loop()

    def run(self, hook: Callable[..., Any], *args: Any) -> Any:
        result = hook(*args)
        if inspect.isawaitable(result):
            return self.loop.run_until_complete(result)
        return result

    def load(self, directory: str, manifest_json: str, alias: str, config: dict[str, Any]) -> Any:
        from udl.isolation import import_plugin_class, overridden_hooks
        from udl.package import PluginManifest

        manifest = PluginManifest.model_validate_json(manifest_json)
        cls = import_plugin_class(Path(directory), manifest, alias)
        plugin = cls()
        self.run(plugin.load, config)
        self.plugin = plugin
        return overridden_hooks(cls)

    def answer(self, stage: str, args: list[Any]) -> tuple[int, Any]:
        if stage == "load":
            try:
                return _OK, self.load(*args)
            except Exception as err:
                return _FAILED, (f"{type(err).__name__}: {err}", traceback.format_exc())
        assert self.plugin is not None
        try:
            return _OK, self.run(getattr(self.plugin, stage), *args)
        except InvalidInput as err:
            return _INVALID, str(err)
        except Exception:
            # NOTE: user exceptions may not pickle; send the traceback text instead.
            return _FAILED, traceback.format_exc()


def main(fd: int) -> None:
    """Serve calls on the socket ``fd`` until the gateway closes it; then unload."""
    # NOTE: Ctrl-C reaches the whole process group; the gateway decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    serving = _Serving()
    while (message := _receive(sock)) is not None:
        call_id, buffer_count, body = message
        stage, *args = _items(body, buffer_count)
        status, value = serving.answer(stage, args)
        _send(sock, call_id, status, value)
    if serving.plugin is not None:
        try:
            serving.run(serving.plugin.unload)
        except Exception:
            log.exception("plugin unload failed")


if __name__ == "__main__":
    main(int(sys.argv[1]))
