"""How long the serving event loop was stalled: a task that asks to wake every few ms and
records how late it woke (everything else on the loop waited that long too).

Exported as ``modelgate_gateway_loop_lag_seconds`` (a histogram of every wake-up's lateness)
and ``modelgate_gateway_loop_stall_max_seconds`` (the longest stall of the last ``window_s``).
Where that stall's time went is exported beside it: the CPU the loop's own thread used during
it (``..._loop_cpu_seconds``: code on the loop was busy) and the CPU of the whole process
(``..._process_cpu_seconds``: the rest of it is other threads holding the GIL). A stall much
longer than the process's CPU is time the process was not running at all: the machine's
other load, not the gateway's work. Started once by the gateway:
``LoopLagProbe(metrics).start()``.
"""

from __future__ import annotations

import asyncio
import collections
import time

from gateway.metrics import GatewayMetrics

#: Seconds over which the longest stall is kept (``modelgate_gateway_loop_stall_*``).
WINDOW_S = 10.0


class LoopLagProbe:
    """Wakes every ``interval_s`` on the running loop and measures the lateness."""

    def __init__(
        self, metrics: GatewayMetrics, *, interval_s: float = 0.005, window_s: float = WINDOW_S
    ) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self.window_s = window_s
        #: (loop time of the wake-up, lateness, loop-thread CPU and process CPU over the wait,
        #: in seconds), oldest first, within the window.
        self._recent: collections.deque[tuple[float, float, float, float]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        metrics.loop_stall_max.set_function(self.stall_max)
        metrics.loop_stall_loop_cpu.set_function(lambda: self.longest()[2])
        metrics.loop_stall_process_cpu.set_function(lambda: self.longest()[3])

    def start(self) -> LoopLagProbe:
        """Start probing on the running loop (the task ends with the loop)."""
        if self._task is not None:
            raise RuntimeError("the loop-lag probe was started already")
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="loop-lag probe")
        return self

    def stall_max(self) -> float:
        """The longest stall within the last ``window_s`` (0 before the first wake-up)."""
        return self.longest()[1]

    def longest(self) -> tuple[float, float, float, float]:
        """The wake-up after the longest stall within the last ``window_s``: (loop time,
        lateness, loop-thread CPU and process CPU during its wait); zeros before the first."""
        if self._loop is None:
            return (0.0, 0.0, 0.0, 0.0)
        since = self._loop.time() - self.window_s
        return next((wake for wake in self._recent if wake[0] >= since), (0.0, 0.0, 0.0, 0.0))

    async def _run(self) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            # NOTE: the process's interval holds the thread's (process CPU >= the loop's CPU)
            process0, thread0, asked = time.process_time(), time.thread_time(), loop.time()
            await asyncio.sleep(self.interval_s)
            woke = loop.time()
            thread_cpu = time.thread_time() - thread0
            process_cpu = time.process_time() - process0
            lag = max(0.0, woke - asked - self.interval_s)
            self.metrics.loop_lag.observe(lag)
            # NOTE: a sliding-window maximum: a stall followed by a longer one can never be
            # the window's maximum again, so the deque holds decreasing lags only
            while self._recent and self._recent[-1][1] <= lag:
                self._recent.pop()
            while self._recent and self._recent[0][0] < woke - self.window_s:
                self._recent.popleft()
            self._recent.append((woke, lag, thread_cpu, process_cpu))
