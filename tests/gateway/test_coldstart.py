"""Scale to zero, the gateway's half: a call for a model with ``min_replicas: 0`` and no ready
instance waits; the test plays the manager (it sees ``/wake/<model>``, then registers the
route of a real Triton instance) and the waiting calls answer. Queue bound and deadline."""

from __future__ import annotations

import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kserve

from registry import layout
from registry.records import Autoscale, Wake
from tests.gateway.conftest import ADD_ONE, RunningGateway, put_model, put_route, put_version
from tests.gateway.test_limits import INFER, infer_request
from tests.servers.zk import wait_for

TO_ZERO = Autoscale(min_replicas=0, max_replicas=1, idle_seconds=60)


def known(registry, gateway: RunningGateway, name: str, **fields) -> None:
    """``name`` registered (``fields`` as in ``put_model``) with its version 1, once the
    gateway knows both."""
    put_model(registry, name, **fields)
    put_version(registry, name, 1)
    wait_for(
        lambda: (
            (entry := gateway.app.router.table.models.get(name)) is not None
            and (entry.record.autoscale is not None) == ("autoscale" in fields)
            and 1 in entry.versions
        ),
        what=f"the gateway to know {name} and its version 1",
    )


def at_zero(registry, gateway: RunningGateway, name: str = ADD_ONE, **fields) -> None:
    """``name`` autoscaled to zero, its version 1 known, no instance."""
    known(registry, gateway, name, autoscale=TO_ZERO, **fields)


def test_calls_wait_for_the_first_instance_and_then_answer(registry, gateway, triton_a):
    at_zero(registry, gateway)
    with grpc.insecure_channel(gateway.address) as channel:
        method = channel.unary_unary(INFER)
        calls = [method.future(infer_request(ADD_ONE, float(n)), timeout=30) for n in range(3)]
        # NOTE: the manager's part: the leader sees the wake record and places the model
        wait_for(lambda: registry.exists(layout.wake(ADD_ONE)), what="the wake record")
        wake = registry.read(layout.wake(ADD_ONE), Wake)
        assert wake is not None and wake.model == ADD_ONE and wake.gateway_id == "gw-test"
        wait_for(lambda: gateway.app.cold_starts.waiting(ADD_ONE) == 3, what="3 waiting calls")
        assert not any(call.done() for call in calls)
        put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
        for n, call in enumerate(calls):
            out = kserve.ModelInferResponse.FromString(call.result())
            assert np.frombuffer(out.raw_output_contents[0], np.float32)[0] == n + 1.0
    wait_for(
        lambda: (
            gateway.metric("modelgate_gateway_cold_start_seconds_count", {"model": ADD_ONE}) == 3
        ),
        what="three cold starts observed",
    )


def test_the_queue_is_bounded_and_the_deadline_is_kept(gateway_settings, registry):
    gateway = RunningGateway(gateway_settings.model_copy(update={"cold_start_queue": 2}))
    try:
        at_zero(registry, gateway)
        with grpc.insecure_channel(gateway.address) as channel:
            method = channel.unary_unary(INFER)
            start = time.monotonic()
            waiting = [method.future(infer_request(ADD_ONE, 1.0), timeout=3) for _ in range(2)]
            wait_for(lambda: gateway.app.cold_starts.waiting(ADD_ONE) == 2, what="2 waiting")
            try:
                method(infer_request(ADD_ONE, 1.0), timeout=3)
                raise AssertionError("a third call must not wait")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert err.details() == (
                    f"model {ADD_ONE!r} is scaling from zero and 2 calls already wait for its "
                    "first instance (the bound per gateway process, --cold-start-queue); "
                    "retry later"
                )
            for call in waiting:
                assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert call.details().startswith(
                    f"model {ADD_ONE!r} is scaling from zero and no instance became ready in time"
                )
            waited = time.monotonic() - start
        # NOTE: written when the first call came, then once a second while calls waited
        wake, version = registry.get(layout.wake(ADD_ONE), Wake)
        assert wake.waiting == 2
        assert 2 <= version + 1 <= waited + 1
        assert gateway.app.cold_starts.waiting(ADD_ONE) == 0
        assert gateway.metric("modelgate_gateway_cold_start_seconds_count", {"model": ADD_ONE}) == 0
    finally:
        gateway.stop()


def test_offline_unknown_and_fixed_models_keep_their_errors(registry, gateway):
    at_zero(registry, gateway, "cold-off", state="offline")
    known(registry, gateway, "fixed")  # no autoscale: never scaled, so no call waits
    with grpc.insecure_channel(gateway.address) as channel:
        method = channel.unary_unary(INFER)
        answers = {}
        for name in ("cold-off", "fixed", "nobody"):
            try:
                method(infer_request(name, 1.0), timeout=10)
            except grpc.RpcError as err:
                answers[name] = (err.code(), err.details())
    assert answers["cold-off"] == (
        grpc.StatusCode.UNAVAILABLE,
        "model 'cold-off' is offline (take it online first)",
    )
    assert answers["fixed"] == (
        grpc.StatusCode.UNAVAILABLE,
        "model 'fixed' version 1 has no ready instance",
    )
    assert answers["nobody"][0] == grpc.StatusCode.NOT_FOUND
    assert not registry.exists(layout.wake("cold-off"))
    assert not registry.exists(layout.wake("fixed"))


def test_a_call_finding_no_instance_waits_the_grace_for_one(registry, gateway, triton_a):
    """A model that is not autoscaled, with its route missing from this table for a moment (a
    server restarting, or another process's table ahead): the call waits, then answers."""
    known(registry, gateway, ADD_ONE)
    assert gateway.app.settings.instance_grace_s == 1.0
    with grpc.insecure_channel(gateway.address) as channel:
        call = channel.unary_unary(INFER).future(infer_request(ADD_ONE, 4.0), timeout=30)
        wait_for(lambda: gateway.app.cold_starts.settling(ADD_ONE) == 1, what="a call waiting")
        put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
        out = kserve.ModelInferResponse.FromString(call.result())
    assert np.frombuffer(out.raw_output_contents[0], np.float32)[0] == 5.0
    assert gateway.app.cold_starts.settling(ADD_ONE) == 0
    assert not registry.exists(layout.wake(ADD_ONE))  # a grace is not a wake


def test_without_the_grace_a_call_finding_no_instance_fails_at_once(gateway_settings, registry):
    gateway = RunningGateway(gateway_settings.model_copy(update={"instance_grace_s": 0.0}))
    try:
        known(registry, gateway, "gone")
        with grpc.insecure_channel(gateway.address) as channel:
            call = channel.unary_unary(INFER).future(infer_request("gone", 1.0), timeout=30)
            try:
                call.result()
                raise AssertionError("no instance: the call must fail")
            except grpc.RpcError:
                pass
        assert call.code() == grpc.StatusCode.UNAVAILABLE
        assert call.details() == "model 'gone' version 1 has no ready instance"
        assert gateway.app.cold_starts.settling("gone") == 0
    finally:
        gateway.stop()
