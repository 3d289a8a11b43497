"""A small closed-loop gRPC load generator (grpc.aio, raw bytes, loopback only).

``concurrency`` workers share one channel and send the same pre-serialised request back
to back until ``requests`` calls are done or ``duration`` seconds have passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc


@dataclass
class Result:
    calls: int
    errors: int
    elapsed_s: float
    latencies_s: list[float]

    @property
    def throughput(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def drive(
    address: str,
    method: str,
    payload: bytes,
    *,
    concurrency: int,
    requests: int,
    duration: float,
    warmup: int = 200,
    on_start: Callable[[], None] = lambda: None,
) -> Result:
    """Warm up (not measured), call ``on_start``, then run the measured calls."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(method)
        for _ in range(warmup):
            await call(payload, timeout=30)
        on_start()
        latencies: list[float] = []
        errors = 0
        issued = 0
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal issued, errors
            while issued < requests and time.perf_counter() < stop_at:
                issued += 1
                start = time.perf_counter()
                try:
                    await call(payload, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - begin
    return Result(len(latencies), errors, elapsed, latencies)
