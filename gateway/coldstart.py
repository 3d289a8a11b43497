"""Scale to zero, the gateway's half: a call for a model at zero waits for its first instance.

A model that autoscales with ``min_replicas: 0`` may have no ready instance. A call for it
then waits instead of failing: the gateway writes ``/wake/<model>`` (a :class:`Wake` record,
rewritten at most once a second while calls wait, with how many do) and the reconcile
leader scales the model up, which deletes the node. The waiting calls wake on every table
swap that changed the model and go on as soon as it has a ready instance, each within its
own deadline. At most ``max_waiting`` calls wait per model in one gateway process.

The same wait, short, serves every other online model: a call that finds no ready instance in
this process's table waits up to ``grace_s`` (within its deadline) for a table swap that gives
it one, then answers as it would have (UNAVAILABLE). The table of one process can be a few ms
behind another's or the manager's (each Python worker has its own ZooKeeper watch), and a
route is withdrawn and published again when its model server restarts: a caller told a model
is ready, or calling through a short gap, gets an answer, not a spurious error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.errors import DeadlineExceededError, ModelUnavailableError, ResourceExhaustedError
from gateway.router import Target
from registry import Registry, layout
from registry.errors import ModelgateError
from registry.records import Model, Wake

log = logging.getLogger("gateway.coldstart")

#: Seconds between two writes of a model's wake record while its calls wait.
WAKE_INTERVAL_S = 1.0
#: Share of a waiting call's budget kept to answer it before the caller's own deadline (so
#: the caller reads why), at most ``_ANSWER_MARGIN_MAX_S``.
_ANSWER_MARGIN = 0.1
_ANSWER_MARGIN_MAX_S = 0.25


def scales_from_zero(record: Model) -> bool:
    """Whether calls for ``record``'s model wait for a first instance when it has none."""
    return (
        record.state == "online"
        and record.autoscale is not None
        and record.autoscale.min_replicas == 0
    )


@dataclass
class _Waiting:
    """The calls waiting for one model's first instance."""

    count: int = 0


class ColdStarts:
    """Holds calls for models at zero and asks the leader for an instance."""

    def __init__(
        self,
        registry: Registry,
        gateway_id: Callable[[], str],
        max_waiting: int,
        grace_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.gateway_id = gateway_id
        self.max_waiting = max_waiting
        self.grace_s = grace_s
        self.clock = clock
        #: Models with calls waiting, each while its wake announcer runs.
        self._waiting: dict[str, _Waiting] = {}
        #: Per model with a call waiting for the table: set when a table swap changes it.
        self._changed: dict[str, asyncio.Event] = {}
        #: Calls of online models waiting out the grace, per model.
        self._settling: dict[str, int] = {}
        self._announcers: set[asyncio.Task[None]] = set()

    def waiting(self, name: str) -> int:
        """Calls waiting for ``name``'s first instance in this process."""
        state = self._waiting.get(name)
        return 0 if state is None else state.count

    def settling(self, name: str) -> int:
        """Calls of online model ``name`` waiting out the grace in this process."""
        return self._settling.get(name, 0)

    def on_table(self, changed: Iterable[str]) -> None:
        """Wake the calls waiting for the ``changed`` models (the table is swapped in)."""
        for name in changed:
            event = self._changed.pop(name, None)
            if event is not None:
                event.set()

    def _next_change(self, name: str) -> asyncio.Event:
        """Set at the next table swap that changes ``name``."""
        event = self._changed.get(name)
        if event is None:
            event = self._changed[name] = asyncio.Event()
        return event

    async def wait(
        self,
        name: str,
        resolve: Callable[[], Target],
        routable: Callable[[], Model | None],
        deadline: float,
    ) -> Target:
        """Wait until ``resolve()`` finds an instance of ``name`` (by ``deadline``, a
        ``clock()`` value). ``routable()`` is the model's record in the current table."""
        state = self._waiting.get(name)
        if state is None:
            state = self._waiting[name] = _Waiting()
            task = asyncio.ensure_future(self._announce(name, state))
            self._announcers.add(task)
            task.add_done_callback(self._announcers.discard)
        if state.count >= self.max_waiting:
            raise ResourceExhaustedError(
                f"model {name!r} is scaling from zero and {state.count} calls already wait for "
                f"its first instance (the bound per gateway process, --cold-start-queue); "
                "retry later"
            )
        start = self.clock()
        margin = min(_ANSWER_MARGIN * (deadline - start), _ANSWER_MARGIN_MAX_S)
        state.count += 1
        try:
            while True:
                remaining = deadline - margin - self.clock()
                changed = self._next_change(name)
                if remaining > 0:
                    try:
                        await asyncio.wait_for(changed.wait(), remaining)
                    except TimeoutError:
                        pass
                if not changed.is_set():
                    raise DeadlineExceededError(
                        f"model {name!r} is scaling from zero and no instance became ready in "
                        f"time (waited {self.clock() - start:.1f}s, the call's deadline)"
                    )
                try:
                    return resolve()
                except ModelUnavailableError:
                    record = routable()
                    if record is None or not scales_from_zero(record):
                        raise
        finally:
            state.count -= 1

    async def settle(self, name: str, resolve: Callable[[], Target], deadline: float) -> Target:
        """For an online model with no ready instance: ``resolve()`` once a table swap gives
        it one, within ``grace_s`` and ``deadline``; then ``resolve()`` as it is (it raises
        UNAVAILABLE). Beyond ``max_waiting`` calls waiting per model, at once."""
        settling = self._settling.get(name, 0)
        if self.grace_s <= 0 or settling >= self.max_waiting:
            return resolve()
        now = self.clock()
        margin = min(_ANSWER_MARGIN * (deadline - now), _ANSWER_MARGIN_MAX_S)
        until = min(now + self.grace_s, deadline - margin)
        self._settling[name] = settling + 1
        try:
            while (remaining := until - self.clock()) > 0:
                try:
                    await asyncio.wait_for(self._next_change(name).wait(), remaining)
                except TimeoutError:
                    break
                try:
                    return resolve()
                except ModelUnavailableError:
                    continue
            return resolve()
        finally:
            left = self._settling[name] - 1
            if left:
                self._settling[name] = left
            else:
                del self._settling[name]

    async def _announce(self, name: str, state: _Waiting) -> None:
        """Write ``/wake/<name>`` now and once a second while calls wait."""
        try:
            while state.count:
                wake = Wake(model=name, gateway_id=self.gateway_id(), waiting=state.count)
                try:
                    await asyncio.to_thread(self.registry.put, layout.wake(name), wake)
                except ModelgateError as err:  # NOTE: the calls wait on; written next turn
                    log.warning("could not ask for an instance of %s: %s", name, err)
                await asyncio.sleep(WAKE_INTERVAL_S)
        finally:
            del self._waiting[name]

    async def close(self) -> None:
        for task in list(self._announcers):
            task.cancel()
        await asyncio.gather(*self._announcers, return_exceptions=True)
