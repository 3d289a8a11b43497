"""The one error mapping and the log context."""

from __future__ import annotations

import asyncio
import logging

import grpc

from gateway.backends.rest import grpc_code
from gateway.errors import BackendStatusError, ModelNotFoundError, status_of
from registry import logs
from registry.errors import ZooKeeperUnavailableError


def test_status_of_maps_modelgate_errors_and_hides_unknown_ones(caplog):
    assert status_of(ModelNotFoundError("model 'x' is not known")) == (
        grpc.StatusCode.NOT_FOUND,
        "model 'x' is not known",
    )
    assert status_of(ZooKeeperUnavailableError("zk down"))[0] == grpc.StatusCode.UNAVAILABLE
    err = BackendStatusError(grpc.StatusCode.INVALID_ARGUMENT, "unexpected input 'WRONG'", "h:1")
    assert status_of(err) == (grpc.StatusCode.INVALID_ARGUMENT, "unexpected input 'WRONG'")
    with caplog.at_level(logging.ERROR, logger="gateway.errors"):
        try:
            raise KeyError("secret internals")
        except KeyError as exc:
            code, message = status_of(exc, where="kserve m")
    assert code == grpc.StatusCode.INTERNAL and "secret" not in message
    assert "kserve m" in caplog.text and "KeyError" in caplog.text  # traceback logged


def test_http_statuses_map_to_grpc_codes():
    assert grpc_code(400) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(404) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(429) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_code(503) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code(418) == grpc.StatusCode.FAILED_PRECONDITION
    assert grpc_code(500) == grpc.StatusCode.INTERNAL


def test_log_context_is_per_call():
    formatter = logs.ContextFormatter("%(message)s")
    record = logging.LogRecord("gateway.router", logging.INFO, __file__, 1, "hello", None, None)

    async def both() -> list[str]:
        both_set = asyncio.Barrier(2)  # each call formats only after the other set its context

        async def call(model: str) -> str:
            logs.set_call(model, "3", "rid-1")
            await asyncio.wait_for(both_set.wait(), 10)
            return formatter.format(record)

        return await asyncio.gather(asyncio.create_task(call("a")), asyncio.create_task(call("b")))

    assert asyncio.run(both()) == [
        "hello [model=a version=3 request_id=rid-1]",
        "hello [model=b version=3 request_id=rid-1]",
    ]
    assert formatter.format(record) == "hello"  # nothing leaks outside a call
    assert '"model": "a"' not in logs.JsonFormatter().format(record)
