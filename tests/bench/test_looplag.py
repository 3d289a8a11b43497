"""The gateway's loop-lag probe (gateway/looplag.py): a blocked loop shows as a stall."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from gateway.looplag import LoopLagProbe
from gateway.metrics import GatewayMetrics

BLOCK_S = 0.2


async def test_a_blocked_loop_is_the_longest_stall() -> None:
    registry = CollectorRegistry()
    probe = LoopLagProbe(GatewayMetrics(registry), interval_s=0.005, window_s=60.0)
    assert probe.stall_max() == 0.0
    probe.start()

    def wake_ups() -> float:
        return registry.get_sample_value("modelgate_gateway_loop_lag_seconds_count") or 0.0

    async def more_wake_ups_than(count: float) -> None:
        for _ in range(1000):
            if wake_ups() > count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the probe does not wake up")

    await more_wake_ups_than(0)
    time.sleep(BLOCK_S)  # noqa: ASYNC251 - the stall under test (blocks the loop), not a wait
    await more_wake_ups_than(wake_ups())

    # the probe asked to wake before the block began, so it woke at least BLOCK_S late
    # (less its own interval)
    stall = registry.get_sample_value("modelgate_gateway_loop_stall_max_seconds")
    assert stall is not None and stall >= BLOCK_S - probe.interval_s
    assert probe.stall_max() == stall
    # a sleeping thread uses no CPU: this stall was not code running on the loop
    loop_cpu = registry.get_sample_value("modelgate_gateway_loop_stall_loop_cpu_seconds")
    assert loop_cpu is not None and loop_cpu < BLOCK_S / 2


async def test_a_busy_loop_shows_as_the_loop_threads_cpu() -> None:
    registry = CollectorRegistry()
    probe = LoopLagProbe(GatewayMetrics(registry), interval_s=0.005, window_s=60.0)
    probe.start()
    await asyncio.sleep(0.05)

    began = time.thread_time()
    while time.thread_time() - began < BLOCK_S:  # the loop's thread computes, never yields
        pass
    await asyncio.sleep(0.05)

    def sample(name: str) -> float:
        value = registry.get_sample_value(f"modelgate_gateway_loop_stall_{name}_seconds")
        assert value is not None
        return value

    # the longest stall is this one, and the loop's thread used the CPU spun in it (and so
    # did the process, which holds that thread)
    assert sample("loop_cpu") >= BLOCK_S
    assert sample("process_cpu") >= sample("loop_cpu")
    assert sample("max") >= BLOCK_S - probe.interval_s
