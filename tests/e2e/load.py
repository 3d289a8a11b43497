"""Calls through the gateway for end-to-end tests: one ``add_one`` inference, and a steady load
of them that records every failure."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as triton_grpc


def infer(address: str, model: str, timeout: float = 60.0) -> list[float]:
    """One ModelInfer through the gateway: ``add_one`` of [1, 2]."""
    client = triton_grpc.InferenceServerClient(address)
    try:
        inp = triton_grpc.InferInput("INPUT0", [2], "FP32")
        inp.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
        result = client.infer(model, [inp], model_version="1", client_timeout=timeout)
        return [float(v) for v in result.as_numpy("OUTPUT0")]
    finally:
        client.close()


@dataclass
class Load:
    """``concurrency`` callers, each calling ``model`` again as soon as it has an answer."""

    address: str
    model: str
    concurrency: int
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _call(self) -> None:
        client = triton_grpc.InferenceServerClient(self.address)
        inp = triton_grpc.InferInput("INPUT0", [2], "FP32")
        inp.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
        try:
            while not self._stop.is_set():
                try:
                    result = client.infer(self.model, [inp], model_version="1", client_timeout=30)
                    ok = [float(v) for v in result.as_numpy("OUTPUT0")] == [2.0, 3.0]
                    with self._lock:
                        self.answered += ok
                        if not ok:
                            self.failures.append(f"wrong answer {result.as_numpy('OUTPUT0')}")
                except triton_grpc.InferenceServerException as err:
                    with self._lock:
                        self.failures.append(str(err))
        finally:
            client.close()

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._call) for _ in range(self.concurrency)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
