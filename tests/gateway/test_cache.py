"""The per-model response cache against a real Triton (and a real Redis to share it)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from gateway.settings import GatewaySettings
from registry import Registry
from tests.gateway.conftest import (
    ADD_ONE,
    RunningGateway,
    inference_count,
    put_model,
    put_route,
    put_version,
)
from tests.gateway.test_plugins import CSV_PLUGIN, gateway_record, invoke, publish
from tests.servers.redis import LocalRedis
from tests.servers.zk import wait_for
from worker_agent.tritonserver import TritonServer

CACHE = {"ttl_s": 300, "max_entries": 100}
LOOKUPS = "modelgate_gateway_cache_lookups_total"


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def serve_cached(registry: Registry, gateway: RunningGateway, triton: TritonServer,
                 versions: tuple[int, ...] = (1, 2)) -> None:  # fmt: skip
    """add_one with a response cache, the given versions routed to ``triton``."""
    put_model(registry, ADD_ONE, cache=CACHE)
    for v in (1, 2):
        put_version(registry, ADD_ONE, v)
    for v in versions:
        put_route(registry, ADD_ONE, v, "worker-a", triton.address)
    wait_for(
        lambda: (
            gateway.instances(ADD_ONE) == len(versions)
            and gateway.app.router.table.models[ADD_ONE].record.cache is not None
        ),
        what="the cached model in the gateway",
    )


def infer(gateway: RunningGateway, value: float, version: str = "",
          headers: dict[str, str] | None = None, name: str = "INPUT0") -> np.ndarray:  # fmt: skip
    client = triton_grpc.InferenceServerClient(gateway.address)
    try:
        x = triton_grpc.InferInput(name, [1], "FP32")
        x.set_data_from_numpy(np.array([value], dtype=np.float32))
        result = client.infer(ADD_ONE, [x], model_version=version, headers=headers,
                              client_timeout=20)  # fmt: skip
        return result.as_numpy("OUTPUT0")
    finally:
        client.close()


def backend_count(triton: TritonServer, model: str, version: str, at_least: int) -> int:
    """Triton's count of ``model@version`` inferences once it reaches ``at_least``: its
    statistics are recorded a little after it answered."""
    return int(wait_for(
        lambda: (n := inference_count(triton.address, model, version)) >= at_least and n,
        what=f"{at_least} inferences of {model}@{version} in Triton's statistics",
    ))  # fmt: skip


def lookups(gateway: RunningGateway, outcome: str) -> float:
    return gateway.metric(LOOKUPS, {"model": ADD_ONE, "outcome": outcome})


def test_a_repeated_call_is_answered_from_the_cache(registry, triton_a, gateway):
    serve_cached(registry, gateway, triton_a)
    before = inference_count(triton_a.address, ADD_ONE, "1")
    first = infer(gateway, 3.0, "1")
    again = [infer(gateway, 3.0, "1") for _ in range(3)]
    assert first.tolist() == [4.0] and all(a.tolist() == [4.0] for a in again)
    assert backend_count(triton_a, ADD_ONE, "1", before + 1) == before + 1
    assert (lookups(gateway, "miss"), lookups(gateway, "hit")) == (1, 3)
    # another input is another entry
    assert infer(gateway, 5.0, "1").tolist() == [6.0]
    assert backend_count(triton_a, ADD_ONE, "1", before + 2) == before + 2


def test_errors_are_not_cached(registry, triton_a, gateway):
    serve_cached(registry, gateway, triton_a)
    for _ in range(2):
        with pytest.raises(InferenceServerException) as err:
            infer(gateway, 1.0, "1", name="WRONG")
        assert "WRONG" in str(err.value)
    assert (lookups(gateway, "miss"), lookups(gateway, "hit")) == (2, 0)
    labels = {"model": ADD_ONE, "version": "1", "surface": "kserve", "code": "INVALID_ARGUMENT",
              "source": "backend"}  # fmt: skip
    # NOTE: a failed call is counted just after its status went out
    wait_for(lambda: gateway.metric("modelgate_gateway_errors_total", labels) == 2,
             what="both calls answered by the backend's error")  # fmt: skip


def test_the_bypass_header_skips_the_cache(registry, triton_a, gateway):
    serve_cached(registry, gateway, triton_a)
    before = inference_count(triton_a.address, ADD_ONE, "1")
    infer(gateway, 7.0, "1")
    bypass = {"modelgate-cache": "bypass"}
    assert infer(gateway, 7.0, "1", headers=bypass).tolist() == [8.0]
    assert infer(gateway, 7.0, "1", headers=bypass).tolist() == [8.0]
    assert backend_count(triton_a, ADD_ONE, "1", before + 3) == before + 3
    assert lookups(gateway, "bypass") == 2
    assert infer(gateway, 7.0, "1").tolist() == [8.0]  # still cached
    assert lookups(gateway, "hit") == 1
    infer(gateway, 8.0, "1")  # a miss: Triton's count of it follows the calls before
    assert backend_count(triton_a, ADD_ONE, "1", before + 4) == before + 4


def test_a_new_version_is_not_answered_from_the_old_ones_entries(registry, triton_a, gateway):
    serve_cached(registry, gateway, triton_a, versions=(1,))
    assert infer(gateway, 2.0).tolist() == [3.0]  # newest routable: version 1
    assert infer(gateway, 2.0).tolist() == [3.0]
    put_route(registry, ADD_ONE, 2, "worker-a", triton_a.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 2, what="version 2 routed")
    before = inference_count(triton_a.address, ADD_ONE, "2")
    assert infer(gateway, 2.0).tolist() == [12.0]  # version 2 adds 10
    assert backend_count(triton_a, ADD_ONE, "2", before + 1) == before + 1


def test_turning_the_cache_off_sends_every_call_to_the_backend_and_drops_the_entries(
    registry, triton_a, gateway
):
    serve_cached(registry, gateway, triton_a)
    infer(gateway, 4.0, "1")
    put_model(registry, ADD_ONE)
    wait_for(lambda: gateway.app.router.table.models[ADD_ONE].record.cache is None,
             what="the cache off in the gateway")  # fmt: skip
    before = inference_count(triton_a.address, ADD_ONE, "1")
    assert infer(gateway, 4.0, "1").tolist() == [5.0]
    assert backend_count(triton_a, ADD_ONE, "1", before + 1) == before + 1
    serve_cached(registry, gateway, triton_a)  # on again: the old entry is gone
    assert infer(gateway, 4.0, "1").tolist() == [5.0]
    assert (lookups(gateway, "miss"), lookups(gateway, "hit")) == (2, 0)
    assert backend_count(triton_a, ADD_ONE, "1", before + 2) == before + 2


@pytest.fixture
def redis_gateways(
    gateway_settings: GatewaySettings, registry: Registry, redis_server: LocalRedis
) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    shared = {"cache_redis_url": redis_server.url}
    a = RunningGateway(gateway_settings.model_copy(update={**shared, "gateway_id": "gw-a"}))
    b = RunningGateway(gateway_settings.model_copy(update={**shared, "gateway_id": "gw-b"}))
    yield a, b
    a.stop()
    b.stop()


def test_two_gateways_share_a_redis_cache(registry, triton_a, redis_gateways, redis_server):
    a, b = redis_gateways
    serve_cached(registry, a, triton_a)
    serve_cached(registry, b, triton_a)
    before = inference_count(triton_a.address, ADD_ONE, "1")
    assert infer(a, 9.0, "1").tolist() == [10.0]
    assert infer(b, 9.0, "1").tolist() == [10.0]
    assert backend_count(triton_a, ADD_ONE, "1", before + 1) == before + 1
    assert (lookups(a, "miss"), lookups(b, "hit")) == (1, 1)
    with redis_server.client() as client:
        keys = client.keys("modelgate:cache:*")
        assert len(keys) == 1 and 0 < client.pttl(keys[0]) <= CACHE["ttl_s"] * 1000


def test_calls_work_while_redis_is_down(registry, triton_a, redis_gateways, redis_server):
    a, _ = redis_gateways
    serve_cached(registry, a, triton_a)
    redis_server.stop()
    before = inference_count(triton_a.address, ADD_ONE, "1")
    assert infer(a, 6.0, "1").tolist() == [7.0]
    assert infer(a, 6.0, "1").tolist() == [7.0]
    assert backend_count(triton_a, ADD_ONE, "1", before + 2) == before + 2
    assert a.metric("modelgate_gateway_cache_unavailable_total", {"op": "get"}) == 2
    assert a.metric("modelgate_gateway_cache_unavailable_total", {"op": "set"}) == 2
    redis_server.start()
    infer(a, 6.0, "1")
    assert infer(a, 6.0, "1").tolist() == [7.0]
    assert lookups(a, "hit") == 1


def test_plugin_calls_are_cached_and_a_plugin_change_invalidates(
    registry, triton_a, gateway, tmp_path
):
    first = publish(registry, tmp_path, "csv", "1", CSV_PLUGIN)
    put_model(registry, ADD_ONE, plugin=first, plugin_config={"tag": "one"}, cache=CACHE)
    put_version(registry, ADD_ONE, 1)
    put_route(registry, ADD_ONE, 1, "worker-a", triton_a.address)
    wait_for(lambda: gateway.instances(ADD_ONE) == 1, what="the plugin model routed")
    before = inference_count(triton_a.address, ADD_ONE, "1")
    answers = [invoke(gateway.address, b"1,2,3").payload for _ in range(3)]
    assert answers == [b"one:2,3,4"] * 3
    assert backend_count(triton_a, ADD_ONE, "1", before + 1) == before + 1
    assert (lookups(gateway, "miss"), lookups(gateway, "hit")) == (1, 2)
    # the tensor surfaces share the flow: a KServe call through the plugin is cached too
    client = triton_grpc.InferenceServerClient(gateway.address)
    x = triton_grpc.InferInput("x", [2], "FP32")
    x.set_data_from_numpy(np.array([1, 2], np.float32))
    for _ in range(2):
        result = client.infer(ADD_ONE, [x], client_timeout=20)
        assert result.as_numpy("y").tolist() == [2.0, 3.0]
    client.close()
    assert backend_count(triton_a, ADD_ONE, "1", before + 2) == before + 2

    second = publish(registry, tmp_path, "csv", "2", CSV_PLUGIN)
    put_model(registry, ADD_ONE, plugin=second, plugin_config={"tag": "two"}, cache=CACHE)
    wait_for(lambda: (s := gateway_record(registry).plugins.get(ADD_ONE)) and s.serving == second,
             what="the new plugin serving")  # fmt: skip
    assert invoke(gateway.address, b"1,2,3").payload == b"two:2,3,4"
    assert backend_count(triton_a, ADD_ONE, "1", before + 3) == before + 3
