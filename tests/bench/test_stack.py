"""The benchmarks' shared stack (bench/stack.py) on a real ZooKeeper, Triton and gateway: a
routed model answers through the gateway, and everything is torn down, also when the stack
fails half-way through starting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from bench.stack import BenchStack
from examples.models import write_add_one
from registry import layout
from registry.records import Model, Route


def test_a_routed_model_answers_through_the_gateway_and_all_stops(tmp_path: Path) -> None:
    with BenchStack(tmp_path, "/bench-test", "t") as stack:
        write_add_one(stack.triton.model_repository, "m")
        stack.start_triton(["m"])
        stack.route(Model(name="m", backend="triton"))
        route = stack.registry.read(layout.route("m", 1, "t-triton"), Route)
        assert route is not None and route.address == stack.triton.address
        gateway = stack.gateway("gw", "python")
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{gateway.port('grpc')}")
        try:
            x = triton_grpc.InferInput("INPUT0", [1], "FP32")
            x.set_data_from_numpy(np.array([2.0], dtype=np.float32))
            out = client.infer("m", [x], model_version="1", client_timeout=30)
        finally:
            client.close()
        assert out.as_numpy("OUTPUT0").tolist() == [3.0]
        assert stack.inferences("m") == 1
        stack.stop(gateway)
        assert not gateway.running and stack.procs == []
        other = stack.gateway("other", "python")
    assert not other.running
    assert not stack.triton.running and not stack.zk.running


class Failing(BenchStack):
    def setup(self) -> None:
        raise RuntimeError("setup failed")


def test_a_stack_failing_while_it_starts_is_torn_down(tmp_path: Path) -> None:
    stack = Failing(tmp_path, "/bench-test", "t")
    with pytest.raises(RuntimeError, match="setup failed"), stack:
        raise AssertionError("the block must not run")
    assert not stack.zk.running
