"""How long the serving event loop was stalled: a task that asks to wake every few ms and
records how late it woke (everything else on the loop waited that long too).

Exported as ``modelgate_gateway_loop_lag_seconds`` (a histogram of every wake-up's lateness)
and ``modelgate_gateway_loop_stall_max_seconds`` (the longest stall of the last ``window_s``).
Started once by the gateway: ``LoopLagProbe(metrics).start()``.
"""

from __future__ import annotations

import asyncio
import collections

from gateway.metrics import GatewayMetrics


class LoopLagProbe:
    """Wakes every ``interval_s`` on the running loop and measures the lateness."""

    def __init__(
        self, metrics: GatewayMetrics, *, interval_s: float = 0.005, window_s: float = 10.0
    ) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self.window_s = window_s
        #: (loop time of the wake-up, lateness in seconds), oldest first, within the window.
        self._recent: collections.deque[tuple[float, float]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        metrics.loop_stall_max.set_function(self.stall_max)

    def start(self) -> LoopLagProbe:
        """Start probing on the running loop (the task ends with the loop)."""
        if self._task is not None:
            raise RuntimeError("the loop-lag probe was started already")
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="loop-lag probe")
        return self

    def stall_max(self) -> float:
        """The longest stall within the last ``window_s`` (0 before the first wake-up)."""
        if self._loop is None:
            return 0.0
        since = self._loop.time() - self.window_s
        return next((lag for at, lag in self._recent if at >= since), 0.0)

    async def _run(self) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            asked = loop.time()
            await asyncio.sleep(self.interval_s)
            woke = loop.time()
            lag = max(0.0, woke - asked - self.interval_s)
            self.metrics.loop_lag.observe(lag)
            # NOTE: a sliding-window maximum: a stall followed by a longer one can never be
            # the window's maximum again, so the deque holds decreasing lags only
            while self._recent and self._recent[-1][1] <= lag:
                self._recent.pop()
            while self._recent and self._recent[0][0] < woke - self.window_s:
                self._recent.popleft()
            self._recent.append((woke, lag))
